"""Linear probing: the stack is a fixed feature extractor; only the model's
heads (outside the tuner) train."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sherl_mm.backbones.base import BackboneStack, StackOutput
from sherl_mm.registry import TUNERS

from ._common import FrozenStackTuner


def any_requires_grad(*objs: Any) -> bool:
    """Whether a tensor anywhere in ``objs`` (nested in lists, tuples, dicts) requires grad."""
    stack = list(objs)
    while stack:
        obj = stack.pop()
        if isinstance(obj, Tensor):
            if obj.requires_grad:
                return True
        elif isinstance(obj, (list, tuple)):
            stack.extend(obj)
        elif isinstance(obj, dict):
            stack.extend(obj.values())
    return False


@TUNERS.register_module()
class LinearProbe(FrozenStackTuner):
    """The whole stack frozen; the tuner has no trainable parameter.

    Args:
        stack: the backbone stack or its BACKBONES config.
        no_grad: run the stack under ``torch.no_grad()`` (nothing inside needs
            a graph, so no activation is kept for backward). Skipped for a call
            whose inputs require grad (a trained module feeds the stack and
            needs gradients through it).
        stack_eval: keep the stack in eval mode while the model trains
            (dropout off, normalisation statistics fixed): the features are
            those of the frozen network. False keeps only BatchNorm-like
            layers in eval mode.
    """

    def __init__(self, stack: BackboneStack | dict, no_grad: bool = True, stack_eval: bool = True,
                 init_cfg: dict | None = None) -> None:
        super().__init__(stack, norm_eval=True, init_cfg=init_cfg)
        self.no_grad = no_grad
        self.stack_eval = stack_eval
        self.tuner_cfg = dict(type='LinearProbe', no_grad=no_grad, stack_eval=stack_eval)

    def train(self, mode: bool = True) -> 'LinearProbe':
        super().train(mode)
        if mode and self.stack_eval:
            self.stack.eval()
        return self

    def forward(self, *inputs: Any, late_context: dict | None = None, return_intermediates: bool = False,
                **kwargs: Any) -> StackOutput:
        if self.no_grad and torch.is_grad_enabled() and not any_requires_grad(inputs, kwargs):
            with torch.no_grad():
                return self.stack(*inputs, return_intermediates=return_intermediates, **kwargs)
        return self.stack(*inputs, return_intermediates=return_intermediates, **kwargs)


__all__ = ['LinearProbe', 'any_requires_grad']
