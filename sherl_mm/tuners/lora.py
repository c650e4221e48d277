"""LoRA (Hu et al., ICLR 2022): a trainable low-rank update ``ΔW = B A · α/r``
added to frozen weight matrices.

Supported targets:

* ``nn.Linear``: ``y = W x + b + B(A(dropout(x))) · s``, computed on the
  input side by a forward hook, so the frozen matmul keeps no weight gradient.
* ``nn.Conv2d`` (any kernel, ``groups=1``, zero padding): ``A`` is a conv
  with the target's kernel/stride/padding/dilation into ``r`` channels, ``B`` a
  1x1 conv; ``ΔW[o,i,:,:] = Σ_r B[o,r] A[r,i,:,:] · s``.
* ``nn.MultiheadAttention``, also inside mmcv's ``MultiheadAttention``
  wrapper (its ``.attn``): the module reads its fused ``in_proj_weight``
  (or ``q/k/v_proj_weight``) and ``out_proj.weight`` directly, so an input-side
  hook cannot reach them. The delta is added in weight space instead: a
  forward pre-hook puts ``W + ΔW`` in place of the frozen weight for that call
  and an always-called forward hook puts the frozen weight back. Each of the
  parts ``q``, ``k``, ``v``, ``out`` gets its own rank-``r`` pair, as if the
  projections were separate Linear layers (PEFT instead uses one rank-``r``
  pair over the fused ``3E x E`` matrix). ``dropout`` does not apply here.
  Targeting ``out_proj`` of an ``nn.MultiheadAttention`` means its ``out`` part.

Initialisation: ``A`` Kaiming-uniform (as ``nn.Linear``), ``B`` zeros, so the
tuned network equals the frozen one at initialisation. The frozen parameters
keep their names: the LoRA parameters live in a child ``lora`` of each target
(``layers.0.linear1.lora.lora_A``).

``merge()`` folds ``ΔW`` into the frozen weights (inference without the extra
matmuls), ``unmerge()`` takes it out again, ``merge_and_unload()`` folds and
removes the LoRA modules, leaving the plain stack.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sherl_mm.backbones.base import BackboneStack, StackOutput
from sherl_mm.registry import TUNERS

from .base import BaseTuner
from .injection import InjectedModule, Targets, describe_modules, inject_into_layers, match_modules, remove_hooks
from .options import NormEvalOption, TunerOptions, flag, layer_indices, number, option, targets

MHA_PARTS = ('q', 'k', 'v', 'out')
#: Linear layers that the default targets (``target_modules=None``) adapt: the
#: query and value projections, as in the LoRA paper and PEFT's BERT default,
#: and fused qkv projections (timm / mmpretrain ViT).
DEFAULT_LINEAR_NAMES = ('query', 'value', 'q_proj', 'v_proj', 'q', 'v', 'qkv')
SUPPORTED_TYPES = (nn.Linear, nn.Conv2d, nn.MultiheadAttention)
_DEFAULT_HINT = (f' (the default: nn.MultiheadAttention modules and Linear layers named one of '
                 f'{list(DEFAULT_LINEAR_NAMES)})')


def _mha_parts(value: Any) -> str | None:
    parts = list(value) if isinstance(value, (list, tuple)) else None
    if not parts or not set(parts) <= set(MHA_PARTS):
        return f'must be a non-empty list of {list(MHA_PARTS)}'
    return None


@dataclass(frozen=True, kw_only=True)
class LoRAConfig(TunerOptions):
    """What LoRA injects (the :class:`LoRA` tuner's options, and SHERL's
    ``late_tuner=dict(type='LoRA', ...)``).

    Attributes:
        rank: ``r`` (default 8).
        alpha: ``α``; the update is scaled by ``α/r`` (default 8, PEFT's).
        dropout: dropout on the LoRA branch input (Linear/Conv2d targets), in [0, 1).
        target_modules: regex (full match on names, e.g.
            ``r'layers\\.\\d+\\.self_attn'``), list of names or name suffixes
            (``['query', 'value']``), ``'all-linear'`` (every Linear and
            MultiheadAttention), a predicate ``(name, module) -> bool``, or
            None: query/value projections (see :func:`default_lora_targets`).
        use_rslora: scale by ``α/√r`` instead (rsLoRA).
        mha_parts: which projections of an ``nn.MultiheadAttention`` get LoRA
            (``'q'``, ``'k'``, ``'v'``, ``'out'``); None: ``q`` and ``v`` under
            the default targets, else all four (PEFT adapts in_proj and out_proj).
    """

    kind = 'LoRA'

    rank: int = option(8, number(1, integer=True))
    alpha: float = option(8.0, number())
    dropout: float = option(0.0, number(0, 1, high_open=True))
    target_modules: Targets | None = option(None, targets)
    use_rslora: bool = option(False, flag)
    mha_parts: list[str] | None = option(None, _mha_parts)

    @property
    def scaling(self) -> float:
        """``α/r`` (``α/√r`` with rsLoRA)."""
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)

    def parts(self) -> tuple[str, ...]:
        """The ``nn.MultiheadAttention`` projections to adapt."""
        if self.mha_parts is None:
            return ('q', 'v') if self.target_modules is None else MHA_PARTS
        return tuple(p for p in MHA_PARTS if p in set(self.mha_parts))


@dataclass(frozen=True, kw_only=True)
class LoRAOptions(LoRAConfig, NormEvalOption):
    """Options of the :class:`LoRA` tuner: :class:`LoRAConfig`, and

    Attributes:
        layers: indices of ``stack.layers`` to restrict the search to (None:
            the whole stack, input stage included).
        norm_eval: see :class:`~sherl_mm.tuners.options.NormEvalOption`.
    """

    layers: list[int] | int | None = option(None, layer_indices)


def default_lora_targets(name: str, module: nn.Module) -> bool:
    """The default ``target_modules``: query/value Linear layers, fused qkv
    Linear layers and every ``nn.MultiheadAttention`` (its q and v parts)."""
    if isinstance(module, nn.MultiheadAttention):
        return True
    return isinstance(module, nn.Linear) and name.rsplit('.', 1)[-1] in DEFAULT_LINEAR_NAMES


class _LoRABase(InjectedModule):
    """A LoRA delta ``ΔW = B A · s`` of one target (LoRA Eq. (3): ``h = W₀x + ΔW x``)."""

    def __init__(self, config: LoRAConfig) -> None:
        super().__init__()
        self.rank, self.alpha, self.scaling = config.rank, float(config.alpha), config.scaling
        self.merged = False

    def extra_repr(self) -> str:
        return f'rank={self.rank}, alpha={self.alpha:g}, scaling={self.scaling:g}, merged={self.merged}'


class LoRALinear(_LoRABase):
    """LoRA delta of an ``nn.Linear``, attached as its ``lora`` child."""

    def __init__(self, base: nn.Linear, config: LoRAConfig) -> None:
        super().__init__(config)
        kw = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(self.rank, base.in_features, **kw))
        self.lora_B = nn.Parameter(torch.empty(base.out_features, self.rank, **kw))
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def delta_weight(self) -> Tensor:
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward_hook(self, module: nn.Linear, args: tuple, kwargs: dict, output: Tensor) -> Tensor | None:
        if self.merged:
            return None
        x = args[0] if args else kwargs['input']
        delta = F.linear(F.linear(self.dropout(x.to(self.lora_A.dtype)), self.lora_A), self.lora_B)
        return output + (delta * self.scaling).to(output.dtype)

    def merge(self, module: nn.Linear) -> None:
        if not self.merged:
            with torch.no_grad():
                module.weight.add_(self.delta_weight().to(module.weight.dtype))
            self.merged = True

    def unmerge(self, module: nn.Linear) -> None:
        if self.merged:
            with torch.no_grad():
                module.weight.sub_(self.delta_weight().to(module.weight.dtype))
            self.merged = False


class LoRAConv2d(_LoRABase):
    """LoRA delta of an ``nn.Conv2d``: a ``r``-channel conv with the target's
    geometry followed by a 1x1 conv; attached as the target's ``lora`` child."""

    def __init__(self, base: nn.Conv2d, config: LoRAConfig) -> None:
        if base.groups != 1:
            raise ValueError(f'LoRA supports nn.Conv2d with groups=1 only, got groups={base.groups}')
        if base.padding_mode != 'zeros':
            raise ValueError(f"LoRA supports nn.Conv2d with padding_mode='zeros' only, got {base.padding_mode!r}")
        super().__init__(config)
        kw = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(self.rank, base.in_channels, *base.kernel_size, **kw))
        self.lora_B = nn.Parameter(torch.empty(base.out_channels, self.rank, 1, 1, **kw))
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def delta_weight(self) -> Tensor:
        return torch.einsum('or,rikl->oikl', self.lora_B[:, :, 0, 0], self.lora_A) * self.scaling

    def forward_hook(self, module: nn.Conv2d, args: tuple, kwargs: dict, output: Tensor) -> Tensor | None:
        if self.merged:
            return None
        x = args[0] if args else kwargs['input']
        h = F.conv2d(self.dropout(x.to(self.lora_A.dtype)), self.lora_A, None, module.stride, module.padding,
                     module.dilation)
        return output + (F.conv2d(h, self.lora_B) * self.scaling).to(output.dtype)

    merge = LoRALinear.merge
    unmerge = LoRALinear.unmerge


