"""The feature-cache hook (the other Runner hooks are in sherl_mm.engine.hooks)."""
from .feature_cache import EarlyRouteCacheHook, batch_sample_keys, cacheable_tuners, check_deterministic_pipeline

__all__ = ['EarlyRouteCacheHook', 'batch_sample_keys', 'cacheable_tuners', 'check_deterministic_pipeline']
