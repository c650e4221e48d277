# Step 1 of the grounding demo (tools/demo.py): train the small MDETR-like model of
# _base_/models/mdetr_demo.py on the demo's *source* task (name grounding: "the banana", "a green frog face")
# to obtain a pre-trained grounding model, as MDETR's pre-training provides one for RefCOCO. The encoder,
# decoder, projections, queries and heads train; the pretrained EfficientNet and MiniLM stay frozen, and
# FrozenFeatureCacheHook serves their outputs from a cache after the first epoch (the training pipeline
# is the deterministic test pipeline), which makes an epoch several times faster.
#   python tools/data/make_grounding_demo.py
#   python tools/train.py configs/demo/mdetr_demo_source.py
_base_ = ['../_base_/default_runtime.py', '../_base_/datasets/grounding_demo_source.py',
          '../_base_/models/mdetr_demo.py']

model = dict(tuner=dict(_delete_=True, type='FullFineTune', targets=['encoder', 'decoder']))
train_dataloader = dict(dataset=dict(pipeline={{_base_.test_pipeline}}))
# foreach=True: one vectorised AdamW update for all tensors (on CPU PyTorch otherwise loops over them)
optim_wrapper = dict(type='OptimWrapper', constructor='TrainableOptimWrapperConstructor',
                     optimizer=dict(type='AdamW', lr=5e-4, weight_decay=1e-4, foreach=True),
                     clip_grad=dict(max_norm=0.1))
max_epochs = 50
param_scheduler = [dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=150),
                   dict(type='MultiStepLR', by_epoch=True, milestones=[int(max_epochs * 0.8)], gamma=0.1)]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=max_epochs)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
custom_hooks = [dict(type='FrozenFeatureCacheHook', stacks=['image', 'text'])]
default_hooks = dict(logger=dict(interval=25), checkpoint=dict(interval=max_epochs, max_keep_ckpts=1))
randomness = dict(seed=0)
