"""The abstract base class of tuners.

A tuner is an ``nn.Module`` that owns one :class:`BackboneStack` and decides
the route a forward pass takes through it. Tuners are registered in
:data:`sherl_mm.registry.TUNERS` and built from small configs::

    tuner = TUNERS.build(dict(type='LoRA', rank=8), default_args=dict(stack=stack))
    out = tuner(input_ids, attention_mask)       # StackOutput

A subclass implements :meth:`BaseTuner.forward` and, when it has options,
names their dataclass in ``options_class`` (see :mod:`.options`); the base
class builds the stack, validates the options once, freezes the stack and
keeps its normalisation statistics frozen in training. docs/tuners.md shows
how to write one.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from mmengine.model import BaseModule
from torch import nn

from sherl_mm.backbones.base import BackboneStack, StackOutput
from sherl_mm.registry import BACKBONES

from .options import NormEvalOption, TunerOptions


def set_norm_eval(module: nn.Module) -> None:
    """Put every normalisation layer with running statistics (BatchNorm,
    SyncBN, InstanceNorm with ``track_running_stats``) in eval mode, so that a
    frozen network's statistics do not drift while the tuner trains (they are
    buffers, which the tuner's weight file does not hold)."""
    for m in module.modules():
        if getattr(m, 'running_mean', None) is not None and getattr(m, 'track_running_stats', True):
            m.eval()


class BaseTuner(BaseModule, ABC):
    """Holds ``stack``, frozen unless the tuner trains the backbone.

    Args:
        stack: the backbone stack, or a config to build one from BACKBONES.
        init_cfg: mmengine's initialisation config.
        **options: the tuner's options, validated by ``options_class``
            (a tuner without options takes none).

    Attributes:
        options: the validated options (an ``options_class`` instance), or
            None for a tuner without options.
    """

    #: True for tuners that train the pre-trained weights themselves; a model
    #: then also trains its glue modules (input projections, query embeddings).
    trains_backbone: ClassVar[bool] = False
    #: the dataclass of the tuner's options; None: the tuner takes none
    options_class: ClassVar[type[TunerOptions] | None] = None

    def __init__(self, stack: BackboneStack | dict, init_cfg: dict | None = None, **options: Any) -> None:
        super().__init__(init_cfg=init_cfg)
        name = type(self).__name__
        if self.options_class is None and options:
            raise TypeError(f'{name} takes no options, got {sorted(options)}')
        self.options = None if self.options_class is None else self.options_class.parse(options, name)
        self.stack = BACKBONES.build(stack) if isinstance(stack, dict) else stack
        if not isinstance(self.stack, BackboneStack):
            raise TypeError(f'{name}: stack must be a BackboneStack or a BACKBONES config, '
                            f'got {type(self.stack).__name__}')
        if not self.trains_backbone:
            self.stack.requires_grad_(False)

    @abstractmethod
    def forward(self, *inputs: Any, late_context: dict | None = None, return_intermediates: bool = False,
                **kwargs: Any) -> StackOutput:
        """Run the tuned route on the stack's inputs.

        Args:
            late_context: entries merged into the context of the layers that
                run after a side module (SHERL's late layers: e.g. the memory
                a decoder's late layer cross-attends to); tuners without such
                layers ignore it.
            return_intermediates: also return the hidden state after every
                layer the route runs.
        """

    @property
    def makes_aux(self) -> bool:
        """Whether :meth:`forward` fills ``StackOutput.aux``, the auxiliary
        head inputs the tuned route makes itself; a model with auxiliary heads
        then does not ask for intermediates."""
        return False

    @property
    def norm_eval(self) -> bool:
        """Whether training keeps the frozen stack's normalisation statistics
        fixed: the ``norm_eval`` option where the tuner has it, else True for
        a tuner that does not train its backbone."""
        if isinstance(self.options, NormEvalOption):
            return self.options.norm_eval
        return not self.trains_backbone

    @property
    def tuner_cfg(self) -> dict:
        """The tuner's config (type and validated options), e.g. as metadata of
        :func:`~sherl_mm.tuners.save_trainable`."""
        options = self.options.to_dict() if self.options is not None else {}
        options.pop('type', None)
        return {'type': type(self).__name__, **options}

    def train(self, mode: bool = True) -> BaseTuner:
        super().train(mode)
        if mode and self.norm_eval:
            set_norm_eval(self.stack)
        return self


__all__ = ['BaseTuner', 'set_norm_eval']