class LoRAMultiheadAttention(_LoRABase):
    """LoRA deltas of the projections of an ``nn.MultiheadAttention`` (parts
    ``q``, ``k``, ``v``, ``out``), applied in weight space for each call."""

    def __init__(self, base: nn.MultiheadAttention, parts: Iterable[str], config: LoRAConfig) -> None:
        super().__init__(config)
        self.parts = tuple(p for p in MHA_PARTS if p in set(parts))
        self.fused = bool(base._qkv_same_embed_dim)
        embed = base.embed_dim
        in_dims = dict(q=embed, k=base.kdim, v=base.vdim, out=embed)
        ref = base.out_proj.weight
        kw = dict(device=ref.device, dtype=ref.dtype)
        for part in self.parts:
            self.register_parameter(f'lora_A_{part}', nn.Parameter(torch.empty(self.rank, in_dims[part], **kw)))
            self.register_parameter(f'lora_B_{part}', nn.Parameter(torch.empty(embed, self.rank, **kw)))
        self._swapped: list[tuple[nn.Module, str, Tensor]] = []
        self.reset_parameters()

    def extra_repr(self) -> str:
        return f'parts={self.parts}, {super().extra_repr()}'

    def reset_parameters(self) -> None:
        for part in self.parts:
            nn.init.kaiming_uniform_(getattr(self, f'lora_A_{part}'), a=math.sqrt(5))
            nn.init.zeros_(getattr(self, f'lora_B_{part}'))

    def part_delta(self, part: str) -> Tensor:
        return (getattr(self, f'lora_B_{part}') @ getattr(self, f'lora_A_{part}')) * self.scaling

    def deltas(self, module: nn.MultiheadAttention) -> list[tuple[nn.Module, str, Tensor]]:
        """``[(owner, parameter name, ΔW)]`` for the weights this LoRA changes."""
        out = []
        qkv = [p for p in self.parts if p != 'out']
        if qkv and self.fused:
            weight = module._parameters['in_proj_weight']
            blocks = weight.detach().new_zeros(weight.shape).chunk(3)
            delta = torch.cat([self.part_delta(p) if p in qkv else blocks[i] for i, p in enumerate('qkv')])
            out.append((module, 'in_proj_weight', delta))
        elif qkv:
            out.extend((module, f'{p}_proj_weight', self.part_delta(p)) for p in qkv)
        if 'out' in self.parts:
            out.append((module.out_proj, 'weight', self.part_delta('out')))
        return out

    def pre_hook(self, module: nn.MultiheadAttention, args: tuple) -> None:
        if self.merged:
            return
        self.restore_hook(module, args, None)
        for owner, name, delta in self.deltas(module):
            frozen = owner._parameters[name]
            self._swapped.append((owner, name, frozen))
            owner._parameters[name] = frozen + delta.to(frozen.dtype)

    def restore_hook(self, module: nn.MultiheadAttention, args: tuple, output: Any) -> None:
        while self._swapped:
            owner, name, frozen = self._swapped.pop()
            owner._parameters[name] = frozen

    def merge(self, module: nn.MultiheadAttention) -> None:
        if not self.merged:
            with torch.no_grad():
                for owner, name, delta in self.deltas(module):
                    owner._parameters[name].add_(delta.to(owner._parameters[name].dtype))
            self.merged = True

    def unmerge(self, module: nn.MultiheadAttention) -> None:
        if self.merged:
            with torch.no_grad():
                for owner, name, delta in self.deltas(module):
                    owner._parameters[name].sub_(delta.to(owner._parameters[name].dtype))
            self.merged = False


