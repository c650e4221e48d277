"""A tuner's own weights: which they are, how many, and saving / loading only them."""
from __future__ import annotations

import json
import os
from typing import Mapping

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from sherl_mm.utils.modules import count_parameters

from .base import BaseTuner
from .injection import injected_module_ids


def trainable_parameters(module: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in module.named_parameters() if p.requires_grad}


def parameter_report(module: nn.Module) -> str:
    """PEFT's one-line summary: ``trainable params: X || all params: Y || trainable%: Z``."""
    count = count_parameters(module)
    return (f'trainable params: {count.trainable:,d} || all params: {count.total:,d} || '
            f'trainable%: {count.share:.4f}')


def print_trainable_parameters(module: nn.Module) -> None:
    print(parameter_report(module))


def _frozen_stack_module_ids(module: nn.Module) -> set[int]:
    """Ids of the modules of every frozen stack under ``module`` (the
    ``stack`` of a tuner that does not train its backbone), except the
    modules a tuner injected into that stack (LoRA deltas, adapters)."""
    ids: set[int] = set()
    for m in module.modules():
        if isinstance(m, BaseTuner) and not m.trains_backbone:
            ids.update(id(sub) for sub in m.stack.modules())
            ids.difference_update(injected_module_ids(m.stack))
    return ids


def tuner_buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    """The persistent buffers that belong to the tuner(s) in ``module``
    (e.g. the running statistics of MTSA's or LST's side BatchNorms), by
    their state-dict name.

    Buffers of a frozen stack (``<tuner>.stack.*``, the pre-trained network)
    are left out: they come with the pre-trained weights and do not change in
    training (``norm_eval``). Buffers of modules injected into a stack, and a
    stack's buffers under a tuner that trains the backbone (full fine-tuning),
    are included, since training changes them.
    """
    frozen = _frozen_stack_module_ids(module)
    # state_dict() holds only persistent buffers, under every name a shared module has
    persistent = set(module.state_dict(keep_vars=True))
    buffers: dict[str, torch.Tensor] = {}
    for mod_name, m in module.named_modules():
        if id(m) in frozen:
            continue
        for buf_name, buf in m.named_buffers(recurse=False):
            name = f'{mod_name}.{buf_name}' if mod_name else buf_name
            if buf is not None and name in persistent:
                buffers[name] = buf
    return buffers


def save_trainable(module: nn.Module, path: str, config: Mapping | None = None) -> None:
    """Save only the tuner's own weights of ``module``: its trainable
    parameters and its buffers (:func:`tuner_buffers`; without them a side
    BatchNorm would reload with fresh running statistics), plus its config as
    metadata (e.g. ``tuner.tuner_cfg``), to a safetensors file; the write is
    atomic (temp file + rename)."""
    tensors = {name: p.detach().contiguous().cpu() for name, p in trainable_parameters(module).items()}
    tensors.update({name: b.detach().contiguous().cpu() for name, b in tuner_buffers(module).items()})
    metadata = {'sherl_mm_config': json.dumps(dict(config or {}), default=str)}
    tmp = f'{path}.tmp'
    save_file(tensors, tmp, metadata=metadata)
    os.replace(tmp, path)


def load_trainable(module: nn.Module, path: str) -> None:
    """Load weights saved by :func:`save_trainable` into a freshly built ``module``.

    Raises a ``KeyError`` naming ``path`` and the keys at fault when the file
    does not match the module's trainable parameters and tuner buffers.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f'tuner weights file not found: {path}')
    tensors = load_file(path)
    expected: dict[str, torch.Tensor] = {**trainable_parameters(module), **tuner_buffers(module)}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise KeyError(f'{path} does not match this model: missing keys {missing[:5]}'
                       f'{"..." if len(missing) > 5 else ""}, unexpected keys {unexpected[:5]}'
                       f'{"..." if len(unexpected) > 5 else ""}')
    with torch.no_grad():
        for name, param in expected.items():
            if param.shape != tensors[name].shape:
                raise ValueError(f'{path}: key {name!r} has shape {tuple(tensors[name].shape)}, '
                                 f'the model expects {tuple(param.shape)}')
            param.copy_(tensors[name])


__all__ = ['load_trainable', 'parameter_report', 'print_trainable_parameters', 'save_trainable',
           'trainable_parameters', 'tuner_buffers']
