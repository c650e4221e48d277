# A tiny config for tools/analysis/benchmark_tuners.py tests.
custom_imports = dict(imports=['tests.fixtures_bench.tiny_bench'], allow_failed_imports=False)
default_scope = 'sherl_mm'

model = dict(
    type='BenchTinyClassifier',
    backbone=dict(type='BenchTinyStack', in_dim=6, width=16, depth=4, heads=2, tokens=5),
    num_classes=3,
    data_preprocessor=dict(type='BaseDataPreprocessor'),
    tuner=dict(type='SHERL'))

train_dataloader = dict(
    batch_size=4, num_workers=0,
    dataset=dict(type='BenchTinyDataset', length=32),
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'))

optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-3))

benchmark_tuners = dict(lora=dict(type='LoRA', rank=2))
