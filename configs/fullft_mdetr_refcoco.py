# Full fine-tuning baseline of sherl_mdetr_refcoco.py (the memory upper bound, paper Table 5 "full FT"),
# with MDETR's own RefCOCO fine-tuning recipe (MDETR main.py and configs/refcoco.json): AdamW lr 1e-4,
# the image backbone at 1e-5 with its stem and first stage frozen, the text encoder at 5e-5,
# weight decay 1e-4, 5 epochs with lr x0.1 after epoch 3; EMA 0.9998 for evaluation.
_base_ = ['./sherl_mdetr_refcoco.py']
model = dict(tuner=dict(
    _delete_=True, type='FullFineTune',
    # ResNetStack: conv1/bn1 = the stem, layers.0-2 = ResNet-101's layer1
    per_stack=dict(image=dict(frozen_modules=r'conv1|bn1|layers\.[0-2]'))))
optim_wrapper = dict(
    optimizer=dict(lr=1e-4, weight_decay=1e-4),
    paramwise_cfg=dict(_delete_=True, custom_keys={'stacks.image.': dict(lr_mult=0.1),
                                                   'stacks.text.': dict(lr_mult=0.5)}))
param_scheduler = [dict(type='MultiStepLR', by_epoch=True, milestones=[3], gamma=0.1)]
train_cfg = dict(max_epochs=5)
