"""Full fine-tuning: every parameter of the stack trains (the upper bound the
PETL methods are compared with, and the memory baseline)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sherl_mm.backbones.base import BackboneStack, StackOutput
from sherl_mm.registry import TUNERS

from .base import BaseTuner
from .injection import Targets, describe_modules, match_modules
from .options import TunerOptions, option, targets


@dataclass(frozen=True, kw_only=True)
class FullFineTuneOptions(TunerOptions):
    """Options of :class:`FullFineTune`.

    Attributes:
        frozen_modules: modules of the stack to keep frozen anyway (regex /
            names / suffixes / predicate, matched as LoRA's
            ``target_modules``), e.g. ``['embeddings']``. Default: none.
    """

    frozen_modules: Targets | None = option(None, targets)


@TUNERS.register_module()
class FullFineTune(BaseTuner):
    """Train the whole stack on its plain route.

    Args:
        stack: the backbone stack or its BACKBONES config.
        **options: :class:`FullFineTuneOptions`.

    Note: the running statistics of BatchNorm layers (buffers) also change
    under full fine-tuning; :func:`save_trainable` therefore writes the
    stack's buffers with its parameters for this tuner.
    """

    trains_backbone = True
    options_class = FullFineTuneOptions
    options: FullFineTuneOptions

    def __init__(self, stack: BackboneStack | dict, init_cfg: dict | None = None, **options: Any) -> None:
        super().__init__(stack, init_cfg=init_cfg, **options)
        self.stack.requires_grad_(True)
        self.frozen: list[str] = []
        frozen_modules = self.options.frozen_modules
        if frozen_modules is not None:
            matched = match_modules(self.stack, frozen_modules)
            if not matched:
                raise ValueError(f'FullFineTune: frozen_modules={frozen_modules!r} matched no module in '
                                 f'{type(self.stack).__name__}; {describe_modules(self.stack)}')
            for name, module in matched:
                module.requires_grad_(False)
                self.frozen.append(name)

    def forward(self, *inputs: Any, late_context: dict | None = None, return_intermediates: bool = False,
                **kwargs: Any) -> StackOutput:
        """The stack's plain route, with every weight trained."""
        return self.stack(*inputs, return_intermediates=return_intermediates, **kwargs)


__all__ = ['FullFineTune', 'FullFineTuneOptions']
