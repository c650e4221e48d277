"""Feeds per-sample keys to SHERL's early-route feature cache in training.

Before each training iteration the hook reads one key per sample from the
data batch and sets it as ``sample_keys`` on every SHERL module of the model
that has a ``feature_cache``; after the iteration it clears them, so that
validation and testing never touch the cache (their sample indices would
collide with the training set's). After each training epoch, and when
training ends, it commits the caches (writes their manifests).

Keys come from ``data_batch[key]`` (a list or 1-D tensor) when the batch has
that entry, else from each data sample's metainfo (``data_samples[i].<key>``,
e.g. ``sample_idx`` or ``question_id``; the pack transform must keep it in
its ``meta_keys``). They must identify a sample uniquely in the training set.

Config::

    model = dict(..., tuner=dict(type='SHERL', feature_cache=dict(
        dir='work_dirs/cache/encoder', pipeline_fingerprint='vqav2-train-resize384-v1')))
    custom_hooks = [dict(type='EarlyRouteCacheHook', key='sample_idx')]
"""
from __future__ import annotations

from typing import Any

from mmengine.dist import get_world_size
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from torch import Tensor, nn

from sherl_mm.registry import HOOKS
from sherl_mm.tuners.sherl import SHERL


def cached_sherl_modules(model: nn.Module) -> list[SHERL]:
    """Every SHERL module of ``model`` configured with a feature cache."""
    if is_model_wrapper(model):
        model = model.module
    return [m for m in model.modules() if isinstance(m, SHERL) and m.feature_cache_cfg is not None]


def batch_sample_keys(data_batch: Any, key: str) -> list[Any]:
    """One key per sample of ``data_batch`` (see the module docstring)."""
    if isinstance(data_batch, dict) and key in data_batch:
        values = data_batch[key]
        return values.tolist() if isinstance(values, Tensor) else list(values)
    samples = data_batch.get('data_samples') if isinstance(data_batch, dict) else None
    if not isinstance(samples, (list, tuple)):
        raise KeyError(f'EarlyRouteCacheHook: the data batch has no {key!r} entry and no list of data samples to '
                       f'read it from (batch entries: {sorted(data_batch) if isinstance(data_batch, dict) else []})')
    keys = []
    for sample in samples:
        meta = sample.metainfo if hasattr(sample, 'metainfo') else sample
        if key not in meta:
            raise KeyError(f'EarlyRouteCacheHook: data sample has no {key!r} in its metainfo (has {sorted(meta)}); '
                           f'add it to the pack transform meta_keys or set the hook key')
        keys.append(meta[key])
    return keys


@HOOKS.register_module()
class EarlyRouteCacheHook(Hook):
    """Set per-sample keys on cached SHERL modules around each training iteration.

    Args:
        key: the batch entry or metainfo field holding a unique sample id.
    """

    priority = 'NORMAL'

    def __init__(self, key: str = 'sample_idx') -> None:
        self.key = key
        self.modules: list[SHERL] = []

    def before_train(self, runner) -> None:
        self.modules = cached_sherl_modules(runner.model)
        if not self.modules:
            raise ValueError('EarlyRouteCacheHook: the model has no SHERL stack with feature_cache set; add '
                             "feature_cache=dict(dir=..., pipeline_fingerprint=...) to the tuner or drop the hook")
        if get_world_size() > 1:
            raise RuntimeError('EarlyRouteCacheHook: the feature cache is written by one process; '
                               'distributed training is not supported')

    def before_train_iter(self, runner, batch_idx: int, data_batch: Any = None) -> None:
        keys = batch_sample_keys(data_batch, self.key)
        for module in self.modules:
            module.sample_keys = keys

    def after_train_iter(self, runner, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
        for module in self.modules:
            module.sample_keys = None

    def after_train_epoch(self, runner) -> None:
        self._commit()

    def after_train(self, runner) -> None:
        self._commit()

    def _commit(self) -> None:
        for module in self.modules:
            if module.feature_cache is not None:
                module.feature_cache.commit()


__all__ = ['EarlyRouteCacheHook', 'batch_sample_keys', 'cached_sherl_modules']