def _all_linear(name: str, module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, nn.MultiheadAttention))


def _resolve(name: str, module: nn.Module, parents: dict[int, nn.Module]) -> tuple[str, nn.Module, str | None]:
    """Map a matched module to ``(kind, target, mha part)``; kind is 'linear',
    'conv', 'mha' or 'unsupported'."""
    parent = parents.get(id(module))
    if isinstance(parent, nn.MultiheadAttention) and module is parent.out_proj:
        return 'mha', parent, 'out'
    if isinstance(module, nn.MultiheadAttention):
        return 'mha', module, None
    if isinstance(module, nn.Linear):
        return 'linear', module, None
    if isinstance(module, nn.Conv2d):
        return 'conv', module, None
    inner = getattr(module, 'attn', None)
    if isinstance(inner, nn.MultiheadAttention):   # mmcv.cnn.bricks.transformer.MultiheadAttention
        return 'mha', inner, None
    return 'unsupported', module, None


def inject_lora(module: nn.Module, targets: Targets | None = None, *, prefix: str = '', strict: bool = True,
                **options: Any) -> list[str]:
    """Add LoRA to the modules of ``module`` that ``targets`` names, in place.

    Args:
        module: where to look (a stack, one layer, any ``nn.Module``).
        targets: ``target_modules`` of :class:`LoRAConfig`.
        prefix: put in front of the module names (``'layers.3'``).
        strict: raise when nothing matches (else return ``[]``).
        **options: the other :class:`LoRAConfig` options (``rank``, ``alpha`` ...).

    Returns the names of the matched modules (see :func:`apply_lora`).
    """
    config = LoRAConfig.parse(dict(options, target_modules=targets), 'LoRA')
    return apply_lora(module, config, prefix=prefix, strict=strict)


