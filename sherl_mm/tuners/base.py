"""What every tuner shares: wrapping one backbone stack, freezing, reporting
trainable parameters, and saving/loading only the tuner's own weights.

A tuner is an ``nn.Module`` that owns one :class:`BackboneStack` and decides
the route a forward pass takes through it. Tuners are registered in
:data:`sherl_mm.registry.TUNERS` and built from small configs::

    tuner = TUNERS.build(dict(type='LoRA', rank=8), default_args=dict(stack=stack))
    out = tuner(input_ids, attention_mask)       # StackOutput

Models that contain several stacks (an image backbone, a text encoder, a
transformer encoder and decoder ...) use :func:`build_tuned_stacks` to apply
one ``tuner=`` config to the stacks it names and freeze the rest.
"""
from __future__ import annotations

import copy
import json
import os
from typing import Any, ClassVar, Mapping, Sequence

import torch
from mmengine.model import BaseModule
from safetensors.torch import load_file, save_file
from torch import nn

from sherl_mm.backbones.base import BackboneStack, StackOutput
from sherl_mm.registry import BACKBONES, TUNERS

from .feature_cache import FeatureCacheMixin, weight_digests


class BaseTuner(FeatureCacheMixin, BaseModule):
    """Holds ``stack`` frozen and runs its plain route.

    Subclasses add trainable modules and/or override :meth:`forward`.

    Args:
        stack: the backbone stack, or a config to build one from BACKBONES.

    The frozen plain route can be served from a feature cache
    (:meth:`enable_feature_cache`, or ``EarlyRouteCacheHook`` in training):
    calls with sample keys then return the stored ``hidden`` of each sample.
    """

    #: True for tuners that train the pre-trained weights themselves; a model
    #: then also trains its glue modules (input projections, query embeddings).
    trains_backbone: ClassVar[bool] = False
    #: the part of the route the feature cache may store: ``'output'`` (the
    #: whole frozen plain route), ``'early'`` (SHERL) or ``None``. A subclass
    #: changes the route, so it is ``None`` unless the subclass sets it.
    cache_route: ClassVar[str | None] = 'output'

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if 'cache_route' not in cls.__dict__:
            cls.cache_route = None

    def __init__(self, stack: BackboneStack | dict, init_cfg: dict | None = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.stack = BACKBONES.build(stack) if isinstance(stack, dict) else stack
        if not isinstance(self.stack, BackboneStack):
            raise TypeError(f'{type(self).__name__}: stack must be a BackboneStack or a BACKBONES config, '
                            f'got {type(self.stack).__name__}')
        if not self.trains_backbone:
            self.stack.requires_grad_(False)

    def forward(self, *inputs: Any, late_context: dict | None = None, return_intermediates: bool = False,
                sample_keys: Sequence[Any] | None = None, **kwargs: Any) -> StackOutput:
        """Run the stack; ``late_context`` only matters to tuners with a late
        route. With ``sample_keys`` (one unique key per sample) the output is
        read from / written to the feature cache."""
        keys = self._cache_keys(sample_keys)
        if keys is None:
            return self.stack(*inputs, return_intermediates=return_intermediates, **kwargs)
        if return_intermediates:
            raise ValueError(f'{type(self).__name__}: the feature cache stores the output only; call without '
                             f'sample keys to get the intermediates')

        def compute() -> tuple[dict, dict]:
            hidden = self.stack(*inputs, **kwargs).hidden
            if not isinstance(hidden, torch.Tensor):
                raise TypeError(f'{type(self.stack).__name__}: the feature cache stores a tensor output, got '
                                f'{type(hidden).__name__}')
            return dict(hidden=hidden), {}
        device = next(self.stack.parameters()).device
        features, _ = self._cached_route(keys, list(inputs) + list(kwargs.values()), compute, self.stack, device)
        return StackOutput(hidden=features['hidden'])

    def _route_fingerprint(self) -> tuple[dict[str, str], dict]:
        return weight_digests(self.stack), dict(stack=type(self.stack).__name__, cached='output')


def trainable_parameters(module: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in module.named_parameters() if p.requires_grad}


def parameter_report(module: nn.Module) -> str:
    """PEFT's one-line summary: ``trainable params: X || all params: Y || trainable%: Z``."""
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    share = 100.0 * trainable / total if total else 0.0
    return f'trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {share:.4f}'


def print_trainable_parameters(module: nn.Module) -> None:
    print(parameter_report(module))


def _frozen_stack_module_ids(module: nn.Module) -> set[int]:
    """Ids of the modules of every frozen stack under ``module`` (the
    ``stack`` of a tuner that does not train its backbone), except the
    modules a tuner injected into that stack (LoRA deltas, adapters)."""
    from ._common import injected_module_ids   # _common imports this file
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
    metadata, to a safetensors file; the write is atomic (temp file + rename)."""
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


def build_tuned_stacks(stacks: Mapping[str, BackboneStack], tuner: dict | None,
                       default_targets: tuple[str, ...]) -> nn.ModuleDict:
    """Apply a model-level ``tuner=`` config to a model's stacks.

    ``tuner`` is a TUNERS config; its optional ``targets`` key names the
    stacks it applies to (default ``default_targets``) and ``per_stack`` maps
    a stack name to options that override the shared ones for that stack.
    Stacks not targeted are wrapped in the frozen :class:`BaseTuner`. A tuner
    that trains the backbone (full fine-tuning) trains every stack unless
    ``targets`` is given explicitly (e.g. ``targets=['encoder', 'decoder']``
    trains the transformer around frozen pre-trained encoders).

    Example::

        tuner=dict(type='SHERL', mtsa=dict(reduction=2),
                   per_stack=dict(encoder=dict(select_layers=[0, 1, 3, 5], num_late_layers=0),
                                  decoder=dict(select_layers=[0, 2, 3, 4], num_late_layers=1)))
    """
    cfg = copy.deepcopy(dict(tuner or dict(type='LinearProbe')))
    explicit_targets = 'targets' in cfg
    targets = tuple(cfg.pop('targets', default_targets))
    per_stack = cfg.pop('per_stack', {}) or {}
    for name in list(targets) + list(per_stack):
        if name not in stacks:
            raise KeyError(f'tuner: stack {name!r} does not exist in this model; its stacks are {sorted(stacks)}')
    tuner_cls = TUNERS.get(cfg['type'])
    if tuner_cls is None:
        raise KeyError(f"tuner: type {cfg['type']!r} is not registered in TUNERS; "
                       f'registered tuners: {sorted(TUNERS.module_dict)}')
    wrapped = nn.ModuleDict()
    for name, stack in stacks.items():
        if name in targets or (tuner_cls.trains_backbone and not explicit_targets):
            stack_cfg = {**cfg, **per_stack.get(name, {})}
            wrapped[name] = TUNERS.build(stack_cfg, default_args=dict(stack=stack))
        else:
            wrapped[name] = BaseTuner(stack)
    return wrapped


__all__ = ['BaseTuner', 'build_tuned_stacks', 'load_trainable', 'parameter_report',
           'print_trainable_parameters', 'save_trainable', 'trainable_parameters', 'tuner_buffers']
