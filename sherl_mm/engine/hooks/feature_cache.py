"""Train from a cache of the model's frozen routes (beyond the paper).

With a deterministic training pipeline the frozen parts of a PETL model give
the same outputs every epoch: a frozen stack (an image backbone or a text
encoder: its whole output) and SHERL's early route (the input stage and the
layers before MTSA). :class:`FrozenFeatureCacheHook` turns on the feature
cache (:mod:`sherl_mm.feature_cache`) of those tuners: the first epoch
computes and stores their outputs per sample, later epochs read them instead
of running the frozen layers. Validation and testing never use the cache.

Config (``EarlyRouteCacheHook`` is the same hook under its former name)::

    custom_hooks = [dict(type='FrozenFeatureCacheHook')]                     # every cacheable stack
    custom_hooks = [dict(type='FrozenFeatureCacheHook', stacks=['image'])]

Caches live in ``{work_dir}/feature_cache/<module name>/`` (or ``dir``), one
per tuner. What they are keyed by and when they are refused:
docs/feature_cache.md.
"""
from __future__ import annotations

import os.path as osp
from typing import Any, Sequence

from mmengine.dist import get_world_size
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from sherl_mm.feature_cache import (FeatureCacheMixin, TensorDigests, batch_sample_keys, cacheable_modules,
                                    check_deterministic_pipeline, pipeline_fingerprint)
from sherl_mm.registry import HOOKS


@HOOKS.register_module(name='EarlyRouteCacheHook')
@HOOKS.register_module()
class FrozenFeatureCacheHook(Hook):
    """Cache the frozen routes of the model's tuners in training.

    Args:
        key: the batch entry or metainfo field holding a unique sample id
            (default ``sample_idx``, which mmengine's datasets set).
        stacks: names of the tuners to cache (``'image'``, ``'encoder'`` ...);
            default: every cacheable one (frozen stacks, SHERL stacks).
        dir: the caches' parent directory; default ``{work_dir}/feature_cache``.
        rebuild_stale: rebuild a cache built for another model or pipeline
            instead of refusing it.
    """

    priority = 'NORMAL'

    def __init__(self, key: str = 'sample_idx', stacks: Sequence[str] | None = None, dir: str | None = None,
                 rebuild_stale: bool = False) -> None:
        self.key = key
        self.stacks = None if stacks is None else list(stacks)
        self.dir = dir
        self.rebuild_stale = rebuild_stale
        self.tuners: dict[str, FeatureCacheMixin] = {}

    def before_train(self, runner) -> None:
        name = type(self).__name__
        if get_world_size() > 1:
            raise RuntimeError(f'{name}: the feature cache is written by one process; distributed training is not '
                               f'supported')
        dataset_cfg = runner.cfg.get('train_dataloader', {}).get('dataset')
        check_deterministic_pipeline(dataset_cfg)
        pipeline = pipeline_fingerprint(dataset_cfg)
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        self.tuners = cacheable_modules(model, self.stacks)
        if not self.tuners:
            raise ValueError(f'{name}: the model has no frozen stack or SHERL stack to cache')
        root = self.dir or osp.join(runner.work_dir, 'feature_cache')
        digests = TensorDigests()           # each frozen weight hashed once for all caches
        for module_name, tuner in self.tuners.items():
            tuner.enable_feature_cache(osp.join(root, module_name), pipeline, upstream=digests.outside(model, tuner),
                                       rebuild_stale=self.rebuild_stale, digests=digests)
        runner.logger.info(f'{name}: caching the frozen routes of {sorted(self.tuners)} in {root} '
                           f'({", ".join(f"{n}: {len(t.feature_cache)} samples" for n, t in self.tuners.items())})')

    def before_train_iter(self, runner, batch_idx: int, data_batch: Any = None) -> None:
        keys = batch_sample_keys(data_batch, self.key)
        for tuner in self.tuners.values():
            tuner.sample_keys = keys

    def after_train_iter(self, runner, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
        for tuner in self.tuners.values():
            tuner.sample_keys = None

    def after_train_epoch(self, runner) -> None:
        for tuner in self.tuners.values():
            tuner.feature_cache.commit()

    def after_train(self, runner) -> None:
        for tuner in self.tuners.values():
            tuner.feature_cache.commit()
            tuner.close_feature_cache()


#: the hook's former name, kept so that existing configs keep working
EarlyRouteCacheHook = FrozenFeatureCacheHook

__all__ = ['EarlyRouteCacheHook', 'FrozenFeatureCacheHook']