def apply_lora(module: nn.Module, config: LoRAConfig, prefix: str = '', strict: bool = True) -> list[str]:
    """Add LoRA as ``config`` says to the modules of ``module`` it targets, in place.

    Returns the names of the matched modules. Newly created parameters require
    grad; the caller freezes the rest. Raises ``ValueError`` when nothing
    matches (with ``strict``), or when a matched module has an unsupported
    type or already has LoRA.
    """
    shown = config.target_modules
    targets = _all_linear if shown == 'all-linear' else shown
    matched = match_modules(module, default_lora_targets if targets is None else targets, prefix)
    if not matched:
        if strict:
            raise ValueError(f'LoRA: target_modules={shown!r}{_DEFAULT_HINT if shown is None else ""} matched no '
                             f'module in {type(module).__name__}{" at " + prefix if prefix else ""}; '
                             f'{describe_modules(module, prefix, SUPPORTED_TYPES)}')
        return []
    parents = {id(child): m for m in module.modules() for child in m.children()}
    linear, mha = [], {}
    for name, mod in matched:
        kind, target, part = _resolve(name, mod, parents)
        if kind == 'unsupported':
            raise ValueError(f'LoRA: target_modules={shown!r} matched {name!r} of type {type(mod).__name__}, '
                             f'which LoRA does not support; supported: nn.Linear, nn.Conv2d, nn.MultiheadAttention '
                             f'(also mmcv MultiheadAttention). Name the projections inside it instead')
        if getattr(target, 'lora', None) is not None:
            raise ValueError(f'LoRA: {name!r} already has LoRA (inject_lora applied twice?)')
        if kind == 'mha':
            entry = mha.setdefault(id(target), [target, set()])
            entry[1].update([part] if part else config.parts())
        else:
            linear.append((kind, target))
    if config.dropout and mha:
        warnings.warn('LoRA dropout is not applied to nn.MultiheadAttention targets (their delta is added to the '
                      'fused weight)', stacklevel=2)
    for kind, target in linear:
        cls = LoRALinear if kind == 'linear' else LoRAConv2d
        target.lora = cls(target, config)
        target.lora.hook_ids.append(target.register_forward_hook(target.lora.forward_hook, with_kwargs=True).id)
    for target, parts in mha.values():
        target.lora = LoRAMultiheadAttention(target, parts, config)
        target.lora.hook_ids.append(target.register_forward_pre_hook(target.lora.pre_hook).id)
        target.lora.hook_ids.append(target.register_forward_hook(target.lora.restore_hook, always_call=True).id)
    return [name for name, _ in matched]


