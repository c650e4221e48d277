"""UniPT (Diao et al., CVPR 2024), its generic module (Sec. 3.2-3.3 of the UniPT paper).

The whole backbone runs frozen under ``torch.no_grad()``; the UniPT module
reads the selected hidden states and its output *replaces* the stack's output
(no backbone layer runs afterwards)::

    T_j = LN_d(Linear_{D_j→d}(h_j))                     unshared, j = 0..N-1
    A = T_{N-1} (anchor: the last layer), a = masked_mean_K(A)
    W_j = l1norm_row(ReLU((A T_jᵀ) ⊙ M_cols)) + I      parallel, j < N-1
    Mg_j = W_j T_j ;  c_j = gate(a ⊙ masked_mean_K(T_j)) ;  π = softmax_j(c)
    out = Up(A + Proj(Σ_j π_j Mg_j)),  Proj = LN_d∘Linear_{d→d},  Up = Linear_{d→D_out}∘ReLU

Masks: the token mask ``M`` comes from the stack's context, key
``mask_key`` (default ``'key_padding_mask'``, a ``(B, K)`` bool tensor with
True at padding, as every sherl_mm token stack provides); without it every
token counts. Padded columns get attention weight 0 and padded tokens are left
out of the means.

Feature-map stacks: every map is average-pooled to the last map's size and
flattened row-major, the module runs token-wise as above (no mask) and the
output is rolled back to ``(B, D_out, H, W)``. This is a simplification, not
the authors' CNN UniPT (their unfold/fold spatial re-weighting is not
implemented).

The authors' MDETR form (decoder side cross-attending to the encoder
side memory, per-layer crossers, four head outputs) is
:class:`~sherl_mm.tuners.unipt_mdetr.UniPTMDETR`; it shares
:func:`linear_attention`, :func:`masked_mean`, :func:`down_projection` and
:func:`merge_by_confidence` with this module.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sherl_mm.backbones.base import BackboneStack, StackOutput
from sherl_mm.registry import MODELS, TUNERS

from .base import BaseTuner
from .layers import INPUT, check_output_width, resolve_selection, stack_widths
from .mtsa import l1norm
from .options import LayerSelection, NormEvalOption, SideWidthOption, flag, number, option


def masked_mean(x: Tensor, valid: Tensor | None) -> Tensor:
    """Mean of ``x (B, K, d)`` over the tokens where ``valid (B, K)`` is True."""
    if valid is None:
        return x.mean(dim=1)
    w = valid.to(x.dtype).unsqueeze(-1)
    return (x * w).sum(dim=1) / w.sum(dim=1)


def linear_attention(query: Tensor, context: Tensor, valid: Tensor | None = None, eps: float = 1e-8,
                     residual: bool = True) -> tuple[Tensor, Tensor]:
    """UniPT's cross attention: ``W = l1norm_row(ReLU((Q Cᵀ) ⊙ M_cols)) (+ I)``,
    returns ``(W C, W)``. The ``+ I`` residual needs as many queries as context tokens."""
    weights = torch.matmul(query, context.transpose(1, 2))
    if valid is not None:
        weights = weights * valid.to(weights.dtype).unsqueeze(1)
    weights = l1norm(F.relu(weights), dim=-1, eps=eps)
    if residual:
        weights = weights + torch.eye(weights.shape[-1], dtype=weights.dtype, device=weights.device)
    return torch.matmul(weights, context), weights


def down_projection(in_width: int, side_width: int, norm_eps: float = 1e-5) -> nn.Sequential:
    """UniPT's down-projection ``LN_d∘Linear_{D→d}``: ``(B, K, D) -> (B, K, d)``."""
    return nn.Sequential(nn.Linear(in_width, side_width), nn.LayerNorm(side_width, eps=norm_eps))


