"""Synthetic data batches for benchmarking a model without its data set.

A batch is what the model's dataloader would give (before the data
preprocessor), with random content of the task's real shapes, so that
memory and speed are measured at the paper's sizes on any machine. One
builder per model type, registered by class name::

    @register_synthetic_batch('MyModel')
    def my_batch(model: MyModel, batch_size: int, seed: int = 0) -> dict: ...

:func:`synthetic_batch` finds the builder of a model's class (or of its
nearest registered base class).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

#: model class name -> ``builder(model, batch_size, seed=0) -> dict(inputs=..., data_samples=...)``
SYNTHETIC_BATCHES: dict[str, Callable[..., dict]] = {}


def register_synthetic_batch(model_type: str) -> Callable[[Callable[..., dict]], Callable[..., dict]]:
    """Decorator: register ``builder`` as the synthetic batch of models of
    class ``model_type``."""
    def register(builder: Callable[..., dict]) -> Callable[..., dict]:
        SYNTHETIC_BATCHES[model_type] = builder
        return builder
    return register


def synthetic_batch(model: nn.Module, batch_size: int, seed: int = 0) -> dict:
    """The registered synthetic batch of ``model``'s class (searched along
    its MRO), with ``batch_size`` samples."""
    for cls in type(model).__mro__:
        if cls.__name__ in SYNTHETIC_BATCHES:
            return SYNTHETIC_BATCHES[cls.__name__](model, batch_size, seed=seed)
    raise KeyError(f'no synthetic batch for {type(model).__name__}; registered: {", ".join(sorted(SYNTHETIC_BATCHES))} '
                   f"(add one with sherl_mm.benchmark.register_synthetic_batch('{type(model).__name__}'), or "
                   f"measure on the config's train_dataloader)")


@register_synthetic_batch('MDETRGrounding')
def grounding_batch(model: nn.Module, batch_size: int, seed: int = 0,
                    image_size: tuple[int, int] = (800, 1066)) -> dict:
    """Random ``(3, H, W)`` uint8 images of ``image_size`` (RefCOCO at
    MDETR's test scale by default), one referring expression and box each,
    with the metainfo :class:`~sherl_mm.models.MDETRGrounding` reads."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    g = torch.Generator().manual_seed(seed)
    height, width = image_size
    caption = 'the man in the red shirt on the left'
    inputs, samples = [], []
    for _ in range(batch_size):
        inputs.append(torch.randint(0, 256, (3, height, width), generator=g, dtype=torch.uint8))
        x1 = float(torch.randint(0, width // 2, (1,), generator=g))
        y1 = float(torch.randint(0, height // 2, (1,), generator=g))
        box = [x1, y1, x1 + width / 3, y1 + height / 3]
        sample = DetDataSample(metainfo=dict(
            img_shape=(height, width), ori_shape=(height, width), pad_shape=(height, width),
            scale_factor=(1.0, 1.0), text=caption, tokens_positive=[[[4, 7]]], ref_bbox=box,
            dataset_name='synthetic', split='val'))
        sample.gt_instances = InstanceData(bboxes=torch.tensor([box]), labels=torch.zeros(1, dtype=torch.long))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


__all__ = ['SYNTHETIC_BATCHES', 'grounding_batch', 'register_synthetic_batch', 'synthetic_batch']
