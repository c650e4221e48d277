"""Training/testing runtime of sherl_mm on mmengine 0.10.7 (see docs/engine.md).

Importing it registers components (the hooks in :mod:`.hooks`, the optimizer
wrapper and constructor in :mod:`.optim`) and the ``'atomic_local'`` storage
backend; it changes nothing of mmengine's behaviour. :func:`setup_runtime`
adapts a config and the process for a run (trusted checkpoint loading,
distributed set-up on CPU or GPU, AMP fallback on CPU); tools/train.py and
tools/test.py call it through :func:`build_runner`.
"""
from .checkpoint import (ATOMIC_BACKEND, AtomicLocalBackend, atomic_write_bytes, atomic_write_text,
                         load_trusted_local, trust_local_checkpoints)
from .hooks import AtomicCheckpointHook, CheckpointCompatHook, ParameterTableHook, PeakMemoryHook
from .optim import CpuBf16OptimWrapper, TrainableOptimWrapperConstructor
from .runtime import drop_disabled_hooks, enable_amp, init_distributed, load_config, resolve_amp, setup_runtime
from .validate import UserInputError, check_checkpoint_compat, validate_config
from .cli import build_runner, run_test, run_tool, run_train

__all__ = [
    'ATOMIC_BACKEND', 'AtomicCheckpointHook', 'AtomicLocalBackend', 'CheckpointCompatHook', 'CpuBf16OptimWrapper',
    'ParameterTableHook', 'PeakMemoryHook', 'TrainableOptimWrapperConstructor', 'UserInputError',
    'atomic_write_bytes', 'atomic_write_text', 'build_runner', 'check_checkpoint_compat', 'drop_disabled_hooks',
    'enable_amp', 'init_distributed', 'load_config', 'load_trusted_local', 'resolve_amp', 'run_test', 'run_tool',
    'run_train', 'setup_runtime', 'trust_local_checkpoints', 'validate_config'
]