def merge_by_confidence(anchor: Tensor, targets: Sequence[Tensor], gate: nn.Module, valid: Tensor | None = None,
                        eps: float = 1e-8) -> Tensor:
    """UniPT's parallel interaction + confidence aggregation ``Σ_j π_j Mg_j``:
    ``Mg_j = linear_attention(A, T_j, valid) (+ I)``,
    ``π = softmax_j(gate(a ⊙ t_j))`` with ``a``, ``t_j`` the masked token means.

    Args:
        anchor: ``A``, ``(B, K, d)``.
        targets: the ``T_j``, each ``(B, K, d)``.
        gate: ``Linear_{d→1}``, shared across ``j``.
        valid: ``(B, K)`` bool, True at real tokens; None: every token counts.
        eps: ε of the row ℓ1-norm.

    Returns ``(B, K, d)``.
    """
    a = masked_mean(anchor, valid)
    merged, confidence = [], []
    for target in targets:
        merged.append(linear_attention(anchor, target, valid, eps)[0])
        confidence.append(gate(a * masked_mean(target, valid)))
    pi = torch.softmax(torch.cat(confidence, dim=1), dim=1)                     # (B, N-1)
    return (torch.stack(merged, dim=1) * pi[:, :, None, None]).sum(dim=1)


@MODELS.register_module()
class UniPTModule(nn.Module):
    """UniPT's parallel interaction + confidence aggregation (UniPT paper Sec. 3.2-3.3).

    Args:
        in_channels: widths ``D_j`` of the ``N`` hidden states (anchor last).
        side_width: ``d``.
        out_channels: ``D_out`` of the up-projection.
        eps: ε of the row ℓ1-norm (VSE: 1e-8, MDETR: 1e-7).
        norm_eps: eps of the LayerNorms.
    """

    def __init__(self, in_channels: Sequence[int], side_width: int, out_channels: int, eps: float = 1e-8,
                 norm_eps: float = 1e-5) -> None:
        super().__init__()
        if len(in_channels) < 2:
            raise ValueError(f'UniPT needs at least 2 hidden states (one earlier layer and the anchor), '
                             f'got {len(in_channels)}')
        d = int(side_width)
        self.in_channels, self.side_width, self.out_channels, self.eps = list(in_channels), d, out_channels, eps
        self.downsample_layers = nn.ModuleList(down_projection(w, d, norm_eps) for w in in_channels)
        self.projection_layer = nn.Sequential(nn.Linear(d, d), nn.LayerNorm(d, eps=norm_eps))
        self.upsample_layer = nn.Sequential(nn.ReLU(), nn.Linear(d, out_channels))
        self.gate_layer = nn.Linear(d, 1)

    def fuse(self, feats: Sequence[Tensor], valid: Tensor | None = None) -> Tensor:
        """``A + Proj(Mg)`` at width ``d`` (before the up-projection)."""
        if len(feats) != len(self.downsample_layers):
            raise ValueError(f'UniPT expects {len(self.downsample_layers)} hidden states, got {len(feats)}')
        anchor = self.downsample_layers[-1](feats[-1])
        targets = [down(h) for down, h in zip(self.downsample_layers[:-1], feats[:-1])]
        return anchor + self.projection_layer(merge_by_confidence(anchor, targets, self.gate_layer, valid, self.eps))

    def forward(self, feats: Sequence[Tensor], valid: Tensor | None = None) -> Tensor:
        return self.upsample_layer(self.fuse(feats, valid))


def _context_key(value: Any) -> str | None:
    return None if value is None or isinstance(value, str) else 'must be a context key (a string) or None'


@dataclass(frozen=True, kw_only=True)
class UniPTOptions(LayerSelection, SideWidthOption, NormEvalOption):
    """Options of :class:`UniPT`.

    Attributes:
        side_width: ``d``; or ``reduction``: ``d = D_last // reduction`` (default 2).
        out_channels: ``D_out`` (default: the last layer's width ``D``).
        select_layers: layer indices (and/or ``'input'``) whose outputs are
            the earlier hidden states; default: the input and every layer
            (VSE∞ BERT). The last layer is always the anchor.
        use_input: include the input stage's output (default: True when
            ``select_layers`` is None, else whether it lists ``'input'``).
        eps: ε of the row ℓ1-norm (default 1e-8, VSE∞).
        mask_key: context key of the ``(B, K)`` padding mask (True = pad);
            None: every token counts.
        finalize_output: apply the stack's output stage to the UniPT output
            (default True, so the tuned stack returns what the plain one does,
            e.g. CLIP's projected embedding; VSE∞'s BERT has no output stage).
        norm_eps: eps of the side LayerNorms (default 1e-5).
        norm_eval: see :class:`~sherl_mm.tuners.options.NormEvalOption`.
    """

    out_channels: int | None = option(None, number(1, integer=True))
    eps: float = option(1e-8, number(0))
    mask_key: str | None = option('key_padding_mask', _context_key)
    finalize_output: bool = option(True, flag)
    norm_eps: float = option(1e-5, number(0, low_open=True))


