"""The frozen stack, also registered as ``LinearProbe``.

A model's stacks that its ``tuner=`` config does not target are wrapped in
:class:`FrozenStack` (by :func:`~sherl_mm.tuners.build_tuned_stacks`), and
``tuner=dict(type='LinearProbe')`` wraps every targeted stack in it: linear
probing, where the stack is a fixed feature extractor and only the model's
heads (outside the tuner) train.

Frozen means the network of the pre-trained weights: the stack runs in eval
mode in training too (no dropout, fixed normalisation statistics), so its
output does not depend on the epoch, and a feature cache of it
(:mod:`sherl_mm.feature_cache`, docs/feature_cache.md) serves exactly what
the stack computes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from sherl_mm.backbones.base import StackOutput
from sherl_mm.feature_cache import FeatureCacheMixin, TensorDigests
from sherl_mm.registry import TUNERS

from .base import BaseTuner
from .options import TunerOptions, flag, option


def any_requires_grad(*objs: Any) -> bool:
    """Whether a tensor anywhere in ``objs`` (nested in lists, tuples, dicts) requires grad."""
    pending = list(objs)
    while pending:
        obj = pending.pop()
        if isinstance(obj, Tensor):
            if obj.requires_grad:
                return True
        elif isinstance(obj, (list, tuple)):
            pending.extend(obj)
        elif isinstance(obj, dict):
            pending.extend(obj.values())
    return False


@dataclass(frozen=True, kw_only=True)
class FrozenStackOptions(TunerOptions):
    """Options of :class:`FrozenStack` / ``LinearProbe``.

    Attributes:
        no_grad: run the stack under ``torch.no_grad()`` (nothing inside
            needs a graph). Skipped for a call whose inputs require grad (a
            trained module feeds the stack and needs gradients through it).
            Default True.
    """

    no_grad: bool = option(True, flag)


@TUNERS.register_module(name='LinearProbe')
@TUNERS.register_module()
class FrozenStack(FeatureCacheMixin, BaseTuner):
    """The whole stack frozen and in eval mode; no trainable parameter.

    Args:
        stack: the backbone stack or its BACKBONES config.
        no_grad: see :class:`FrozenStackOptions`.

    Cacheable: a call with sample keys reads / writes the stack's output
    (``hidden``) in the feature cache.
    """

    options_class = FrozenStackOptions
    options: FrozenStackOptions
    cached_part = 'frozen stack output'

    def train(self, mode: bool = True) -> FrozenStack:
        super().train(mode)
        self.stack.eval()
        return self

    def route_fingerprint(self, digests: TensorDigests) -> tuple[dict[str, str], dict]:
        return digests.of_module(self.stack), dict(stack=type(self.stack).__name__)

    def forward(self, *inputs: Any, late_context: dict | None = None, return_intermediates: bool = False,
                sample_keys: Sequence[Any] | None = None, **kwargs: Any) -> StackOutput:
        """The stack's plain route; with ``sample_keys`` (one unique key per
        sample) its output is read from / written to the feature cache."""
        keys = self._cache_keys(sample_keys)
        if keys is not None:
            return self._cached_forward(keys, inputs, kwargs, return_intermediates)
        if self.options.no_grad and torch.is_grad_enabled() and not any_requires_grad(inputs, kwargs):
            with torch.no_grad():
                return self.stack(*inputs, return_intermediates=return_intermediates, **kwargs)
        return self.stack(*inputs, return_intermediates=return_intermediates, **kwargs)

    def _cached_forward(self, keys: list[str], inputs: tuple, kwargs: dict, return_intermediates: bool
                        ) -> StackOutput:
        if return_intermediates:
            raise ValueError(f'{type(self).__name__}: the feature cache stores the output only; call without '
                             f'sample keys to get the intermediates')

        def compute() -> tuple[dict, dict]:
            hidden = self.stack(*inputs, **kwargs).hidden
            if not isinstance(hidden, Tensor):
                raise TypeError(f'{type(self.stack).__name__}: the feature cache stores a tensor output, got '
                                f'{type(hidden).__name__}')
            return dict(hidden=hidden), {}
        device = next(self.stack.parameters()).device
        features, _ = self._cached_route(keys, list(inputs) + list(kwargs.values()), compute, self.stack, device)
        return StackOutput(hidden=features['hidden'])


#: linear probing is the frozen stack under the model's trained heads
LinearProbe = FrozenStack

__all__ = ['FrozenStack', 'FrozenStackOptions', 'LinearProbe', 'any_requires_grad']
