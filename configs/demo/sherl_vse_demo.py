# SHERL on a VSE∞-style dual encoder, trained on the retrieval demo data in a few minutes on a CPU.
# Real pretrained backbones from pip packages: EfficientNet-Lite0 (ImageNet) and all-MiniLM-L6-v2.
#   python tools/data/make_retrieval_demo.py
#   python tools/train.py configs/demo/sherl_vse_demo.py
_base_ = ['../_base_/default_runtime.py', '../_base_/datasets/retrieval_demo.py', '../_base_/models/minilm.py']

embed_size = 512
model = dict(
    type='VSERetrieval',
    # EfficientNet-Lite0 blocks: resolution stages end at 0, 2, 4, 10, 15. MTSA aggregates the ends of the
    # first four and block 14 (guidance / x_last); the last block (15) is the regulated late layer.
    image_stack=dict(type='EfficientNetStack', pretrained=True, drop_connect_rate=0.0),
    text_stack=dict(type='HFEncoderStack', pretrained={{_base_.minilm_dir}}),
    embed_size=embed_size,
    feature_pool=None,       # 128 px images give a 4 x 4 map: 16 grid tokens
    pooling='gpo',
    img_token_drop=0.2,
    margin=0.2, max_violation=True, warmup=1, warmup_unit='epoch', warmup_ramp=True,
    data_preprocessor=dict(type='ImgDataPreprocessor', mean=[127.5] * 3, std=[127.5] * 3, bgr_to_rgb=True),
    tuner=dict(
        type='SHERL',
        per_stack=dict(
            image=dict(select_layers=[0, 2, 4, 10], use_input=False, num_late_layers=1,
                       mtsa=dict(variant='cnn', side_width=embed_size // 2)),
            text=dict(select_layers=None, num_late_layers=1,
                      mtsa=dict(variant='vse_bert', side_width=embed_size // 2)))),
)

optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=5e-4, weight_decay=1e-2),
                     clip_grad=dict(max_norm=2.0))
# epoch 0: summed hinges; epoch 1: hardest negatives ramped in; epoch 2: hardest negatives at lr x0.1
param_scheduler = [dict(type='MultiStepLR', by_epoch=True, milestones=[2], gamma=0.1)]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=3, val_interval=3)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(logger=dict(interval=20), checkpoint=dict(interval=3, max_keep_ckpts=1))
randomness = dict(seed=0)
# tools/analysis/benchmark_tuners.py: LoRA's default targets are Linear layers; on the EfficientNet it takes
# the 1x1 expansion / projection convolutions of the MBConv blocks (not the depthwise ones). Prompt tokens
# exist for token stacks only: prompt tuning tunes the text encoder, the CNN stays frozen.
benchmark_tuners = dict(lora=dict(type='LoRA', rank=8, alpha=16,
                                  per_stack=dict(image=dict(target_modules=r'.*_(expand|project)_conv'))),
                        prompt=dict(type='PromptTuning', num_tokens=10, targets=['text']))