@TUNERS.register_module()
class UniPT(BaseTuner):
    """UniPT on one backbone stack; its output replaces the stack's output.

    Args:
        stack: the backbone stack or its BACKBONES config.
        **options: :class:`UniPTOptions`.

    Returns ``StackOutput(hidden=Up(A + Proj(Mg)), frozen=<last layer output>,
    side=A + Proj(Mg) (width d), intermediates=<frozen layer outputs>)``.
    """

    options_class = UniPTOptions
    options: UniPTOptions

    def __init__(self, stack: BackboneStack | dict, init_cfg: dict | None = None, **options: Any) -> None:
        super().__init__(stack, init_cfg=init_cfg, **options)
        config, stack = self.options, self.stack
        n = stack.num_layers
        if n < 1:
            raise ValueError(f'UniPT: {type(stack).__name__} has no layers')
        input_width, widths = stack_widths(stack, 'UniPT')
        self.use_input, selected = resolve_selection(stack, config.select_layers, config.use_input, n - 1)
        self.selection: list[int | str] = ([INPUT] if self.use_input else []) + [i for i in selected if i < n - 1]
        self.selection.append(n - 1)
        if len(self.selection) < 2:
            raise ValueError(f"UniPT: select at least one earlier layer or 'input' besides the anchor "
                             f'(the last layer); select_layers={config.select_layers}, use_input={config.use_input}')
        in_channels = [input_width if k == INPUT else widths[k] for k in self.selection]
        d = config.side_width_for(widths[-1], 'UniPT')
        self.mask_key, self.finalize_output = config.mask_key, config.finalize_output
        out = check_output_width('UniPT', config.out_channels, widths[-1], config.finalize_output)
        self.unipt = UniPTModule(in_channels, d, out, eps=config.eps, norm_eps=config.norm_eps)
        self.needed = set(self.selection)

    def _valid(self, context: dict, tokens: int) -> Tensor | None:
        mask = context.get(self.mask_key) if self.mask_key else None
        if mask is None or self.stack.layout == 'feature_map':
            return None
        if mask.dim() != 2 or mask.shape[-1] != tokens:
            raise ValueError(f'UniPT: context[{self.mask_key!r}] must be a (B, {tokens}) padding mask (True = pad), '
                             f'got shape {tuple(mask.shape)}')
        return ~mask.bool()

    def forward(self, *inputs: Any, late_context: dict | None = None, return_intermediates: bool = False,
                **kwargs: Any) -> StackOutput:
        stack = self.stack
        saved: dict[int | str, Tensor] = {}
        intermediates = []
        with torch.no_grad():
            hidden, context = stack.embed(*inputs, **kwargs)
            if INPUT in self.needed:
                saved[INPUT] = hidden
            for i in range(stack.num_layers):
                hidden = stack.run_layer(i, hidden, context)
                if i in self.needed:
                    saved[i] = hidden
                if return_intermediates:
                    intermediates.append(hidden)
        feats = [saved[k] for k in self.selection]
        if stack.layout == 'feature_map':
            height, width = hidden.shape[-2:]
            feats = [(f if tuple(f.shape[-2:]) == (height, width) else F.adaptive_avg_pool2d(f, (height, width)))
                     .flatten(2).transpose(1, 2) for f in feats]
            valid = None
        else:
            valid = self._valid(context, hidden.shape[1])
        side = self.unipt.fuse(feats, valid)
        out = self.unipt.upsample_layer(side)
        if stack.layout == 'feature_map':
            out = out.transpose(1, 2).reshape(out.shape[0], -1, height, width)
            side = side.transpose(1, 2).reshape(side.shape[0], -1, height, width)
        if self.finalize_output:
            out = stack.finalize(out, context)
        return StackOutput(hidden=out, frozen=hidden, side=side,
                           intermediates=intermediates if return_intermediates else None)


__all__ = ['UniPT', 'UniPTModule', 'UniPTOptions', 'down_projection', 'linear_attention', 'masked_mean', 'merge_by_confidence']
