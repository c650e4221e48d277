"""Train from a cache of the model's frozen routes (beyond the paper).

With a deterministic training pipeline the frozen parts of a PETL model give
the same outputs every epoch: a frozen image backbone or text encoder (its
whole output), SHERL's early route (the input stage and the layers before
MTSA). :class:`EarlyRouteCacheHook` turns on the feature cache of those
tuners (:mod:`sherl_mm.tuners.feature_cache`): the first epoch computes and
stores their outputs per sample, later epochs read them instead of running
the frozen layers. Validation and testing never use the cache.

Config::

    custom_hooks = [dict(type='EarlyRouteCacheHook')]               # every cacheable stack
    custom_hooks = [dict(type='EarlyRouteCacheHook', stacks=['image'])]

What the cache is keyed by, and when it is refused:

* per sample: ``data_batch[key]`` or each data sample's metainfo ``key``
  (default ``sample_idx``, which mmengine's datasets set; the pack transform
  must keep it in its ``meta_keys``);
* per model and data: the frozen weights the route reads, the route itself,
  the frozen weights computed before it (projections, other stacks) and a
  hash of the training dataset's config (type, files, pipeline). A cache
  built with any of them different is refused with what differs, or rebuilt
  with ``rebuild_stale=True``;
* a training pipeline with a random transform (``Random*``, photometric
  distortions, mixing) is refused before anything is cached, as is
  distributed training (one process writes the cache).

Caches live in ``{work_dir}/feature_cache/<module name>/`` (or ``dir``), one
per tuner, as memory-mapped safetensors shards with an atomically written
manifest, so an interrupted run keeps what its last finished epoch stored.
"""
from __future__ import annotations

import hashlib
import json
import os.path as osp
from typing import Any, Sequence

from mmengine.dist import get_world_size
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from torch import Tensor, nn

from sherl_mm.registry import HOOKS
from sherl_mm.tuners.base import BaseTuner
from sherl_mm.tuners.feature_cache import tensor_digest

#: transform types that change a sample from one epoch to the next
RANDOM_TRANSFORMS = ('PhotoMetricDistortion', 'ColorJitter', 'AutoAugment', 'RandAugment', 'Mosaic', 'MixUp',
                     'CutOut', 'Albu', 'YOLOXHSVRandomAug', 'CopyPaste')


def cacheable_tuners(model: nn.Module, stacks: Sequence[str] | None = None) -> dict[str, BaseTuner]:
    """``{module name: tuner}`` of every tuner in ``model`` whose route has a
    frozen part to cache; with ``stacks``, those whose name is or ends with
    one of them (e.g. ``'image'`` for ``stacks.image``)."""
    if is_model_wrapper(model):
        model = model.module
    found = {name: m for name, m in model.named_modules() if isinstance(m, BaseTuner) and m.cache_route}
    if stacks is None:
        return found
    chosen = {}
    for wanted in stacks:
        matched = {n: m for n, m in found.items() if n == wanted or n.endswith('.' + wanted)}
        if not matched:
            raise ValueError(f'EarlyRouteCacheHook: stacks={list(stacks)!r}: {wanted!r} is not a cacheable stack of '
                             f'the model; cacheable: {sorted(found)} (frozen stacks and SHERL stacks)')
        chosen.update(matched)
    return chosen


def check_deterministic_pipeline(dataset: Any, where: str = 'train_dataloader.dataset') -> None:
    """Raise naming the config key of the first random transform in a
    dataset config (nested datasets and transform lists included)."""
    if isinstance(dataset, dict):
        kind = str(dataset.get('type', ''))
        name = kind.rsplit('.', 1)[-1]
        if where.rsplit('.', 1)[-1].startswith('pipeline') and (name.startswith('Random') or
                                                                  name in RANDOM_TRANSFORMS):
            raise ValueError(f'EarlyRouteCacheHook: {where} is {kind!r}, a random transform: the frozen route would '
                             f'see other inputs every epoch, so its outputs cannot be cached. Use a deterministic '
                             f'training pipeline (e.g. the test pipeline) or drop the hook')
        for key, value in dataset.items():
            check_deterministic_pipeline(value, f'{where}.{key}')
    elif isinstance(dataset, (list, tuple)):
        for i, value in enumerate(dataset):
            check_deterministic_pipeline(value, f'{where}[{i}]')


def dataset_fingerprint(dataset_cfg: Any) -> str:
    """A hash of the training dataset's config (type, data root, files, pipeline)."""
    text = json.dumps(dataset_cfg, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def frozen_parameter_digests(model: nn.Module) -> list[tuple[int, str, str]]:
    """``(id, name, digest)`` of every frozen parameter of ``model``, each
    hashed once (the model's frozen weights can be hundreds of MB)."""
    return [(id(p), name, tensor_digest(p)) for name, p in model.named_parameters() if not p.requires_grad]


def upstream_digest(digests: list[tuple[int, str, str]], tuner: nn.Module) -> str:
    """A hash of the frozen parameters in ``digests`` (see
    :func:`frozen_parameter_digests`) outside ``tuner``: what may feed the
    tuner's inputs (input projections, other stacks)."""
    own = {id(p) for p in tuner.parameters()}
    h = hashlib.blake2b(digest_size=16)
    for param_id, name, digest in digests:
        if param_id not in own:
            h.update(f'{name}:{digest};'.encode())
    return h.hexdigest()


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
    """Cache the frozen routes of the model's tuners in training.

    Args:
        key: the batch entry or metainfo field holding a unique sample id.
        stacks: names of the tuners to cache (``'image'``, ``'encoder'`` ...);
            default: every cacheable one.
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
        self.tuners: dict[str, BaseTuner] = {}

    def before_train(self, runner) -> None:
        if get_world_size() > 1:
            raise RuntimeError('EarlyRouteCacheHook: the feature cache is written by one process; '
                               'distributed training is not supported')
        dataset_cfg = runner.cfg.get('train_dataloader', {}).get('dataset')
        check_deterministic_pipeline(dataset_cfg)
        pipeline = dataset_fingerprint(dataset_cfg)
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        self.tuners = cacheable_tuners(model, self.stacks)
        if not self.tuners:
            raise ValueError('EarlyRouteCacheHook: the model has no frozen stack or SHERL stack to cache')
        root = self.dir or osp.join(runner.work_dir, 'feature_cache')
        digests = frozen_parameter_digests(model)
        for name, tuner in self.tuners.items():
            tuner.enable_feature_cache(osp.join(root, name), pipeline, upstream=upstream_digest(digests, tuner),
                                       rebuild_stale=self.rebuild_stale)
        runner.logger.info(f'EarlyRouteCacheHook: caching the frozen routes of {sorted(self.tuners)} in {root} '
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


__all__ = ['EarlyRouteCacheHook', 'batch_sample_keys', 'cacheable_tuners', 'check_deterministic_pipeline',
           'dataset_fingerprint', 'frozen_parameter_digests', 'upstream_digest']
