# SHERL on VSE∞ (image-text retrieval, MS-COCO Karpathy splits), as in the authors' VSE-infty code
# (docs/retrieval.md): ResNeXt-101 32x8d WSL + BERT-base, joint space 1024, GPO pooling, hinge triplet loss
# (sum of hinges in epoch 0, hardest negatives from epoch 1 with a one-epoch linear ramp).
#
# Pretrained weights (local files; nothing is downloaded at run time):
#   checkpoints/resnext101_32x8d_wsl.pth  torchvision-style state dict of ResNeXt-101 32x8d WSL
#                                          (facebookresearch/WSL-Images, torch.hub 'resnext101_32x8d_wsl')
#   checkpoints/bert-base-uncased/        config.json, model.safetensors and the tokenizer files
#                                          (huggingface-cli download bert-base-uncased --local-dir ...)
_base_ = ['./_base_/default_runtime.py', './_base_/datasets/coco_karpathy.py']

embed_size = 1024
model = dict(
    type='VSERetrieval',
    image_stack=dict(type='ResNetStack', depth=101, resnet=dict(type='ResNeXt', groups=32, base_width=8),
                     pretrained='checkpoints/resnext101_32x8d_wsl.pth'),
    text_stack=dict(type='HFEncoderStack', pretrained='checkpoints/bert-base-uncased'),
    embed_size=embed_size,
    feature_pool=2,          # MaxPool2d(2) + AvgPool2d(2): 16x16 -> 8x8 = 64 grid tokens at 512 px
    pooling='gpo',
    img_token_drop=0.2,      # VSE∞'s size augmentation
    margin=0.2, max_violation=True, warmup=1, warmup_unit='epoch', warmup_ramp=True,
    tuner=dict(
        type='SHERL',
        per_stack=dict(
            # ResNeXt-101 blocks: stage ends 2, 6, 29, 32. MTSA aggregates stage1..3 and layer4[:2] (block 31,
            # the guidance / x_last); the late (regulated) layer is the last bottleneck, block 32.
            image=dict(select_layers=[2, 6, 29], use_input=False, num_late_layers=1,
                       mtsa=dict(variant='cnn', side_width=embed_size // 2)),
            # BERT: the embedding output and layers 0..10 feed MTSA; layer 11 is regulated.
            text=dict(select_layers=None, num_late_layers=1,
                      mtsa=dict(variant='vse_bert', side_width=embed_size // 2)))),
)

# AdamW 5e-4, weight decay 1e-2, clip 2.0, 25 epochs, lr x0.1 at epoch 15, batch 112 (the authors' settings)
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=5e-4, weight_decay=1e-2),
                     clip_grad=dict(max_norm=2.0))
param_scheduler = [dict(type='MultiStepLR', by_epoch=True, milestones=[15], gamma=0.1)]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=25, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(checkpoint=dict(save_best='retrieval/1k/rsum', rule='greater', max_keep_ckpts=2))
