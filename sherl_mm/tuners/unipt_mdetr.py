"""UniPT in MDETR as its authors implemented it (UniPT, CVPR 2024; docs/tuners.md).

One tuner type, one instance per transformer stack, told its ``role``::

    tuner=dict(type='UniPTMDETR', reduction=2, eps=1e-7,
               per_stack=dict(encoder=dict(role='encoder'), decoder=dict(role='decoder')))

Both stacks run all their layers frozen under ``torch.no_grad()``. With the
feature lists ``F = [input, out_0, ..., out_{n-2}]`` (index 0: the stack's
input, i.e. the encoder's ``src`` without positions or the decoder's ``tgt = 0``;
index ``i``: the output of layer ``i - 1``) and ``feature_indices = (1, 3, 5)``::

    encoder (valid = ~key_padding_mask over the S image+text tokens):
      A = down0(out_{n-1}),  T_j = down_j(F[idx_j])                  (B, S, d)
      side_img_memory = A + Proj(Σ_j π_j Mg_j)                       (B, S, d), stays at width d
    decoder (its frozen layers read the frozen encoder memory; valid = ~memory padding):
      A = down0(LN_dec(out_{n-1})),  T_j = down_j(F[idx_j])         (B, Q, d), F un-normed
      R_j = linear_attention(T_j, side_img_memory, valid, no +I)     (B, Q, d)
      T_j <- T_j + crosser_j(R_j)
      side_tgt = A + Proj(Σ_j π_j Mg_j)                             (B, Q, d), no query mask
      hs = up(stack([T_1, T_3, T_5, side_tgt]))                      (4, B, Q, D)

with ``Mg_j = linear_attention(A, T_j, valid) (+ I)`` and ``π = softmax_j(gate(a ⊙
t_j))`` (:func:`~sherl_mm.tuners.unipt.merge_by_confidence`), ``down = LN_d∘Linear_{D→d}``,
``Proj = LN_d∘Linear_{D→d}∘ReLU∘Linear_{d→D}``, ``crosser = LN_d∘Linear_{d→d}``,
``up = LN_D∘Linear_{d→D}∘ReLU`` and ε = 1e-7. The decoder returns ``hs[-1]`` as its
output and ``hs[:-1]`` as :attr:`StackOutput.aux`, the three auxiliary head
inputs. At MDETR's sizes (D = 256, d = 128) the side modules hold 481,666
parameters: 198,913 on the encoder, 249,217 + 33,536 (``up``) on the decoder.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from sherl_mm.backbones.base import BackboneStack, StackOutput
from sherl_mm.registry import TUNERS

from .base import BaseTuner
from .layers import stack_widths
from .options import NormEvalOption, OptionError, SideWidthOption, number, one_of, option
from .unipt import down_projection, linear_attention, merge_by_confidence

ROLES = ('encoder', 'decoder')
#: the context key of each role's (B, tokens) padding mask (True = pad): the
#: encoder's own tokens, the decoder's memory tokens (its queries have none)
MASK_KEYS = {'encoder': 'key_padding_mask', 'decoder': 'memory_key_padding_mask'}


def _projection(side_width: int, hidden_width: int, norm_eps: float) -> nn.Sequential:
    """``Proj = LN_d∘Linear_{D→d}∘ReLU∘Linear_{d→D}``: ``(B, K, d) -> (B, K, d)``."""
    return nn.Sequential(nn.Linear(side_width, hidden_width), nn.ReLU(), nn.Linear(hidden_width, side_width),
                         nn.LayerNorm(side_width, eps=norm_eps))


def _feature_indices(value: Any) -> str | None:
    items = list(value) if isinstance(value, (list, tuple)) else None
    if not items or any(isinstance(i, bool) or not isinstance(i, int) for i in items) or len(set(items)) != len(items):
        return 'must be a non-empty list of distinct integers'
    return None


@dataclass(frozen=True, kw_only=True)
class UniPTMDETROptions(SideWidthOption, NormEvalOption):
    """Options of :class:`UniPTMDETR`.

    Attributes:
        role: ``'encoder'`` (its output ``hidden`` is ``side_img_memory``,
            width ``d``) or ``'decoder'`` (reads that memory from
            ``late_context['memory']``; returns the head inputs). Required.
        side_width: ``d``; or ``reduction``: ``d = D // reduction`` (default 2,
            MDETR: 256 // 2 = 128).
        feature_indices: indices into ``[input, out_0, ..., out_{n-2}]`` of the
            hidden states that interact with the anchor (default ``[1, 3, 5]``,
            MDETR's: the outputs of layers 0, 2, 4). The anchor is always the
            last layer.
        eps: ε of the row ℓ1-norm of the linear attention (MDETR: 1e-7, the default).
        norm_eps: eps of the side LayerNorms (default 1e-5).
        norm_eval: see :class:`~sherl_mm.tuners.options.NormEvalOption`.
    """

    role: str | None = option(None, one_of(*ROLES))
    feature_indices: list[int] = option((1, 3, 5), _feature_indices)
    eps: float = option(1e-7, number(0))
    norm_eps: float = option(1e-5, number(0, low_open=True))

    def check(self) -> None:
        super().check()
        if self.role is None:
            raise OptionError('role', "=None: must be 'encoder' or 'decoder'; in a model config give it per stack: "
                                      "per_stack=dict(encoder=dict(role='encoder'), decoder=dict(role='decoder'))")


@TUNERS.register_module()
class UniPTMDETR(BaseTuner):
    """UniPT's MDETR form on one DETR transformer stack (UniPT, CVPR 2024).

    Args:
        stack: the encoder or decoder stack, or its BACKBONES config; every
            layer and its input must have the same width ``D``.
        **options: :class:`UniPTMDETROptions` (``role`` is required).

    Returns, encoder: ``StackOutput(hidden=side_img_memory (B, S, d), frozen=
    <frozen encoder output> (B, S, D), side=side_img_memory)``; decoder:
    ``StackOutput(hidden=hs[-1] (B, Q, D), frozen=<normed frozen decoder output>,
    side=side_tgt (B, Q, d), aux=[hs[0], hs[1], hs[2]])``. ``intermediates``
    (when asked for) are the frozen layer outputs.
    """

    options_class = UniPTMDETROptions
    options: UniPTMDETROptions

    def __init__(self, stack: BackboneStack | dict, init_cfg: dict | None = None, **options: Any) -> None:
        super().__init__(stack, init_cfg=init_cfg, **options)
        config, stack = self.options, self.stack
        name = type(stack).__name__
        if stack.layout != 'tokens':
            raise ValueError(f'UniPTMDETR: {name} yields feature maps; the MDETR form needs a token stack (B, K, D)')
        # one D everywhere: the same down-projection, Proj and up-projection shapes serve every hidden state
        input_width, widths = stack_widths(stack, 'UniPTMDETR')
        if len(set(widths) | {input_width}) != 1:
            raise ValueError(f'UniPTMDETR: {name} must have one width for its input and every layer (MDETR: 256), '
                             f'got input width {input_width} and layer widths {widths}')
        n = stack.num_layers
        indices = list(config.feature_indices)
        # index n would be the anchor itself (the last layer's output), so n must exceed every index
        if min(indices) < 0 or max(indices) >= n:
            raise ValueError(f'UniPTMDETR: feature_indices {indices} index [input, out_0, ..., out_{n - 2}] and '
                             f'the anchor is out_{n - 1}, so they must lie in 0..{n - 1}: the stack needs at least '
                             f'{max(indices) + 1} layers (MDETR: 6), {name} has {n}')
        width = input_width
        d = config.side_width_for(width, 'UniPTMDETR')
        self.role, self.width, self.side_width, self.eps = config.role, width, d, float(config.eps)
        self.feature_indices = indices
        norm_eps = config.norm_eps

        self.anchor_down = down_projection(width, d, norm_eps)
        self.downsamples = nn.ModuleList(down_projection(width, d, norm_eps) for _ in indices)
        # Proj's inner width is 256 in the authors' MDETR, i.e. the stack width D (= 2d there)
        self.projection = _projection(d, width, norm_eps)
        self.gate = nn.Linear(d, 1)                   # shared across j, as in UniPT's confidence aggregation
        if self.role == 'decoder':
            self.crossers = nn.ModuleList(
                nn.Sequential(nn.Linear(d, d), nn.LayerNorm(d, eps=norm_eps)) for _ in indices)
            self.upsample = nn.Sequential(nn.ReLU(), nn.Linear(d, width), nn.LayerNorm(width, eps=norm_eps))
        self._init_side()

    def _init_side(self) -> None:
        """The authors' init: xavier-uniform on every side matrix; biases and
        LayerNorms keep PyTorch's defaults."""
        for pname, p in self.named_parameters():
            if not pname.startswith('stack.') and p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def extra_repr(self) -> str:
        return (f'role={self.role!r}, width={self.width}, side_width={self.side_width}, '
                f'feature_indices={self.feature_indices}, eps={self.eps}')

    @property
    def makes_aux(self) -> bool:
        return self.role == 'decoder'

    # ------------------------------------------------------------------ pieces
    def _valid(self, mask: Tensor | None, batch: int, tokens: int) -> Tensor | None:
        """``(B, tokens)`` bool, True at real tokens, from a padding mask (True = pad)."""
        if mask is None:
            return None
        if mask.dim() != 2 or tuple(mask.shape) != (batch, tokens):
            raise ValueError(f'UniPTMDETR ({self.role}): context[{MASK_KEYS[self.role]!r}] must be a ({batch}, '
                             f'{tokens}) padding mask (True = pad), got shape {tuple(mask.shape)}')
        return ~mask.bool()

    def read_memory(self, target: Tensor, memory: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor]:
        """The decoder side's cross attention into the encoder side memory,
        without the ``+ I`` residual (queries and memory tokens differ in number).

        Args:
            target: ``T_j``, ``(B, Q, d)``.
            memory: ``side_img_memory``, ``(B, S, d)``.
            valid: ``(B, S)`` bool, True at real memory tokens, or None.

        Returns ``(R, W)``: ``R`` ``(B, Q, d)`` and the weights ``W`` ``(B, Q, S)``.
        """
        return linear_attention(target, memory, valid, self.eps, residual=False)

    def _frozen_route(self, inputs: tuple, kwargs: dict, return_intermediates: bool
                      ) -> tuple[dict[int, Tensor], Tensor, dict, list[Tensor]]:
        """``(selected feature states, finalized last output, context,
        intermediates)`` of the whole frozen stack, without a graph."""
        stack = self.stack
        wanted = set(self.feature_indices)
        feats: dict[int, Tensor] = {}
        intermediates: list[Tensor] = []
        with torch.no_grad():
            hidden, context = stack.embed(*inputs, **kwargs)
            if 0 in wanted:
                feats[0] = hidden
            for i in range(stack.num_layers):
                hidden = stack.run_layer(i, hidden, context)
                if i + 1 in wanted:                    # feature index i + 1 is the output of layer i
                    feats[i + 1] = hidden
                if return_intermediates:
                    intermediates.append(hidden)
            # the encoder's output stage is the identity; the decoder's is its final LayerNorm, which UniPT
            # applies to the last output only (the intermediate outputs stay un-normed, as in the authors' code)
            final = stack.finalize(hidden, context)
        return feats, final, context, intermediates

    # ------------------------------------------------------------------ forward
    def forward(self, *inputs: Any, late_context: dict | None = None, return_intermediates: bool = False,
                **kwargs: Any) -> StackOutput:
        """Encoder: ``inputs = (src, pos, key_padding_mask)``. Decoder:
        ``inputs = (query_pos, memory, memory_pos, memory_key_padding_mask)``
        with the frozen encoder memory, and ``late_context=dict(memory=
        side_img_memory)`` from the encoder instance."""
        feats, final, context, intermediates = self._frozen_route(inputs, kwargs, return_intermediates)
        intermediates_out = intermediates if return_intermediates else None
        batch, tokens = final.shape[:2]
        targets = [down(feats[k]) for down, k in zip(self.downsamples, self.feature_indices)]
        anchor = self.anchor_down(final)

        if self.role == 'encoder':
            valid = self._valid(context.get(MASK_KEYS['encoder']), batch, tokens)
            side = anchor + self.projection(merge_by_confidence(anchor, targets, self.gate, valid, self.eps))
            return StackOutput(hidden=side, frozen=final, side=side, intermediates=intermediates_out)

        ctx = {**context, **late_context} if late_context else context
        memory = (late_context or {}).get('memory')
        if memory is None:
            raise ValueError("UniPTMDETR (decoder): call with late_context=dict(memory=...), the encoder side "
                             "memory (the .hidden of a UniPTMDETR with role='encoder')")
        if memory.dim() != 3 or memory.shape[0] != batch or memory.shape[-1] != self.side_width:
            raise ValueError(f'UniPTMDETR (decoder): the encoder side memory must be ({batch}, S, '
                             f'{self.side_width}) (side_width d of both instances must agree), got '
                             f"{tuple(memory.shape)}; is the encoder tuned with role='encoder'?")
        memory_valid = self._valid(ctx.get(MASK_KEYS['decoder']), batch, memory.shape[1])
        # each decoder feature first reads the encoder side memory, then interacts with the anchor
        targets = [t + crosser(self.read_memory(t, memory, memory_valid)[0])
                   for t, crosser in zip(targets, self.crossers)]
        # queries have no padding: plain means, no column mask
        side = anchor + self.projection(merge_by_confidence(anchor, targets, self.gate, None, self.eps))
        hs = self.upsample(torch.stack([*targets, side], dim=0))              # (len(indices) + 1, B, Q, D)
        return StackOutput(hidden=hs[-1], frozen=final, side=side, intermediates=intermediates_out,
                           aux=list(hs[:-1]))


__all__ = ['UniPTMDETR', 'UniPTMDETROptions']
