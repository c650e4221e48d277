"""Runner hooks of sherl_mm, registered in sherl_mm.registry.HOOKS."""
from .feature_cache import EarlyRouteCacheHook, batch_sample_keys, cacheable_tuners, check_deterministic_pipeline
from .memory import PeakMemoryHook
from .params import ParameterTableHook, parameter_rows, parameter_table

__all__ = ['EarlyRouteCacheHook', 'ParameterTableHook', 'PeakMemoryHook', 'batch_sample_keys', 'cacheable_tuners',
           'check_deterministic_pipeline', 'parameter_rows', 'parameter_table']
