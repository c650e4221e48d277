"""Runner hooks of sherl_mm, registered in sherl_mm.registry.HOOKS."""
from .checkpoint import AtomicCheckpointHook
from .feature_cache import EarlyRouteCacheHook, FrozenFeatureCacheHook

__all__ = ['AtomicCheckpointHook', 'EarlyRouteCacheHook', 'FrozenFeatureCacheHook']
