"""Ladder Side-Tuning (LST, Sung et al., NeurIPS 2022), Sec. 3 of the LST paper.

The backbone runs frozen under ``torch.no_grad()``; a side network of width
``d = D // reduction`` reads it through gated ladders and its up-projected
output *replaces* the stack's output::

    s = Linear_{D_in→d}(input stage output)                       side_first_downsample
    for each kept layer i (not in drop_layers):
        g_i = σ(α_i / T)                                          T = 0.1, α_i = 0 → 0.5
        s = g_i · s + (1 - g_i) · Linear^{(i)}_{D_i→d}(h_i)      h_i: backbone layer i output
        s = side_layer_i(s)
    out = Linear_{d→D_out}(LN_d(s))                               side_final_upsample

Side layers by ``side_layer`` (``'auto'`` picks from the stack):

* ``'encoder'``: ``nn.TransformerEncoderLayer(d, num_heads, ffn, dropout)``
  (post-norm, ReLU), padding mask from ``context['key_padding_mask']``.
* ``'decoder'`` (auto when the stack's layers contain cross-attention, e.g. a
  DETR or T5 decoder): ``nn.TransformerDecoderLayer(d, ...)`` cross-attending
  to a *side memory*: ``late_context['side_memory']`` ``(B, S, d)`` when given,
  else ``Linear_{D_mem→d}`` (``memory_down``) of ``late_context['memory']``
  (e.g. the LST encoder's output, as MDETR's model passes it) or, without
  late_context, of the frozen ``context['memory']``. Its padding mask is
  ``memory_key_padding_mask`` from the merged context.
* ``'conv'`` (auto on feature-map stacks): ``ReLU(BN(Conv3x3_{d→d}))``; the side
  map is average-pooled to each ladder's spatial size before merging; ladders,
  first down- and final up-projection are 1x1 convs, and there is no final norm.

Side weights use PyTorch's default init (LST initialises them from a pruned
copy of the backbone, which is not reproduced). This is the authors' design
for T5 / CLIP-ViL applied per stack; they released no LST for MDETR
(docs/tuners.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sherl_mm.backbones.base import BackboneStack, StackOutput
from sherl_mm.registry import TUNERS

from .base import BaseTuner
from .layers import check_output_width, stack_widths
from .options import NormEvalOption, SideWidthOption, flag, layer_indices, number, one_of, option

SIDE_LAYERS = ('auto', 'encoder', 'decoder', 'conv')
_CROSS_NAMES = ('cross_attn', 'multihead_attn', 'encdecattention', 'crossattention', 'cross_attention')


def has_cross_attention(stack: BackboneStack) -> bool:
    """Whether the stack's first layer contains a cross-attention module (by name)."""
    if not stack.num_layers:
        return False
    return any(any(c in name.lower() for c in _CROSS_NAMES) for name, _ in stack.layers[0].named_modules())


