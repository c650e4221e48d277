"""Bottleneck adapters: ``up(act(down(x)))`` added to a frozen module's output.

Placements:

* ``'sequential'`` (Houlsby et al. 2019 / Pfeiffer et al. 2021): after the
  target, ``y' = y + s · up(act(down(y)))``.
* ``'parallel'`` (He et al., ICLR 2022): around the target,
  ``y' = y + s · up(act(down(x)))`` with ``x`` the target's input. He et al.
  scale the parallel branch by ``s = 4``; the default here is ``s = 1``.

The up-projection (weight and bias) starts at zero, so the tuned network equals
the frozen one at initialisation. On token tensors ``(..., D)`` the
projections are Linear maps of the last dimension; on feature maps
``(B, C, H, W)`` they are 1x1 convolutions (a parallel adapter around a
strided target uses a strided 1x1 down-projection).

Targets: with ``target_modules`` the adapter is attached as the target's
``adapter`` child and acts through a forward hook (tuple outputs such as
``nn.MultiheadAttention``'s ``(out, weights)`` get the adapter on their first
element). Without it, the :class:`Adapter` tuner puts one adapter after each
layer of the stack, on the route itself (``run_layer``'s output).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sherl_mm.backbones.base import BackboneStack, StackOutput
from sherl_mm.registry import TUNERS

from .base import BaseTuner
from .injection import InjectedModule, Targets, describe_modules, inject_into_layers, match_modules, remove_hooks
from .layers import stack_widths
from .options import (NormEvalOption, TunerOptions, bottleneck_width, exclusive, layer_indices, number, one_of,
                      option, targets)

PLACEMENTS = ('sequential', 'parallel')
LAYOUTS = ('tokens', 'feature_map')
ACTIVATIONS = dict(relu=F.relu, gelu=F.gelu, silu=F.silu, tanh=torch.tanh, identity=lambda x: x)
_INPUT_KEYS = ('query', 'hidden_states', 'x', 'input', 'src', 'tgt', 'inputs_embeds')


@dataclass(frozen=True, kw_only=True)
class AdapterConfig(TunerOptions):
    """What an adapter is (the :class:`Adapter` tuner's options, and SHERL's
    ``late_tuner=dict(type='Adapter', ...)``).

    Attributes:
        dim: bottleneck width; or ``reduction``: width = the adapted output's
            width // reduction (default reduction 16 when neither is given).
        placement: ``'sequential'`` (after the target) or ``'parallel'``
            (around it, fed with its input).
        scale: ``s`` in ``y + s · adapter(·)`` (default 1).
        activation: inside the bottleneck: one of ``relu``, ``gelu``, ``silu``,
            ``tanh``, ``identity``.
        dropout: after the activation, in [0, 1).
        target_modules: modules to adapt (regex / names / suffixes /
            predicate, as for LoRA). None: one adapter after every layer of
            the stack, on the route itself (``run_layer``'s output).
    """

    kind = 'Adapter'

    dim: int | None = option(None, number(1, integer=True))
    reduction: float | None = option(None, number(0, low_open=True))
    placement: str = option('sequential', one_of(*PLACEMENTS))
    scale: float = option(1.0, number())
    activation: str = option('relu', one_of(*ACTIVATIONS))
    dropout: float = option(0.0, number(0, 1, high_open=True))
    target_modules: Targets | None = option(None, targets)

    def check(self) -> None:
        super().check()
        exclusive(self, 'dim', 'reduction')

    def width(self, out_width: int, owner: str) -> int:
        """The bottleneck width for an adapted output of ``out_width`` channels."""
        return bottleneck_width(out_width, self.dim, self.reduction, 16, owner)


@dataclass(frozen=True, kw_only=True)
class AdapterOptions(AdapterConfig, NormEvalOption):
    """Options of the :class:`Adapter` tuner: :class:`AdapterConfig`, and

    Attributes:
        layers: indices of ``stack.layers`` to restrict to (None: all).
        norm_eval: see :class:`~sherl_mm.tuners.options.NormEvalOption`.
    """

    layers: list[int] | int | None = option(None, layer_indices)


class BottleneckAdapter(InjectedModule):
    """``out + scale · up(act(down(src)))`` with ``src`` the output
    (sequential) or the input (parallel) of what it adapts.

    Args:
        in_dim: width of ``src``; out_dim: width of the output it is added to.
        dim: bottleneck width.
        config: placement, scale, activation and dropout.
        layout: ``'tokens'`` (width is the last dim) or ``'feature_map'``
            (width is dim 1 of a 4-D map; 1x1 convs).
    """

    def __init__(self, in_dim: int, out_dim: int, dim: int, config: AdapterConfig, layout: str = 'tokens',
                 device: Any = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f'Adapter: layout must be one of {LAYOUTS}, got {layout!r}')
        if config.placement == 'sequential' and in_dim != out_dim:
            raise ValueError(f'Adapter: a sequential adapter maps the output to itself, got in_dim={in_dim} '
                             f'!= out_dim={out_dim}')
        self.in_dim, self.out_dim, self.dim = int(in_dim), int(out_dim), int(dim)
        self.placement, self.scale, self.activation = config.placement, float(config.scale), config.activation
        self.layout = layout
        kw = dict(device=device, dtype=dtype)
        self.down_weight = nn.Parameter(torch.empty(self.dim, self.in_dim, **kw))
        self.down_bias = nn.Parameter(torch.empty(self.dim, **kw))
        self.up_weight = nn.Parameter(torch.empty(self.out_dim, self.dim, **kw))
        self.up_bias = nn.Parameter(torch.empty(self.out_dim, **kw))
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.down_weight, a=math.sqrt(5))
        nn.init.zeros_(self.down_bias)
        nn.init.zeros_(self.up_weight)
        nn.init.zeros_(self.up_bias)

    def extra_repr(self) -> str:
        return (f'{self.in_dim} -> {self.dim} -> {self.out_dim}, placement={self.placement}, scale={self.scale:g}, '
                f'activation={self.activation}, layout={self.layout}')

    def bottleneck(self, src: Tensor, out: Tensor) -> Tensor:
        """``up(act(down(src)))`` shaped like ``out``."""
        act = ACTIVATIONS[self.activation]
        x = src.to(self.down_weight.dtype)
        if self.layout == 'tokens':
            if src.shape[-1] != self.in_dim:
                raise ValueError(f'Adapter expects token tensors (..., {self.in_dim}), got {tuple(src.shape)}')
            h = self.dropout(act(F.linear(x, self.down_weight, self.down_bias)))
            return F.linear(h, self.up_weight, self.up_bias).to(out.dtype)
        if src.dim() != 4 or src.shape[1] != self.in_dim or out.dim() != 4:
            raise ValueError(f'Adapter expects feature maps (B, {self.in_dim}, H, W) in and a 4-D map out, got '
                             f'{tuple(src.shape)} -> {tuple(out.shape)}')
        stride = 1
        if src.shape[-2:] != out.shape[-2:]:
            stride = max(1, -(-src.shape[-2] // out.shape[-2]))
            # a 1x1 conv with stride s maps H to ceil(H / s)
            if -(-src.shape[-2] // stride) != out.shape[-2] or -(-src.shape[-1] // stride) != out.shape[-1]:
                raise ValueError(f'Adapter(placement=parallel): the target maps {tuple(src.shape[-2:])} to '
                                 f'{tuple(out.shape[-2:])}, which a strided 1x1 projection cannot follow')
        h = F.conv2d(x, self.down_weight[:, :, None, None], self.down_bias, stride=stride)
        h = self.dropout(act(h))
        return F.conv2d(h, self.up_weight[:, :, None, None], self.up_bias).to(out.dtype)

    def forward(self, out: Tensor, inp: Tensor | None = None) -> Tensor:
        """Adapt ``out`` (the adapted module's output) given its input ``inp``."""
        if self.placement == 'parallel':
            if inp is None:
                raise ValueError('Adapter(placement=parallel) needs the input of the adapted module')
            return out + self.scale * self.bottleneck(inp, out)
        return out + self.scale * self.bottleneck(out, out)

    def forward_hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        first = output[0] if isinstance(output, tuple) else output
        if not isinstance(first, Tensor):
            raise TypeError(f'Adapter: the adapted {type(module).__name__} returned {type(first).__name__}; '
                            f'adapters need a tensor (or a tuple whose first element is one)')
        inp = _module_input(module, args, kwargs) if self.placement == 'parallel' else None
        adapted = self(first, inp)
        return (adapted,) + tuple(output[1:]) if isinstance(output, tuple) else adapted


def _module_input(module: nn.Module, args: tuple, kwargs: dict) -> Tensor:
    if args and isinstance(args[0], Tensor):
        return args[0]
    for key in _INPUT_KEYS:
        if isinstance(kwargs.get(key), Tensor):
            return kwargs[key]
    raise ValueError(f'Adapter(placement=parallel): cannot tell the input tensor of {type(module).__name__} '
                     f'(not the first positional argument, nor one of {_INPUT_KEYS})')


def infer_widths(module: nn.Module) -> tuple[int, int, str] | None:
    """``(input width, output width, layout)`` of a module, or None if unknown."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features, 'tokens'
    if isinstance(module, nn.Conv2d):
        return module.in_channels, module.out_channels, 'feature_map'
    if isinstance(module, nn.MultiheadAttention):
        return module.embed_dim, module.embed_dim, 'tokens'
    if isinstance(getattr(module, 'attn', None), nn.MultiheadAttention):
        return module.attn.embed_dim, module.attn.embed_dim, 'tokens'
    if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) >= 1:
        return module.normalized_shape[-1], module.normalized_shape[-1], 'tokens'
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.num_features, module.num_features, 'feature_map'
    for attr in ('embed_dims', 'embed_dim', 'hidden_size', 'd_model'):
        if isinstance(getattr(module, attr, None), int):
            return getattr(module, attr), getattr(module, attr), 'tokens'
    weighted = [m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.MultiheadAttention))]
    if weighted:
        first, last = infer_widths(weighted[0]), infer_widths(weighted[-1])
        return first[0], last[1], last[2]
    return None


def inject_adapters(module: nn.Module, targets: Targets, *, layout: str | None = None, in_dim: int | None = None,
                    out_dim: int | None = None, prefix: str = '', strict: bool = True, **options: Any) -> list[str]:
    """Attach a :class:`BottleneckAdapter` to every module of ``module`` that
    ``targets`` names, in place (as its ``adapter`` child, through a forward hook).

    Args:
        module: where to look (a stack, one layer, any ``nn.Module``).
        targets: ``target_modules`` of :class:`AdapterConfig`.
        layout, in_dim, out_dim, prefix, strict: see :func:`apply_adapters`.
        **options: the other :class:`AdapterConfig` options (``dim``, ``placement`` ...).

    Returns the names of the adapted modules.
    """
    config = AdapterConfig.parse(dict(options, target_modules=targets), 'Adapter')
    return apply_adapters(module, config, layout=layout, in_dim=in_dim, out_dim=out_dim, prefix=prefix,
                          strict=strict)


def apply_adapters(module: nn.Module, config: AdapterConfig, *, layout: str | None = None,
                   in_dim: int | None = None, out_dim: int | None = None, prefix: str = '',
                   strict: bool = True) -> list[str]:
    """Attach the adapters ``config`` describes to the modules of ``module``
    that its ``target_modules`` names, in place.

    Args:
        module: where to look.
        config: the adapters' options (``target_modules`` must be set).
        layout: ``'tokens'`` / ``'feature_map'``; None infers it per target
            (Conv2d / BatchNorm / conv blocks: feature map, else tokens).
        in_dim, out_dim: the target's input/output widths when they cannot be
            inferred (Linear, Conv2d, MultiheadAttention, LayerNorm, BatchNorm,
            modules with ``embed_dims``/``hidden_size``, or blocks of those are).
        prefix: put in front of the module names; strict: raise on no match.

    Returns the names of the adapted modules.
    """
    matched = match_modules(module, config.target_modules, prefix)
    if not matched:
        if strict:
            raise ValueError(f'Adapter: target_modules={config.target_modules!r} matched no module in '
                             f'{type(module).__name__}{" at " + prefix if prefix else ""}; '
                             f'{describe_modules(module, prefix)}')
        return []
    plans = []
    for name, target in matched:
        if getattr(target, 'adapter', None) is not None:
            raise ValueError(f'Adapter: {name!r} already has an adapter (inject_adapters applied twice?) or an '
                             f'attribute named "adapter"')
        inferred = infer_widths(target)
        if inferred is None and (in_dim is None or out_dim is None):
            raise ValueError(f'Adapter: cannot infer the input/output width of {name!r} ({type(target).__name__}); '
                             f'pass in_dim and out_dim')
        i_dim = in_dim if in_dim is not None else inferred[0]
        o_dim = out_dim if out_dim is not None else inferred[1]
        lay = layout or (inferred[2] if inferred else 'tokens')
        src_dim = o_dim if config.placement == 'sequential' else i_dim
        plans.append((target, src_dim, o_dim, config.width(o_dim, 'Adapter'), lay, next(target.parameters(), None)))
    for target, src_dim, o_dim, width, lay, ref in plans:
        target.adapter = BottleneckAdapter(src_dim, o_dim, width, config, lay, **_placement(ref))
        target.adapter.hook_ids.append(
            target.register_forward_hook(target.adapter.forward_hook, with_kwargs=True).id)
    return [name for name, _ in matched]


def _placement(ref: Tensor | None) -> dict:
    """``device`` / ``dtype`` for new parameters next to the tensor ``ref``."""
    if ref is None:
        return {}
    return dict(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)


def layer_adapters(stack: BackboneStack, indices: Sequence[int], config: AdapterConfig, owner: str) -> nn.ModuleDict:
    """One adapter after each listed layer of ``stack``, on the route itself:
    ``{str(i): adapter}``, applied as ``adapter(run_layer output, layer input)``.
    A sequential adapter maps layer ``i``'s output to itself; a parallel one
    reads the layer's input (the previous layer's output, or the input
    stage's for layer 0)."""
    input_width, widths = stack_widths(stack, f'{owner}(Adapter without target_modules)')
    in_widths = [input_width] + widths[:-1]
    ref = next(stack.parameters(), None)
    adapters = nn.ModuleDict()
    for i in indices:
        src = widths[i] if config.placement == 'sequential' else in_widths[i]
        adapters[str(i)] = BottleneckAdapter(src, widths[i], config.width(widths[i], owner), config, stack.layout,
                                             **_placement(ref))
    return adapters


def adapter_modules(module: nn.Module) -> list[tuple[nn.Module, BottleneckAdapter]]:
    """``[(target, its adapter)]`` for every adapter injected under ``module``."""
    return [(m, m.adapter) for m in module.modules() if isinstance(getattr(m, 'adapter', None), BottleneckAdapter)]


def remove_adapters(module: nn.Module) -> None:
    """Take every injected adapter (and its hook) out of ``module``."""
    for target, adapter in adapter_modules(module):
        remove_hooks(target, adapter)
        del target.adapter


@TUNERS.register_module()
class Adapter(BaseTuner):
    """Bottleneck adapters on the frozen stack; only the adapters train.

    Args:
        stack: the backbone stack or its BACKBONES config.
        **options: :class:`AdapterOptions` (``dim`` or ``reduction``,
            ``placement``, ``target_modules``, ``layers``, ``scale``,
            ``activation``, ``dropout``, ``norm_eval``).
    """

    options_class = AdapterOptions
    options: AdapterOptions

    def __init__(self, stack: BackboneStack | dict, init_cfg: dict | None = None, **options: Any) -> None:
        super().__init__(stack, init_cfg=init_cfg, **options)
        config, stack = self.options, self.stack
        self.layer_adapters = nn.ModuleDict()
        if config.target_modules is None:
            layers = [config.layers] if isinstance(config.layers, int) else config.layers
            indices = range(stack.num_layers) if layers is None else \
                sorted({stack.check_layer_index(i, 'layers') for i in layers})
            self.layer_adapters = layer_adapters(stack, indices, config, 'Adapter')
            self.targeted = [f'layers.{i}' for i in indices]
            return
        self.targeted, roots = inject_into_layers(
            stack, config.layers, lambda root, prefix: apply_adapters(root, config, prefix=prefix, strict=False))
        if not self.targeted:
            where = 'the stack' if config.layers is None else f'layers {config.layers}'
            root, prefix = roots[0]
            raise ValueError(f'Adapter: target_modules={config.target_modules!r} matched no module in {where} of '
                             f'{type(stack).__name__}; {describe_modules(root, prefix)}')

    def forward(self, *inputs: Any, late_context: dict | None = None, return_intermediates: bool = False,
                **kwargs: Any) -> StackOutput:
        """The stack's route with an adapter after each adapted layer (or the
        plain route, the injected adapters acting through their hooks)."""
        stack = self.stack
        if not len(self.layer_adapters):
            return stack(*inputs, return_intermediates=return_intermediates, **kwargs)
        hidden, context = stack.embed(*inputs, **kwargs)
        intermediates = []
        for index in range(stack.num_layers):
            out = stack.run_layer(index, hidden, context)
            adapter = self.layer_adapters[str(index)] if str(index) in self.layer_adapters else None
            hidden = out if adapter is None else adapter(out, hidden)
            intermediates.append(hidden)
        return StackOutput(hidden=stack.finalize(hidden, context),
                           intermediates=intermediates if return_intermediates else None)


__all__ = ['Adapter', 'AdapterConfig', 'AdapterOptions', 'BottleneckAdapter', 'adapter_modules', 'apply_adapters',
           'infer_widths', 'inject_adapters', 'layer_adapters', 'remove_adapters']
