# SHERL on a CLIP dual encoder (image-text retrieval, Flickr30K Karpathy splits): OpenCLIP ViT-B/32, SHERL on
# both towers (MTSA over the input and layers 0..10, late regulation of layer 11, d = D/2, CLIP-ViL's Eq. 1
# down-projection), symmetric InfoNCE with CLIP's learnable temperature. The paper has no CLIP-retrieval
# experiment (its CLIP4Clip variant is a different, no-late-layer design: docs/method.md); the optimisation
# settings below are ordinary CLIP fine-tuning choices, not the authors'.
#
# Pretrained weights (local file; nothing is downloaded at run time):
#   checkpoints/open_clip_vit_b32.bin   OpenCLIP ViT-B-32 weights, e.g. open_clip_pytorch_model.bin of
#                                        laion/CLIP-ViT-B-32-laion2B-s34B-b79K or timm/vit_base_patch32_clip_224.openai
_base_ = ['./_base_/default_runtime.py', './_base_/datasets/flickr30k_karpathy.py']

model = dict(
    type='CLIPRetrieval',
    model_name='ViT-B-32',
    pretrained='checkpoints/open_clip_vit_b32.bin',
    train_logit_scale=True,
    tuner=dict(
        type='SHERL', num_late_layers=1, select_layers=None,
        mtsa=dict(variant='clipvil', reduction=2)),
)

optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.01),
                     clip_grad=dict(max_norm=1.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=500),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=10, T_max=10, eta_min=1e-6),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=10, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(checkpoint=dict(save_best='retrieval/rsum', rule='greater', max_keep_ckpts=2))