def lora_modules(module: nn.Module) -> list[tuple[nn.Module, _LoRABase]]:
    """``[(target, its LoRA)]`` for every LoRA injected under ``module``."""
    return [(m, m.lora) for m in module.modules() if isinstance(getattr(m, 'lora', None), _LoRABase)]


def merge_lora(module: nn.Module) -> None:
    """Fold every LoRA delta under ``module`` into its frozen weight."""
    for target, lora in lora_modules(module):
        lora.merge(target)


def unmerge_lora(module: nn.Module) -> None:
    """Undo :func:`merge_lora`."""
    for target, lora in lora_modules(module):
        lora.unmerge(target)


def remove_lora(module: nn.Module, merge: bool = True) -> None:
    """Take every LoRA out of ``module``: fold its delta in first when
    ``merge`` (PEFT's ``merge_and_unload``), else drop it (``unload``)."""
    for target, lora in lora_modules(module):
        if merge:
            lora.merge(target)
        else:
            lora.unmerge(target)
        remove_hooks(target, lora)
        del target.lora


@TUNERS.register_module()
class LoRA(BaseTuner):
    """LoRA on the frozen stack: only the low-rank factors train.

    Args:
        stack: the backbone stack or its BACKBONES config.
        **options: :class:`LoRAOptions` (``rank``, ``alpha``, ``dropout``,
            ``target_modules``, ``layers``, ``use_rslora``, ``mha_parts``,
            ``norm_eval``).
    """

    options_class = LoRAOptions
    options: LoRAOptions

    def __init__(self, stack: BackboneStack | dict, init_cfg: dict | None = None, **options: Any) -> None:
        super().__init__(stack, init_cfg=init_cfg, **options)
        config = self.options
        self.targeted, roots = inject_into_layers(
            self.stack, config.layers, lambda root, prefix: apply_lora(root, config, prefix, strict=False))
        if not self.targeted:
            shown = config.target_modules
            where = 'the stack' if config.layers is None else f'layers {config.layers}'
            root, prefix = roots[0]
            raise ValueError(f'LoRA: target_modules={shown!r}{_DEFAULT_HINT if shown is None else ""} matched no '
                             f'module in {where} of {type(self.stack).__name__}; '
                             f'{describe_modules(root, prefix, SUPPORTED_TYPES)}')

    def forward(self, *inputs: Any, late_context: dict | None = None, return_intermediates: bool = False,
                **kwargs: Any) -> StackOutput:
        """The stack's plain route; the LoRA deltas act through their hooks."""
        return self.stack(*inputs, return_intermediates=return_intermediates, **kwargs)

    def merge(self) -> None:
        """Fold ``ΔW`` into the frozen weights (exact up to rounding)."""
        merge_lora(self.stack)

    def unmerge(self) -> None:
        """Take ``ΔW`` out of the frozen weights again."""
        unmerge_lora(self.stack)

    def merge_and_unload(self) -> BackboneStack:
        """Merge, remove the LoRA modules and hooks, and return the plain stack."""
        remove_lora(self.stack, merge=True)
        return self.stack


__all__ = ['LoRA', 'LoRAConfig', 'LoRAConv2d', 'LoRALinear', 'LoRAMultiheadAttention', 'LoRAOptions', 'apply_lora',
           'default_lora_targets', 'inject_lora', 'lora_modules', 'merge_lora', 'remove_lora', 'unmerge_lora']
