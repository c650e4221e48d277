"""Full fine-tuning: every parameter of the stack trains (the upper bound the
PETL methods are compared with, and the memory baseline)."""
from __future__ import annotations

from sherl_mm.backbones.base import BackboneStack
from sherl_mm.registry import TUNERS

from ._common import Targets, describe_modules, match_modules
from .base import BaseTuner


@TUNERS.register_module()
class FullFineTune(BaseTuner):
    """Train the whole stack on its plain route.

    Args:
        stack: the backbone stack or its BACKBONES config.
        frozen_modules: optional modules of the stack to keep frozen anyway
            (regex / names / suffixes / predicate, matched as LoRA's
            ``target_modules``), e.g. ``['embeddings']``. Default: none.

    Note: the running statistics of BatchNorm layers (buffers) also change
    under full fine-tuning; :func:`save_trainable` therefore writes the
    stack's buffers with its parameters for this tuner.
    """

    trains_backbone = True

    def __init__(self, stack: BackboneStack | dict, frozen_modules: Targets | None = None,
                 init_cfg: dict | None = None) -> None:
        super().__init__(stack, init_cfg=init_cfg)
        self.stack.requires_grad_(True)
        self.tuner_cfg = dict(type='FullFineTune', frozen_modules=frozen_modules)
        self.frozen: list[str] = []
        if frozen_modules is not None:
            matched = match_modules(self.stack, frozen_modules)
            if not matched:
                raise ValueError(f'FullFineTune: frozen_modules={frozen_modules!r} matched no module in '
                                 f'{type(self.stack).__name__}; {describe_modules(self.stack)}')
            for name, module in matched:
                module.requires_grad_(False)
                self.frozen.append(name)


__all__ = ['FullFineTune']
