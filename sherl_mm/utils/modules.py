"""Small helpers on ``nn.Module`` that several parts of sherl_mm need."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, NamedTuple

from torch import nn


class ParameterCount(NamedTuple):
    """Numbers of parameters (elements, not tensors) of a module."""

    total: int
    trainable: int

    @property
    def share(self) -> float:
        """Trainable parameters as a percentage of all (0 for an empty module)."""
        return 100.0 * self.trainable / self.total if self.total else 0.0


def count_parameters(module: nn.Module) -> ParameterCount:
    """Count ``module``'s parameters; a parameter shared by several
    sub-modules counts once (``nn.Module.parameters`` yields it once)."""
    total = trainable = 0
    for param in module.parameters():
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    return ParameterCount(total, trainable)


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put ``module`` and all its sub-modules in eval mode for the block,
    then give every sub-module back its own previous mode (not just the
    root's: a frozen sub-stack may have been in eval mode inside a training
    model)."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for sub, mode in modes:
            sub.training = mode


__all__ = ['ParameterCount', 'count_parameters', 'eval_mode']