class ConvSideLayer(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def lst_gate(alpha: Tensor, temperature: float) -> Tensor:
    """``σ(α/T)``: the weight of the side state in a ladder merge."""
    return torch.sigmoid(alpha / temperature)


@dataclass(frozen=True, kw_only=True)
class LSTOptions(SideWidthOption, NormEvalOption):
    """Options of :class:`LST`.

    Attributes:
        reduction: ``r``, side width ``d = D // r`` (default 8); or ``side_width``.
        drop_layers: layer indices without ladder and side layer.
        side_layer: ``'auto'``, ``'encoder'``, ``'decoder'`` or ``'conv'``.
        num_heads: heads of the side attention (default: the largest of 8, 4,
            2, 1 dividing ``d``).
        feedforward_channels: side FFN width (default ``4 d``).
        dropout: dropout inside the side transformer layers, in [0, 1) (default 0.1).
        temperature, alpha_init: the ladder gates ``σ(α/T)`` (default 0.1, 0).
        final_norm: ``LN_d`` before the up-projection (token stacks).
        out_channels: ``D_out`` of the up-projection (default: last layer width).
        finalize_output: apply the stack's output stage to the up-projected
            side output (default True, so the tuned stack returns what the
            plain one does, e.g. CLIP's projected embedding).
        bias: biases of the down/ladder/up projections (CLIP-ViL's LST: False).
        memory_width: width of the memory that ``memory_down`` projects
            (decoder side layers; default: the stack's input width).
        norm_eval: see :class:`~sherl_mm.tuners.options.NormEvalOption`.
    """

    default_reduction = 8

    drop_layers: list[int] | int | None = option(None, layer_indices)
    side_layer: str = option('auto', one_of(*SIDE_LAYERS))
    num_heads: int | None = option(None, number(1, integer=True))
    feedforward_channels: int | None = option(None, number(1, integer=True))
    dropout: float = option(0.1, number(0, 1, high_open=True))
    temperature: float = option(0.1, number(0, low_open=True))
    alpha_init: float = option(0.0, number())
    final_norm: bool = option(True, flag)
    out_channels: int | None = option(None, number(1, integer=True))
    finalize_output: bool = option(True, flag)
    bias: bool = option(True, flag)
    memory_width: int | None = option(None, number(1, integer=True))


@TUNERS.register_module()
class LST(BaseTuner):
    """Ladder side network on one backbone stack.

    Args:
        stack: the backbone stack or its BACKBONES config.
        **options: :class:`LSTOptions`.

    Returns ``StackOutput(hidden=Up(side), frozen=<last frozen layer output>,
    side=<side state, width d>, intermediates=<frozen layer outputs>)``.
    """

    options_class = LSTOptions
    options: LSTOptions

    def __init__(self, stack: BackboneStack | dict, init_cfg: dict | None = None, **options: Any) -> None:
        super().__init__(stack, init_cfg=init_cfg, **options)
        config, stack = self.options, self.stack
        n = stack.num_layers
        input_width, widths = stack_widths(stack, 'LST')
        feature_map = stack.layout == 'feature_map'
        side_layer = config.side_layer
        if side_layer == 'auto':
            side_layer = 'conv' if feature_map else ('decoder' if has_cross_attention(stack) else 'encoder')
        if feature_map != (side_layer == 'conv'):
            raise ValueError(f"LST: side_layer={side_layer!r} does not fit {type(stack).__name__} (layout "
                             f"{stack.layout!r}); use 'conv' for feature maps, 'encoder'/'decoder' for tokens")
        drop = config.drop_layers
        drop = [] if drop is None else [drop] if isinstance(drop, int) else list(drop)
        dropped = sorted({stack.check_layer_index(i, 'drop_layers') for i in drop})
        self.kept = [i for i in range(n) if i not in dropped]
        if not self.kept:
            raise ValueError(f'LST: drop_layers {drop} drops every layer of the {n}-layer stack')
        d = config.side_width_for(widths[-1], 'LST')
        self.side_width, self.side_layer, self.temperature = d, side_layer, float(config.temperature)
        self.finalize_output = config.finalize_output
        out = check_output_width('LST', config.out_channels, widths[-1], config.finalize_output)
        num_heads = config.num_heads
        if num_heads is None:
            num_heads = next(h for h in (8, 4, 2, 1) if d % h == 0)
        elif d % num_heads:
            raise ValueError(f'LST: side width {d} is not divisible by num_heads={num_heads}')
        ffn = config.feedforward_channels or 4 * d

        def proj(cin: int, cout: int) -> nn.Module:
            return nn.Conv2d(cin, cout, 1, bias=config.bias) if feature_map else nn.Linear(cin, cout, bias=config.bias)

        self.side_first_downsample = proj(input_width, d)
        self.side_downsamples = nn.ModuleDict({str(i): proj(widths[i], d) for i in self.kept})
        self.side_gates = nn.ParameterDict({str(i): nn.Parameter(torch.full((1,), float(config.alpha_init)))
                                            for i in self.kept})
        if side_layer == 'conv':
            layers = {str(i): ConvSideLayer(d) for i in self.kept}
        elif side_layer == 'encoder':
            layers = {str(i): nn.TransformerEncoderLayer(d, num_heads, ffn, config.dropout, batch_first=True)
                      for i in self.kept}
        else:
            layers = {str(i): nn.TransformerDecoderLayer(d, num_heads, ffn, config.dropout, batch_first=True)
                      for i in self.kept}
        self.side_layers = nn.ModuleDict(layers)
        self.memory_down = nn.Linear(config.memory_width or input_width, d) if side_layer == 'decoder' else None
        self.side_final_norm = nn.LayerNorm(d) if config.final_norm and not feature_map else None
        self.side_final_upsample = proj(d, out)

    def gate(self, index: int) -> Tensor:
        return lst_gate(self.side_gates[str(index)], self.temperature)

    def _side_memory(self, context: dict) -> tuple[Tensor, Tensor | None]:
        mask = context.get('memory_key_padding_mask')
        if context.get('side_memory') is not None:
            memory = context['side_memory']
            if memory.shape[-1] != self.side_width:
                raise ValueError(f'LST: side_memory must have width {self.side_width}, got {tuple(memory.shape)}')
        else:
            memory = context.get('memory')
            if memory is None:
                raise ValueError("LST(side_layer='decoder') needs a memory: late_context['side_memory'] or "
                                 "late_context['memory'] / context['memory']")
            if memory.shape[-1] != self.memory_down.in_features:
                raise ValueError(f'LST: memory width {memory.shape[-1]} != memory_width '
                                 f'{self.memory_down.in_features}; set memory_width or pass side_memory')
            memory = self.memory_down(memory)
        return memory, (mask.bool() if mask is not None else None)

    def forward(self, *inputs: Any, late_context: dict | None = None, return_intermediates: bool = False,
                **kwargs: Any) -> StackOutput:
        stack = self.stack
        outputs = []
        with torch.no_grad():
            hidden, context = stack.embed(*inputs, **kwargs)
            first = hidden
            for i in range(stack.num_layers):
                hidden = stack.run_layer(i, hidden, context)
                outputs.append(hidden)
        ctx = {**context, **late_context} if late_context else context
        side = self.side_first_downsample(first)
        kpm = ctx.get('key_padding_mask') if self.side_layer != 'conv' else None
        memory = mem_mask = None
        if self.side_layer == 'decoder':
            memory, mem_mask = self._side_memory(ctx)
        for i in self.kept:
            ladder = self.side_downsamples[str(i)](outputs[i])
            if self.side_layer == 'conv' and side.shape[-2:] != ladder.shape[-2:]:
                side = F.adaptive_avg_pool2d(side, ladder.shape[-2:])
            g = self.gate(i).to(ladder.dtype)
            side = g * side + (1 - g) * ladder
            layer = self.side_layers[str(i)]
            if self.side_layer == 'conv':
                side = layer(side)
            elif self.side_layer == 'encoder':
                side = layer(side, src_key_padding_mask=kpm)
            else:
                side = layer(side, memory, tgt_key_padding_mask=kpm, memory_key_padding_mask=mem_mask)
        normed = self.side_final_norm(side) if self.side_final_norm is not None else side
        out = self.side_final_upsample(normed)
        if self.finalize_output:
            out = stack.finalize(out, context)
        return StackOutput(hidden=out, frozen=hidden, side=side,
                           intermediates=outputs if return_intermediates else None)


__all__ = ['LST', 'has_cross_attention', 'lst_gate']
