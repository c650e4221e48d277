"""SHERL (Diao et al., ECCV 2024): MTSA on the frozen early route, then the
frozen late layer(s) regulated by the MTSA output (Sec. 3.2-3.3).

Route of one forward pass, for the default single insertion point
``p = num_layers - num_late_layers``::

    with torch.no_grad():                                   # no graph, no saved activations
        h, ctx = stack.embed(*inputs)                       # the 'input' set
        for i < p: h = stack.run_layer(i, h, ctx)           # frozen early layers
    x_last = h                                              # output of layer p-1
    z = MTSA([selected early states ..., x_last], x_last)   # Eqs. (1)-(3); the graph starts here
    late_ctx = {**ctx, **late_context}
    for i >= p: z = stack.run_layer(i, z, late_ctx)         # frozen late layers, WITH grad
    return StackOutput(hidden=stack.finalize(z, late_ctx), frozen=x_last, side=MTSA output,
                       aux=[MTSA output])

The authors freeze the early layers with ``requires_grad=False`` only; running
them under ``torch.no_grad()`` gives the same values and gradients, and makes it
explicit that nothing of the early route is kept for backward except the
selected feature sets that MTSA's down-projections save. As in the authors'
code, the frozen layers keep their own dropout in training.

``num_late_layers=0`` is the MDETR encoder case: no layer runs after MTSA, the
stack's output is ``finalize(MTSA output)`` and ``frozen`` the unregulated
final output (MDETR's decoder uses the frozen one for its early layers and the
MTSA one, passed as ``late_context=dict(memory=...)``, for its last layer).

Models pass ``late_context`` to the stack call: a dict merged into the context
of the late layers only (e.g. ``dict(memory=encoder_output.hidden)`` for a
decoder, whose late layer then cross-attends to the encoder's MTSA output).
The MTSA output is also the route's auxiliary head input (``aux``): the
authors' MDETR applies its heads to it besides the final output.

Feature cache (beyond the paper, docs/feature_cache.md): SHERL is cacheable;
a call with per-sample keys reads its early route from disk when every sample
is cached, else computes it with the stack in eval mode and writes it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from sherl_mm.backbones.base import BackboneStack, StackOutput
from sherl_mm.feature_cache import FeatureCacheMixin, TensorDigests
from sherl_mm.registry import TUNERS

from .adapter import AdapterConfig, apply_adapters, layer_adapters
from .base import BaseTuner
from .injection import inject_into_layers
from .layers import INPUT, resolve_selection, stack_widths
from .lora import LoRAConfig, apply_lora
from .mtsa import MTSA, MTSAConfig
from .options import (LayerSelection, NormEvalOption, OptionError, TunerOptions, exclusive, layer_indices, number,
                      one_of, option)

#: values of SHERL's ``output_norm`` option besides None
OUTPUT_NORMS = ('t5', 'layernorm')
#: the PETL methods SHERL's ``late_tuner`` can put inside the late layers
LATE_TUNERS: dict[str, type[TunerOptions]] = {'LoRA': LoRAConfig, 'Adapter': AdapterConfig}


def late_tuner_config(value: Any) -> LoRAConfig | AdapterConfig:
    """The options of ``late_tuner=dict(type='LoRA' | 'Adapter', ...)``."""
    if isinstance(value, (LoRAConfig, AdapterConfig)):
        return value
    if not isinstance(value, Mapping):
        raise OptionError('', f"={value!r}: must be a dict with type='LoRA' or 'Adapter' and its options")
    values = dict(value)
    kind = values.pop('type', None)
    if kind not in LATE_TUNERS:
        raise OptionError('type', f"={kind!r}: must be 'LoRA' or 'Adapter'")
    return LATE_TUNERS[kind].from_mapping(values)


@dataclass(frozen=True, kw_only=True)
class SHERLOptions(LayerSelection, NormEvalOption):
    """Options of :class:`SHERL`.

    Attributes:
        num_late_layers: frozen layers run with grad after MTSA (default 1; 0:
            no late layer, the MDETR encoder case). Must be < ``num_layers``.
        select_layers: layer indices whose outputs MTSA aggregates (and/or
            ``'input'`` for the input stage's output). Default: every early
            layer plus the input (BERT / CLIP-ViL). The output of the layer
            just before the insertion point is always the guidance and
            ``x_last``; it is added when the list lacks it. MDETR: encoder
            ``[0, 1, 3, 5]`` with ``num_late_layers=0``, decoder ``[0, 2, 3, 4]``
            with ``num_late_layers=1``.
        use_input: include the input stage's output (default: True when
            ``select_layers`` is None, else whether it lists ``'input'``).
        insert_layers: the paper's Appendix D multi-point insertion: indices
            ``p`` (1 <= p <= num_layers) of the layers that receive an MTSA
            output instead of their normal input (``p = num_layers``: after the
            last layer). Exclusive with ``num_late_layers``; each point has its
            own MTSA over the selected states before it (states after the
            first point are those of the regulated route) and every layer from
            the first point on runs with grad.
        mtsa: :class:`~sherl_mm.tuners.mtsa.MTSAConfig` (``reduction``, default
            2, or ``side_width``; ``variant``, default ``'mdetr'`` on token
            stacks and ``'cnn'`` on feature maps; ``down``, ``score`` ...).
        late_tuner: a PETL method inside the late layers (paper Fig. 5):
            ``dict(type='LoRA', ...)`` (:class:`~sherl_mm.tuners.lora.LoRAConfig`)
            or ``dict(type='Adapter', ...)``
            (:class:`~sherl_mm.tuners.adapter.AdapterConfig`); without
            ``target_modules`` an Adapter goes after each late layer.
        output_norm: a new trainable norm on the tuned route's output, in
            place of the stack's frozen output stage (the authors' T5 SHERL:
            ``Dropout(final_side_layer_norm(h))``, a new T5LayerNorm
            initialised to 1). ``None`` (default): the stack's own output
            stage. ``'t5'``: T5LayerNorm, i.e. RMS norm with a weight and no
            bias, eps 1e-6 (``D`` parameters). ``'layernorm'``: ``LN_D``, eps
            1e-5 (``2 D``). Needs a token stack whose output stage is a final
            norm (+ dropout), which it replaces (T5 stacks, the DETR decoder),
            or nothing (BERT, the DETR encoder).
        output_dropout: dropout after ``output_norm``, in [0, 1) (T5:
            ``dropout_rate`` 0.1, the default).
        norm_eval: see :class:`~sherl_mm.tuners.options.NormEvalOption`.
    """

    num_late_layers: int | None = option(None, number(0, integer=True))
    insert_layers: list[int] | int | None = option(None, layer_indices)
    mtsa: MTSAConfig | None = option(None, parse=MTSAConfig.from_mapping)
    late_tuner: LoRAConfig | AdapterConfig | None = option(None, parse=late_tuner_config)
    output_norm: str | None = option(None, one_of(*OUTPUT_NORMS))
    output_dropout: float = option(0.1, number(0, 1, high_open=True))

    def check(self) -> None:
        super().check()
        exclusive(self, 'num_late_layers', 'insert_layers')
        if isinstance(self.insert_layers, (list, tuple)) and not self.insert_layers:
            raise OptionError('insert_layers', '=[]: list at least one insertion point')
        if self.late_tuner is not None and self.num_late_layers == 0:
            raise OptionError('late_tuner', ' needs at least one late layer (num_late_layers >= 1)')


@TUNERS.register_module()
class SHERL(FeatureCacheMixin, BaseTuner):
    """SHERL on one backbone stack.

    Args:
        stack: the backbone stack or its BACKBONES config.
        **options: :class:`SHERLOptions` (``num_late_layers``,
            ``select_layers``, ``use_input``, ``insert_layers``, ``mtsa``,
            ``late_tuner``, ``output_norm``, ``output_dropout``, ``norm_eval``).

    Cacheable: a call with sample keys reads / writes the early route (the
    selected states before the first insertion point and the context).
    """

    options_class = SHERLOptions
    options: SHERLOptions
    cached_part = 'SHERL early route'

    def __init__(self, stack: BackboneStack | dict, init_cfg: dict | None = None, **options: Any) -> None:
        super().__init__(stack, init_cfg=init_cfg, **options)
        config, stack = self.options, self.stack
        n = stack.num_layers
        if n < 1:
            raise ValueError(f'SHERL: {type(stack).__name__} has no layers')
        self.points = self._insertion_points(n, config.num_late_layers, config.insert_layers)
        input_width, widths = stack_widths(stack, 'SHERL')
        self.use_input, selected = resolve_selection(stack, config.select_layers, config.use_input, self.points[-1])
        if config.select_layers is not None and selected and selected[-1] >= self.points[-1]:
            raise ValueError(f'SHERL: select_layers {config.select_layers} contains layer {selected[-1]}, which is '
                             f'not before the insertion point {self.points[-1]} (num_layers={n}, '
                             f'late layers start at {self.points[0]}); only earlier layers can be aggregated')
        self.selected = selected

        # one MTSA per insertion point p, over the selected states before it; its guidance is x_last
        mtsa = self._mtsa_config(stack)
        self.selections: list[list[int | str]] = []
        self.mtsa = nn.ModuleList()
        for p in self.points:
            sel: list[int | str] = ([INPUT] if self.use_input else []) + [i for i in selected if i < p - 1]
            sel.append(p - 1)                                   # guidance = x_last = output of layer p-1
            if len(sel) < 2:
                raise ValueError(f'SHERL: the MTSA before layer {p} would see only its guidance (layer {p - 1}); '
                                 f"select at least one earlier layer or 'input' (select_layers={config.select_layers}"
                                 f', use_input={config.use_input})')
            in_channels = [input_width if k == INPUT else widths[k] for k in sel]
            out = widths[p - 1]
            self.selections.append(sel)
            self.mtsa.append(MTSA(in_channels, mtsa.side_width_for(out, 'SHERL', 'mtsa.'), len(sel), out_channels=out,
                                  config=mtsa))
        self.needed = {k for sel in self.selections for k in sel}
        self.late_layers = list(range(self.points[0], n))
        self.late_adapters = nn.ModuleDict()
        self.late_targeted: list[str] = []
        if config.late_tuner is not None:
            self._build_late_tuner(config.late_tuner)
        self.output_norm, self.output_dropout = self._build_output_norm(config.output_norm, config.output_dropout,
                                                                        widths[-1])

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _insertion_points(n: int, num_late_layers: int | None, insert_layers: Sequence[int] | int | None
                          ) -> list[int]:
        if insert_layers is not None:
            points = sorted({int(p) for p in ([insert_layers] if isinstance(insert_layers, int) else insert_layers)})
            bad = [p for p in points if not 1 <= p <= n]
            if bad:
                raise IndexError(f'SHERL: insert_layers {bad} out of range: an insertion point p puts MTSA before '
                                 f'layer p and must satisfy 1 <= p <= num_layers={n} (p={n}: after the last layer)')
            return points
        k = 1 if num_late_layers is None else num_late_layers
        if k >= n:
            raise ValueError(f'SHERL: num_late_layers={k} leaves no early layer for MTSA to aggregate; the stack has '
                             f'{n} layers, so num_late_layers must be < {n}')
        return [n - k]

    def _mtsa_config(self, stack: BackboneStack) -> MTSAConfig:
        """The ``mtsa`` options with the variant for this stack's layout."""
        try:
            mtsa = (self.options.mtsa or MTSAConfig()).resolved(stack.layout)
        except OptionError as err:
            raise err.nested('mtsa').owned_by('SHERL') from None
        if stack.layout == 'feature_map' and mtsa.down != 'cnn':
            raise ValueError(f'SHERL: {type(stack).__name__} yields feature maps (B, C, H, W); use '
                             f"mtsa=dict(variant='cnn') (down='cnn'), not down={mtsa.down!r}")
        if stack.layout != 'feature_map' and mtsa.down == 'cnn':
            raise ValueError(f"SHERL: the CNN variant of MTSA (down='cnn') needs a feature-map stack, but "
                             f'{type(stack).__name__} yields tokens (B, K, D); use variant mdetr, t5, clipvil '
                             f'or vse_bert')
        return mtsa

    def _build_late_tuner(self, config: LoRAConfig | AdapterConfig) -> None:
        """Put the ``late_tuner`` method inside the late layers (paper Fig. 5)."""
        if not self.late_layers:
            raise ValueError('SHERL: late_tuner needs at least one late layer (num_late_layers >= 1)')
        if isinstance(config, AdapterConfig) and config.target_modules is None:
            self.late_adapters = layer_adapters(self.stack, self.late_layers, config, 'SHERL')
            self.late_targeted = [f'layers.{i}' for i in self.late_layers]
            return
        if isinstance(config, LoRAConfig):
            def inject(root: nn.Module, prefix: str) -> list[str]:
                return apply_lora(root, config, prefix, strict=False)
        else:
            def inject(root: nn.Module, prefix: str) -> list[str]:
                return apply_adapters(root, config, prefix=prefix, strict=False)
        self.late_targeted, _ = inject_into_layers(self.stack, self.late_layers, inject, 'late_tuner')
        if not self.late_targeted:
            raise ValueError(f'SHERL: late_tuner {config.kind} with target_modules={config.target_modules!r} '
                             f'matched no module in the late layers {self.late_layers}')

    def _build_output_norm(self, kind: str | None, dropout: float, width: int
                           ) -> tuple[nn.Module | None, nn.Module | None]:
        """``(norm, dropout)`` modules of the ``output_norm`` option, or ``(None, None)``."""
        if kind is None:
            return None, None
        name = type(self.stack).__name__
        if self.stack.layout == 'feature_map':
            raise ValueError(f'SHERL: output_norm={kind!r} normalises tokens (B, K, D), but {name} yields '
                             f'feature maps; use output_norm=None')
        if self.stack.output_stage not in ('identity', 'norm'):
            raise ValueError(f'SHERL: output_norm={kind!r} replaces the output stage of the stack, which for {name} '
                             f'is more than a final norm (output_stage={self.stack.output_stage!r}); use '
                             f'output_norm=None')
        # a new module, initialised as the authors' final_side_layer_norm (weight 1, no bias for T5); it is not
        # under ``stack``, so it trains and save_trainable keeps it
        norm = nn.RMSNorm(width, eps=1e-6) if kind == 't5' else nn.LayerNorm(width, eps=1e-5)
        return norm, nn.Dropout(float(dropout))

    @property
    def makes_aux(self) -> bool:
        return True

    # ------------------------------------------------------------------ feature cache
    def route_fingerprint(self, digests: TensorDigests) -> tuple[dict[str, str], dict]:
        """The frozen tensors the early route reads (the stack without its
        late layers) and the route that decides which states are stored."""
        late = [self.stack.layers[i] for i in self.late_layers]
        route = dict(stack=type(self.stack).__name__, num_layers=self.stack.num_layers, points=self.points,
                     stored=sorted(str(k) for k in self.needed if k == INPUT or k < self.points[0]))
        return digests.of_module(self.stack, exclude=late), route

    # ------------------------------------------------------------------ the route
    def _early_route(self, inputs: tuple, kwargs: dict, return_intermediates: bool
                     ) -> tuple[dict[int | str, Tensor], dict, list[Tensor]]:
        """``(saved states, context, intermediates)`` of the input stage and the
        layers before the first insertion point, without a graph."""
        stack = self.stack
        saved: dict[int | str, Tensor] = {}
        intermediates: list[Tensor] = []
        with torch.no_grad():
            hidden, context = stack.embed(*inputs, **kwargs)
            if INPUT in self.needed:
                saved[INPUT] = hidden
            for i in range(self.points[0]):
                hidden = stack.run_layer(i, hidden, context)
                if i in self.needed:
                    saved[i] = hidden
                if return_intermediates:
                    intermediates.append(hidden)
        return saved, context, intermediates

    def _cached_early_route(self, keys: list[str], inputs: tuple, kwargs: dict
                            ) -> tuple[dict[int | str, Tensor], dict]:
        def compute() -> tuple[dict, dict]:
            saved, context, _ = self._early_route(inputs, kwargs, False)
            return {str(k): v for k, v in saved.items()}, context
        device = next(self.mtsa.parameters()).device
        features, context = self._cached_route(keys, list(inputs) + list(kwargs.values()), compute, self.stack,
                                               device)
        # safetensors keys are strings; layer indices go back to ints
        return {(k if k == INPUT else int(k)): v for k, v in features.items()}, context

    def _output_stage(self, hidden: Tensor, context: dict) -> Tensor:
        """The stack's output stage, or ``Dropout(output_norm(hidden))`` in its place."""
        if self.output_norm is None:
            return self.stack.finalize(hidden, context)
        # the stack's own output stage is nothing or its frozen final norm (+ dropout): replaced, not stacked
        return self.output_dropout(self.output_norm(hidden))

    def forward(self, *inputs: Any, late_context: dict | None = None, return_intermediates: bool = False,
                sample_keys: Sequence[Any] | None = None, **kwargs: Any) -> StackOutput:
        """Run the SHERL route. ``sample_keys`` (one unique key per sample,
        e.g. dataset indices) reads / writes the feature cache; without it
        (and without keys set by the hook) the cache is not used."""
        stack = self.stack
        n = stack.num_layers
        keys = self._cache_keys(sample_keys)
        intermediates: list[Tensor] = []
        if keys is not None:
            if return_intermediates:
                raise ValueError('SHERL: return_intermediates needs every early layer, which the feature cache '
                                 'does not store; call without sample keys to get them')
            saved, context = self._cached_early_route(keys, inputs, kwargs)
        else:
            saved, context, intermediates = self._early_route(inputs, kwargs, return_intermediates)
        hidden = saved[self.points[0] - 1]                      # x_last: the guidance of the first MTSA
        late_ctx = {**context, **late_context} if late_context else context
        frozen = side = hidden
        for k, p in enumerate(self.points):
            side = self.mtsa[k]([saved[key] for key in self.selections[k]], hidden)   # Eqs. (1)-(3)
            hidden = side
            stop = self.points[k + 1] if k + 1 < len(self.points) else n
            for i in range(p, stop):                            # the regulated (late) layers, with grad
                out = stack.run_layer(i, hidden, late_ctx)
                if str(i) in self.late_adapters:
                    out = self.late_adapters[str(i)](out, hidden)
                hidden = out
                if i in self.needed:
                    saved[i] = hidden
                if return_intermediates:
                    intermediates.append(hidden)
        return StackOutput(hidden=self._output_stage(hidden, late_ctx), frozen=frozen, side=side,
                           intermediates=intermediates if return_intermediates else None, aux=[side])


__all__ = ['LATE_TUNERS', 'SHERL', 'SHERLOptions', 'late_tuner_config']
