"""The Runner hooks of sherl_mm (registered in ``sherl_mm.registry.HOOKS``),
one module per hook; see docs/engine.md and docs/feature_cache.md."""
from .checkpoint_compat_hook import CheckpointCompatHook
from .checkpoint_hook import AtomicCheckpointHook
from .feature_cache import EarlyRouteCacheHook, FrozenFeatureCacheHook
from .memory_hook import PeakMemoryHook
from .param_table_hook import ParameterTableHook, parameter_rows, parameter_table

__all__ = ['AtomicCheckpointHook', 'CheckpointCompatHook', 'EarlyRouteCacheHook', 'FrozenFeatureCacheHook',
           'ParameterTableHook', 'PeakMemoryHook', 'parameter_rows', 'parameter_table']
