"""What the data pipeline must give a feature cache: the same inputs every
epoch, and a key per sample."""
from __future__ import annotations

from typing import Any

from torch import Tensor

from .fingerprint import json_digest

#: transform types that change a sample from one epoch to the next (besides every ``Random*``)
RANDOM_TRANSFORMS = ('PhotoMetricDistortion', 'ColorJitter', 'AutoAugment', 'RandAugment', 'Mosaic', 'MixUp',
                     'CutOut', 'Albu', 'YOLOXHSVRandomAug', 'CopyPaste')


def check_deterministic_pipeline(dataset: Any, where: str = 'train_dataloader.dataset') -> None:
    """Raise naming the config key of the first random transform in a
    dataset config (nested datasets and transform lists included)."""
    if isinstance(dataset, dict):
        kind = str(dataset.get('type', ''))
        name = kind.rsplit('.', 1)[-1]
        if where.rsplit('.', 1)[-1].startswith('pipeline') and (name.startswith('Random') or
                                                                  name in RANDOM_TRANSFORMS):
            raise ValueError(f'feature cache: {where} is {kind!r}, a random transform: the frozen route would see '
                             f'other inputs every epoch, so its outputs cannot be cached. Use a deterministic '
                             f'training pipeline (e.g. the test pipeline) or drop the feature cache hook')
        for key, value in dataset.items():
            check_deterministic_pipeline(value, f'{where}.{key}')
    elif isinstance(dataset, (list, tuple)):
        for i, value in enumerate(dataset):
            check_deterministic_pipeline(value, f'{where}[{i}]')


def pipeline_fingerprint(dataset_cfg: Any) -> str:
    """A digest of the training dataset's config (type, data root, files, pipeline)."""
    return json_digest(dataset_cfg)


def batch_sample_keys(data_batch: Any, key: str) -> list[Any]:
    """One key per sample of ``data_batch``: ``data_batch[key]``, or each data
    sample's metainfo ``key`` (mmengine's datasets set ``sample_idx``; the
    pack transform must keep it in its ``meta_keys``)."""
    if isinstance(data_batch, dict) and key in data_batch:
        values = data_batch[key]
        return values.tolist() if isinstance(values, Tensor) else list(values)
    samples = data_batch.get('data_samples') if isinstance(data_batch, dict) else None
    if not isinstance(samples, (list, tuple)):
        raise KeyError(f'feature cache: the data batch has no {key!r} entry and no list of data samples to read it '
                       f'from (batch entries: {sorted(data_batch) if isinstance(data_batch, dict) else []})')
    keys = []
    for sample in samples:
        meta = sample.metainfo if hasattr(sample, 'metainfo') else sample
        if key not in meta:
            raise KeyError(f'feature cache: data sample has no {key!r} in its metainfo (has {sorted(meta)}); add it '
                           f'to the pack transform meta_keys or set the hook key')
        keys.append(meta[key])
    return keys


__all__ = ['RANDOM_TRANSFORMS', 'batch_sample_keys', 'check_deterministic_pipeline', 'pipeline_fingerprint']
