"""Training/testing runtime of sherl_mm on mmengine 0.10.7.

Importing this package applies the checkpoint fixes (``weights_only=False``
loading for torch >= 2.6, atomic checkpoint writes) and registers
:class:`AtomicCheckpointHook` and :class:`CpuBf16OptimWrapper`.
:func:`setup_runtime` applies the rest (distributed init on CPU or GPU, AMP
fallback on CPU); tools/train.py and tools/test.py call it through
:func:`build_runner`.
"""
from .checkpoint import atomic_save_checkpoint, atomic_write_text, install_checkpoint_fixes
from .hooks import AtomicCheckpointHook
from .optim import CpuBf16OptimWrapper, TrainableOptimWrapperConstructor
from .runtime import drop_disabled_hooks, enable_amp, init_distributed, load_config, resolve_amp, setup_runtime
from .validate import CheckpointCompatHook, UserInputError, check_checkpoint_compat, validate_config
from .cli import build_runner, run_test, run_tool, run_train

install_checkpoint_fixes()

__all__ = [
    'AtomicCheckpointHook', 'CheckpointCompatHook', 'CpuBf16OptimWrapper', 'UserInputError',
    'atomic_save_checkpoint', 'atomic_write_text', 'build_runner', 'check_checkpoint_compat', 'enable_amp',
    'init_distributed', 'install_checkpoint_fixes', 'load_config', 'resolve_amp', 'run_tool', 'setup_runtime',
    'run_test', 'run_train', 'validate_config', 'TrainableOptimWrapperConstructor', 'drop_disabled_hooks'
]
