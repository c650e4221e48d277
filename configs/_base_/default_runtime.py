# Runtime defaults of sherl_mm (as mmdet's configs/_base_/default_runtime.py).
default_scope = 'sherl_mm'

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50),
    param_scheduler=dict(type='ParamSchedulerHook'),
    # mmengine's CheckpointHook writing through the 'atomic_local' storage backend (temp file, fsync,
    # rename), outdated checkpoints removed only after the new one is complete, and the RNG state
    # saved/restored so that --resume reproduces an uninterrupted run (docs/engine.md)
    checkpoint=dict(type='AtomicCheckpointHook', interval=1),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    # peak memory of every logging interval (CUDA allocator peak or CPU RSS, GiB) in the log line and
    # vis_data/scalars.json, and the whole-run peak at the end; `default_hooks.peak_memory=None` turns it off
    peak_memory=dict(type='PeakMemoryHook'),
    # total / trainable parameters per top-level module at the start of training
    param_table=dict(type='ParameterTableHook'),
)

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    # tools/train.py switches to gloo (and a device_ids=None DDP wrapper)
    # when CUDA is not available
    dist_cfg=dict(backend='nccl'),
)

vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='Visualizer', vis_backends=vis_backends)
log_processor = dict(type='LogProcessor', window_size=50, by_epoch=True)

log_level = 'INFO'
load_from = None
resume = False
