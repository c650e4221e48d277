# SHERL's RefCOCO schedule (paper Table 7 and the authors' code; docs/grounding.md): AdamW (0.9, 0.999), lr 5e-4 for the tuner's
# modules and 5e-5 (x0.1) for the heads, weight decay 0, gradient clip 0.1, 10 epochs with lr x0.1 after
# epoch 5 and no warm-up, batch 4 per GPU (2 GPUs in the paper: bash tools/dist_train.sh CONFIG 2),
# and an EMA of the weights (decay 0.9998, every step) that is what validation, testing and the saved
# checkpoints use.
optim_wrapper = dict(
    type='OptimWrapper',
    # only trainable tensors reach the optimizer (the frozen ones are left out without a warning each)
    constructor='TrainableOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=5e-4, betas=(0.9, 0.999), weight_decay=0.0),
    paramwise_cfg=dict(custom_keys={'head.': dict(lr_mult=0.1)}),
    clip_grad=dict(max_norm=0.1, norm_type=2))
param_scheduler = [dict(type='MultiStepLR', by_epoch=True, milestones=[5], gamma=0.1)]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=10, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

# mmengine's EMA: averaged <- (1 - momentum) * averaged + momentum * current, so momentum = 1 - decay.
# The hook swaps the EMA weights in for validation and testing and saves them as the checkpoint's
# state_dict (the raw weights go to ema_state_dict), as MDETR evaluates its EMA model.
custom_hooks = [
    dict(type='EMAHook', ema_type='ExponentialMovingAverage', momentum=2e-4, update_buffers=True, priority=49),
]
# tools/train.py --auto-scale-lr is not used: the paper's lr is for 2 x 4 images.
auto_scale_lr = dict(enable=False, base_batch_size=8)
