"""SHERL's Multi-Tiered Sensing Adapter (MTSA): SHERL (Diao et al., ECCV 2024) Sec. 3.2, Eqs. (1)-(3).

::

    out = MTSA(feats, x_last)        # feats: L feature sets, the LAST one is the guidance

1. unshared down-projections ``F_j = φ_j(h_j)`` (one per set, guidance included;
   Eq. (1) in the T5 / CLIP-ViL form, see ``down``);
2. token-wise regrouping: shallow sets ``E (BK, L-1, d)``, guidance ``e (BK, 1, d)``;
3. redundancy, Eq. (2): ``Ê = E / (‖E‖₂ + ε)``, ``r = Σ_j ReLU(Ê Êᵀ)[:, :, j]``
   (diagonal included, among the shallow sets only);
4. score ``s_i = Linear_{d→1}(E_i ⊙ e)`` (``score='learned'``, the authors'
   code) or ``e · E_i`` (``score='dot'``, Eq. (3));
5. ``m_i = [ReLU(s_i)/r_i] / (Σ_j |ReLU(s_j)/r_j| + ε)``;
6. ``a = Σ_i m_i E_i`` (MDETR: ``a ← LN_d(Linear_{D→d}(ReLU(Linear_{d→D}(a))))``, ``post_mlp``);
7. ``e' = a + e``;
8. up-projection ``U`` (``ReLU → Linear_{d→D}`` [→ ``LN_D``] [→ dropout]; CNN:
   ``ReLU(BN_D(Conv1x1_{d→D}))``);
9. ``out = U(e') + tanh(α/T) · x_last`` with ``T = 0.1`` and ``α`` initialised to 0
   (Sec. 3.2: the gate ``u = tanh(α/T)``; the authors' code gates ``x_last``).

Variants (``variant=``, every option can still be set on its own): the forms of
the authors' released applications (docs/tuners.md):

============  ===========  ========  ===========  =============================  =========  ==============
variant       down         post_mlp  up_norm      up_dropout                     eps        init
============  ===========  ========  ===========  =============================  =========  ==============
``mdetr``     linear_ln    True      LN_D 1e-5    0                              1e-6       xavier
``t5``        eq1          False     none         0                              1e-6       normal std .01
``clipvil``   eq1          False     none         0                              1e-6       normal std .02
``vse_bert``  linear_ln    False     LN_D 1e-12   0.1                            1e-8       default
``cnn``       cnn          False     (BN in U)    0                              1e-8       default
============  ===========  ========  ===========  =============================  =========  ==============

``down``:

* ``'linear_ln'``: ``LN_d(Linear_{D_j→d}(h))`` (MDETR, VSE∞ BERT).
* ``'eq1'``: Eq. (1), ``F = ReLU(fc1 h)``, ``F' = σ(fc3 F) ⊙ (fc2 F + F)`` (T5, CLIP-ViL).
* ``'cnn'``: feature maps ``(B, C_j, H_j, W_j)``; ``BN_d(Conv1x1(MaxPool(h) + AvgPool(h)))``
  pooled to the guidance map's size ``(H, W)`` (adaptive pooling; equal to the
  authors' kernel = stride = ``H_j/H`` when it divides, and correct for
  non-square maps, which the authors' flattening assumes square). Tokens are
  the positions in row-major order; the aggregate is rolled back to
  ``(B, d, H, W)`` and ``U = ReLU(BN_D(Conv1x1_{d→D}))``. The side BatchNorms
  train with batch statistics, as in the authors' code.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sherl_mm.registry import MODELS

from .options import OptionError, SideWidthOption, flag, number, one_of, option

DOWNS = ('linear_ln', 'eq1', 'cnn')
SCORES = ('learned', 'dot')
INITS = ('xavier', 'normal', 'default')

#: per-variant defaults of the options left at None (the authors' applications)
VARIANTS: dict[str, dict] = {
    'mdetr': dict(down='linear_ln', post_mlp=True, up_norm=True, up_norm_eps=1e-5, up_dropout=0.0, eps=1e-6,
                  init='xavier', init_std=0.02),
    't5': dict(down='eq1', post_mlp=False, up_norm=False, up_norm_eps=1e-5, up_dropout=0.0, eps=1e-6,
               init='normal', init_std=0.01),
    'clipvil': dict(down='eq1', post_mlp=False, up_norm=False, up_norm_eps=1e-5, up_dropout=0.0, eps=1e-6,
                    init='normal', init_std=0.02),
    'vse_bert': dict(down='linear_ln', post_mlp=False, up_norm=True, up_norm_eps=1e-12, up_dropout=0.1, eps=1e-8,
                     init='default', init_std=0.02),
    'cnn': dict(down='cnn', post_mlp=False, up_norm=False, up_norm_eps=1e-5, up_dropout=0.0, eps=1e-8,
                init='default', init_std=0.02),
}


@dataclass(frozen=True, kw_only=True)
class MTSAConfig(SideWidthOption):
    """MTSA's options (SHERL's ``mtsa=dict(...)``, and :class:`MTSA`'s keywords).

    Attributes:
        reduction: ``d = D // reduction`` (default 2); or ``side_width``: ``d``.
            SHERL's way to choose ``d``; :class:`MTSA` takes ``d`` as an argument.
        variant: ``'mdetr'``, ``'t5'``, ``'clipvil'``, ``'vse_bert'`` or
            ``'cnn'``; fills the options below that are left at None. Default:
            ``'cnn'`` on feature maps (or with ``down='cnn'``), else ``'mdetr'``.
        down: ``'linear_ln'``, ``'eq1'`` or ``'cnn'``.
        score: ``'learned'`` (``Linear_{d→1}(E⊙e)``, the code) or ``'dot'`` (Eq. (3)).
        post_mlp: MDETR's ``d→D→d`` MLP + ``LN_d`` on the aggregate.
        up_norm: ``LN_D`` after the up-projection (``up_norm_eps`` its eps).
        up_dropout: dropout after the up-projection, in [0, 1) (VSE∞ BERT: 0.1).
        eps: ε of the ℓ2- and ℓ1-norms.
        temperature: ``T`` of the gate ``tanh(α/T)`` (default 0.1).
        alpha_init: initial ``α`` (default 0: the late layer sees only ``U(e')``).
        zero_up: zero the last affine layer of ``U`` (the LayerNorm / BatchNorm
            after the up-projection, else the up-projection itself), so that
            ``U(e') = 0`` at initialisation; with a large ``alpha_init``
            (``tanh(α/T) ≈ 1``) the late layer then starts from ``x_last`` and
            the tuned model from the pre-trained one (as LoRA starts with
            ``B = 0``). Beyond the paper, whose gate starts closed; useful when
            the transfer is short. ``U`` still learns: the zeroed layer's
            gradient is not zero. Token variants only.
        init: ``'xavier'`` (xavier-uniform on every tensor with dim > 1, biases
            keep PyTorch's default: MDETR), ``'normal'`` (Linear/Conv weights
            ``N(0, init_std)``, zero biases: T5 / BERT) or ``'default'``.
        init_std: the std of ``init='normal'``.
        norm_eps: eps of the down-projection LayerNorms (default 1e-5).
    """

    derived = dict(in_channels='the stack widths', num_sets='select_layers',
                   out_channels="the stack's width at the insertion point")

    variant: str | None = option(None, one_of(*VARIANTS))
    down: str | None = option(None, one_of(*DOWNS))
    score: str = option('learned', one_of(*SCORES))
    post_mlp: bool | None = option(None, flag)
    up_norm: bool | None = option(None, flag)
    up_norm_eps: float | None = option(None, number(0, low_open=True))
    up_dropout: float | None = option(None, number(0, 1, high_open=True))
    eps: float | None = option(None, number(0))
    temperature: float = option(0.1, number(0, low_open=True))
    alpha_init: float = option(0.0, number())
    zero_up: bool = option(False, flag)
    init: str | None = option(None, one_of(*INITS))
    init_std: float | None = option(None, number(0))
    norm_eps: float = option(1e-5, number(0, low_open=True))

    def resolved(self, layout: str | None = None) -> MTSAConfig:
        """These options with the variant chosen (from ``layout``, the stack's,
        when not given) and every option left at None filled from it."""
        variant = self.variant or ('cnn' if layout == 'feature_map' or self.down == 'cnn' else 'mdetr')
        preset = VARIANTS[variant]
        filled = {key: preset[key] for key in preset if getattr(self, key) is None}
        config = replace(self, variant=variant, **filled)
        if config.down == 'cnn' and config.zero_up:
            raise OptionError('zero_up', '=True is for the token variants; the CNN up-projection ends with '
                                         'ReLU(BN(.)), whose gradient is zero where its output is zero')
        if config.down == 'cnn' and (config.post_mlp or config.up_norm):
            raise OptionError('post_mlp' if config.post_mlp else 'up_norm',
                              "=True is a token-variant option; the CNN up-projection (down='cnn') is "
                              'ReLU(BN(Conv1x1))')
        return config


def l1norm(x: Tensor, dim: int, eps: float) -> Tensor:
    """``x / (Σ|x| + ε)`` along ``dim`` (the authors' ``l1norm``)."""
    return x / (x.abs().sum(dim=dim, keepdim=True) + eps)


def l2norm(x: Tensor, dim: int, eps: float) -> Tensor:
    """``x / (‖x‖₂ + ε)`` along ``dim``: ε is added to the norm, not a clamp."""
    return x / (x.pow(2).sum(dim=dim, keepdim=True).sqrt() + eps)


def redundancy(shallow: Tensor, eps: float) -> Tensor:
    """Eq. (2): ``r_i = Σ_j ReLU(cos(E_i, E_j))`` over the shallow sets,
    diagonal included. ``shallow``: ``(N, L-1, d)``; returns ``(N, L-1, 1)``.

    A set that is exactly zero at a token has ``r = 0`` there, and the authors'
    code then divides 0 by 0 (NaN, or inf for a positive score bias). Such
    entries are set to 1 (the set counts as unique); every other value is the
    authors'."""
    normed = l2norm(shallow, dim=-1, eps=eps)
    sim = torch.bmm(normed, normed.transpose(1, 2))
    r = F.relu(sim).sum(dim=-1, keepdim=True)
    return torch.where(r > 0, r, torch.ones_like(r))


class Eq1Down(nn.Module):
    """Eq. (1): ``F = ReLU(fc1 h)``, ``F' = σ(fc3 F) ⊙ (fc2 F + F)``."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, dim)
        self.fc2 = nn.Linear(dim, dim)   # W'
        self.fc3 = nn.Linear(dim, dim)   # W (the gate)

    def forward(self, h: Tensor) -> Tensor:
        f = F.relu(self.fc1(h))
        return torch.sigmoid(self.fc3(f)) * (self.fc2(f) + f)


class CNNDown(nn.Module):
    """``BN_d(Conv1x1(MaxPool(h) + AvgPool(h)))`` pooled to ``size``."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_dim, dim, 1)
        self.bn = nn.BatchNorm2d(dim)

    def forward(self, h: Tensor, size: tuple[int, int]) -> Tensor:
        if tuple(h.shape[-2:]) != tuple(size):
            h = F.adaptive_max_pool2d(h, size) + F.adaptive_avg_pool2d(h, size)
        else:                                       # kernel 1: max + avg = 2h, as in the code
            h = h + h
        return self.bn(self.conv(h))


@MODELS.register_module()
class MTSA(nn.Module):
    """Multi-Tiered Sensing Adapter.

    Args:
        in_channels: width ``D_j`` of each of the ``num_sets`` feature sets
            (one int for all, or a list, the guidance's last).
        side_width: ``d``.
        num_sets: ``L``, the number of feature sets including the guidance (>= 2).
        out_channels: ``D``, width of ``x_last`` and of the output (default:
            the guidance's width).
        config: the options as an :class:`MTSAConfig` (SHERL passes its
            ``mtsa`` options); or give them as keywords (``variant='t5'`` ...).
    """

    def __init__(self, in_channels: int | Sequence[int], side_width: int, num_sets: int,
                 out_channels: int | None = None, config: MTSAConfig | None = None, **options: Any) -> None:
        super().__init__()
        if config is None:
            config = MTSAConfig.parse(options, 'MTSA')
            if config.reduction is not None:
                raise OptionError('reduction', f'={config.reduction!r}: MTSA takes d as side_width; reduction is '
                                               f"SHERL's mtsa option", 'MTSA')
        elif options:
            raise TypeError(f'MTSA: give the options as config or as keywords, not both (keywords {sorted(options)})')
        config = config.resolved()
        if isinstance(num_sets, bool) or not isinstance(num_sets, int) or num_sets < 2:
            raise ValueError(f'MTSA: num_sets (L, guidance included) must be an integer >= 2, got {num_sets!r}')
        widths = [int(in_channels)] * num_sets if isinstance(in_channels, int) else [int(c) for c in in_channels]
        if len(widths) != num_sets:
            raise ValueError(f'MTSA: in_channels lists {len(widths)} widths but num_sets is {num_sets}')
        if int(side_width) < 1:
            raise ValueError(f'MTSA: side_width must be positive, got {side_width!r}')
        d = int(side_width)
        out = widths[-1] if out_channels is None else int(out_channels)
        self.config = config
        self.in_channels, self.side_width, self.out_channels, self.num_sets = widths, d, out, num_sets
        self.variant, self.down_type, self.score_type = config.variant, config.down, config.score
        self.eps, self.temperature = float(config.eps), float(config.temperature)
        self.layout = 'feature_map' if config.down == 'cnn' else 'tokens'

        # Step 1: unshared down-projections φ_j (Eq. (1) for down='eq1')
        if config.down == 'linear_ln':
            self.downs = nn.ModuleList(nn.Sequential(nn.Linear(w, d), nn.LayerNorm(d, eps=config.norm_eps))
                                       for w in widths)
        elif config.down == 'eq1':
            self.downs = nn.ModuleList(Eq1Down(w, d) for w in widths)
        else:
            self.downs = nn.ModuleList(CNNDown(w, d) for w in widths)
        # Step 4: the score (Eq. (3) for score='dot': no parameter)
        self.fc_attn = nn.Linear(d, 1) if config.score == 'learned' else None
        # Step 6 (MDETR): the MLP on the aggregate
        self.mlp = nn.Sequential(nn.Linear(d, out), nn.ReLU(), nn.Linear(out, d),
                                 nn.LayerNorm(d, eps=config.norm_eps)) if config.post_mlp else None
        # Step 8: the up-projection U
        if config.down == 'cnn':
            self.up = nn.Sequential(nn.Conv2d(d, out, 1), nn.BatchNorm2d(out), nn.ReLU())
        else:
            up: list[nn.Module] = [nn.ReLU(), nn.Linear(d, out)]
            if config.up_norm:
                up.append(nn.LayerNorm(out, eps=config.up_norm_eps))
            if config.up_dropout:
                up.append(nn.Dropout(config.up_dropout))
            self.up = nn.Sequential(*up)
        # Step 9: the gate tanh(α/T)
        self.alpha = nn.Parameter(torch.full((1,), float(config.alpha_init)))
        self.init_weights(config.init, config.init_std)
        if config.zero_up:
            last = [m for m in self.up if isinstance(m, (nn.Linear, nn.Conv2d, nn.LayerNorm, nn.BatchNorm2d))][-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    # ------------------------------------------------------------------ init
    def init_weights(self, init: str = 'xavier', std: float = 0.02) -> None:
        """Initialise as the authors' application does (α keeps its value)."""
        self.init_mode = init
        if init == 'xavier':
            for name, p in self.named_parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
        elif init == 'normal':
            for m in self.modules():
                if isinstance(m, (nn.Linear, nn.Conv2d)):
                    nn.init.normal_(m.weight, 0.0, std)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, side_width={self.side_width}, out_channels={self.out_channels}, '
                f'num_sets={self.num_sets}, variant={self.variant!r}, down={self.down_type!r}, '
                f'score={self.score_type!r}, eps={self.eps}, temperature={self.temperature}')

    # ------------------------------------------------------------------ parts
    @property
    def gate(self) -> Tensor:
        """``tanh(α/T)``, the weight of ``x_last`` in the output."""
        return torch.tanh(self.alpha / self.temperature)

    def project(self, feats: Sequence[Tensor]) -> list[Tensor]:
        """Step 1: ``[φ_j(h_j)]`` as ``(B, K, d)`` tokens (feature maps flattened row-major)."""
        if len(feats) != self.num_sets:
            raise ValueError(f'MTSA expects {self.num_sets} feature sets (the guidance last), got {len(feats)}')
        if self.down_type != 'cnn':
            for j, (h, w) in enumerate(zip(feats, self.in_channels)):
                if h.dim() != 3 or h.shape[-1] != w:
                    raise ValueError(f'MTSA: feature set {j} must be (B, K, {w}), got {tuple(h.shape)}')
            return [down(h) for down, h in zip(self.downs, feats)]
        size = tuple(feats[-1].shape[-2:])
        out = []
        for j, (down, h, w) in enumerate(zip(self.downs, feats, self.in_channels)):
            if h.dim() != 4 or h.shape[1] != w:
                raise ValueError(f'MTSA(down="cnn"): feature set {j} must be (B, {w}, H, W), got {tuple(h.shape)}')
            out.append(down(h, size).flatten(2).transpose(1, 2))
        return out

    def weights(self, shallow: Tensor, guide: Tensor) -> Tensor:
        """Steps 3-5: aggregation weights ``m`` ``(N, L-1, 1)`` from the shallow
        sets ``(N, L-1, d)`` and the guidance ``(N, 1, d)``."""
        r = redundancy(shallow, self.eps)                                   # Eq. (2)
        if self.fc_attn is not None:
            s = self.fc_attn(shallow * guide)
        else:
            s = (shallow * guide).sum(dim=-1, keepdim=True)                 # Eq. (3)
        return l1norm(F.relu(s) / r, dim=1, eps=self.eps)

    def forward(self, feats: Sequence[Tensor], x_last: Tensor) -> Tensor:
        """``feats``: ``L`` tensors ``(B, K, D_j)`` (or maps ``(B, C_j, H_j, W_j)``
        with ``down='cnn'``), the guidance last; ``x_last``: ``(B, K, D)`` (or
        ``(B, D, H, W)``). Returns ``U(e') + tanh(α/T)·x_last``, shaped like ``x_last``."""
        proj = self.project(feats)                                          # step 1 (Eq. (1))
        batch, tokens, d = proj[-1].shape
        for j, p in enumerate(proj[:-1]):
            if p.shape != proj[-1].shape:
                raise ValueError(f'MTSA: feature set {j} has {p.shape[1]} tokens (or batch {p.shape[0]}), the '
                                 f'guidance {tokens} (batch {batch}); the sets must share the token layout')
        shallow = torch.stack(proj[:-1], dim=2).reshape(batch * tokens, self.num_sets - 1, d)   # step 2: E
        guide = proj[-1].reshape(batch * tokens, 1, d)                                          # step 2: e
        m = self.weights(shallow, guide)                                    # steps 3-5
        agg = (m * shallow).sum(dim=1, keepdim=True)                        # step 6: a = Σ m_i E_i
        if self.mlp is not None:
            agg = self.mlp(agg)
        e = (agg + guide).squeeze(1).reshape(batch, tokens, d)              # step 7: e' = a + e
        if self.down_type == 'cnn':
            height, width = feats[-1].shape[-2:]
            e = e.transpose(1, 2).reshape(batch, d, height, width)
        up = self.up(e)                                                     # step 8: U(e')
        if x_last.shape != up.shape:
            raise ValueError(f'MTSA: x_last must have the output shape {tuple(up.shape)}, got {tuple(x_last.shape)}')
        return up + self.gate.to(up.dtype) * x_last                         # step 9


__all__ = ['MTSA', 'MTSAConfig', 'VARIANTS', 'l1norm', 'l2norm', 'redundancy']
