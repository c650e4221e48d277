"""A frozen pre-trained network seen as an ordered stack of layers.

Every tuner in :mod:`sherl_mm.tuners` talks to a backbone only through this
interface::

    hidden, context = stack.embed(*inputs)          # input stage
    for i in range(stack.num_layers):
        hidden = stack.run_layer(i, hidden, context)  # layer i
    output = stack.finalize(hidden, context)         # output stage

``hidden`` is a token tensor ``(B, K, D)`` (``layout == 'tokens'``) or a
feature map ``(B, C, H, W)`` (``layout == 'feature_map'``). ``context`` holds
what a layer needs besides its input (masks, positions, cross-attention
memory); a route may override entries of it for some layers, e.g. SHERL gives
the regulated decoder layer another memory.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from mmengine.model import BaseModule
from torch import Tensor, nn


@dataclass
class StackOutput:
    """What a (tuned) stack returns.

    Attributes:
        hidden: output of the output stage on the tuned route.
        frozen: the frozen route's hidden state where a side route branched
            off (SHERL's ``x_last``); ``None`` on the plain route.
        side: the side route's state before the output stage: SHERL's MTSA
            output (stack width, the input of the late layers), LST's and
            UniPT's side state (width ``d``); ``None`` on the plain route.
        intermediates: hidden state after every layer run on the route,
            before the output stage, when the caller asked for them.
        aux: auxiliary outputs that the tuned route itself makes for the
            model's heads, in ``hidden``'s space, shallowest first (UniPT's
            MDETR decoder side: its per-layer side states, up-projected);
            ``None``: a model with auxiliary heads derives them itself.
    """

    hidden: Tensor
    frozen: Tensor | None = None
    side: Tensor | None = None
    intermediates: list[Tensor] | None = None
    aux: list[Tensor] | None = None


class BackboneStack(BaseModule):
    """Base class of the stack wrappers.

    Subclasses set ``self.layers`` (an ``nn.ModuleList``) and implement
    :meth:`embed` and :meth:`run_layer`; :meth:`finalize` defaults to the
    identity. ``widths[i]`` is the channel width of layer ``i``'s output and
    ``input_width`` the width of :meth:`embed`'s output.
    """

    layout: Literal['tokens', 'feature_map'] = 'tokens'
    layers: nn.ModuleList
    #: How per-token context entries follow when a route prepends tokens
    #: (prompt tuning): key -> 'zeros' | 'ones' | 'keep' ('keep' for entries
    #: the stack rebuilds itself for the new length).
    prompt_context_policies: dict[str, str] = {}

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def input_width(self) -> int:
        raise NotImplementedError(f'{type(self).__name__} does not define input_width')

    @property
    def widths(self) -> list[int]:
        raise NotImplementedError(f'{type(self).__name__} does not define widths')

    def embed(self, *inputs: Any, **kwargs: Any) -> tuple[Tensor, dict]:
        """Run the input stage. Returns ``(hidden, context)``."""
        raise NotImplementedError

    def run_layer(self, index: int, hidden: Tensor, context: dict) -> Tensor:
        """Run layer ``index`` on ``hidden`` and return its output hidden state."""
        raise NotImplementedError

    def finalize(self, hidden: Tensor, context: dict) -> Tensor:
        """Run the output stage (e.g. a final LayerNorm)."""
        return hidden

    @property
    def output_stage(self) -> str:
        """What :meth:`finalize` does, for a tuner that puts a trainable norm
        in place of the frozen output stage (SHERL ``output_norm``):
        ``'identity'`` (nothing), ``'norm'`` (a final normalisation, at most
        followed by dropout) or ``'other'`` (more than that, e.g. pooling and a
        projection, which a norm cannot replace). Stacks that override
        :meth:`finalize` with a plain final norm declare ``'norm'``."""
        return 'identity' if type(self).finalize is BackboneStack.finalize else 'other'

    def check_layer_index(self, index: int, option: str) -> int:
        """Return ``index`` (negative counts from the end) or raise naming ``option``."""
        n = self.num_layers
        if not -n <= index < n:
            raise IndexError(f'{option}: layer index {index} is out of range for '
                             f'{type(self).__name__} with {n} layers (valid: 0..{n - 1} or -{n}..-1)')
        return index % n

    def forward(self, *inputs: Any, return_intermediates: bool = False, **kwargs: Any) -> StackOutput:
        """The plain frozen route: input stage, every layer, output stage."""
        hidden, context = self.embed(*inputs, **kwargs)
        intermediates = []
        for index in range(self.num_layers):
            hidden = self.run_layer(index, hidden, context)
            intermediates.append(hidden)
        return StackOutput(hidden=self.finalize(hidden, context),
                           intermediates=intermediates if return_intermediates else None)


def tokens_to_map(tokens: Tensor, height: int, width: int) -> Tensor:
    """``(B, H*W, C)`` row-major tokens to a ``(B, C, H, W)`` map."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, height, width)


def map_to_tokens(feature_map: Tensor) -> Tensor:
    """``(B, C, H, W)`` map to ``(B, H*W, C)`` row-major tokens."""
    return feature_map.flatten(2).transpose(1, 2)

