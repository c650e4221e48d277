"""Applying a model's ``tuner=`` config to its stacks."""
from __future__ import annotations

import copy
from typing import Mapping

from torch import nn

from sherl_mm.backbones.base import BackboneStack
from sherl_mm.registry import TUNERS

from .frozen import FrozenStack


def build_tuned_stacks(stacks: Mapping[str, BackboneStack], tuner: dict | None,
                       default_targets: tuple[str, ...]) -> nn.ModuleDict:
    """Apply a model-level ``tuner=`` config to a model's stacks.

    ``tuner`` is a TUNERS config; its optional ``targets`` key names the
    stacks it applies to (default ``default_targets``) and ``per_stack`` maps
    a stack name to options that override the shared ones for that stack.
    Stacks not targeted are wrapped in :class:`~sherl_mm.tuners.FrozenStack`
    (frozen, in eval mode). A tuner that trains the backbone (full
    fine-tuning) trains every stack unless ``targets`` is given explicitly
    (e.g. ``targets=['encoder', 'decoder']`` trains the transformer around
    frozen pre-trained encoders).

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
            wrapped[name] = FrozenStack(stack)
    return wrapped


__all__ = ['build_tuned_stacks']
