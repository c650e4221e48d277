"""SHERL (Diao et al., ECCV 2024): MTSA on the frozen early route, then the
frozen late layer(s) regulated by the MTSA output (METHOD.md sections 1-2).

Route of one forward pass, for the default single insertion point
``p = num_layers - num_late_layers``::

    with torch.no_grad():                                   # no graph, no saved activations
        h, ctx = stack.embed(*inputs)                       # the 'input' set
        for i < p: h = stack.run_layer(i, h, ctx)           # frozen early layers
    x_last = h                                              # output of layer p-1
    z = MTSA([selected early states ..., x_last], x_last)   # graph starts here
    late_ctx = {**ctx, **late_context}
    for i >= p: z = stack.run_layer(i, z, late_ctx)         # frozen late layers, WITH grad
    return StackOutput(hidden=stack.finalize(z, late_ctx), frozen=x_last, side=MTSA output)

The authors freeze the early layers with ``requires_grad=False`` only; running
them under ``torch.no_grad()`` gives the same values and gradients, and makes it
explicit that nothing of the early route is kept for backward except the
selected feature sets that MTSA's down-projections save.

``num_late_layers=0`` is the MDETR encoder case: no layer runs after MTSA, the
stack's output is ``finalize(MTSA output)`` and ``frozen`` the unregulated
final output (MDETR's decoder uses the frozen one for its early layers and the
MTSA one, passed as ``late_context=dict(memory=...)``, for its last layer).

Models pass ``late_context`` to the stack call: a dict merged into the context
of the late layers only (e.g. ``dict(memory=encoder_output.hidden)`` for a
decoder, whose late layer then cross-attends to the encoder's MTSA output).

Opt-in early-route feature cache (beyond the paper): after
:meth:`~sherl_mm.tuners.feature_cache.FeatureCacheMixin.enable_feature_cache`
(which :class:`~sherl_mm.hooks.EarlyRouteCacheHook` calls in training), the
early route of a call with per-sample keys is read from disk when every
sample is cached; otherwise it is computed with the stack in eval mode and
written (:mod:`sherl_mm.tuners.feature_cache`).
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from sherl_mm.backbones.base import BackboneStack, StackOutput
from sherl_mm.registry import TUNERS

from ._common import FrozenStackTuner, layer_roots
from .feature_cache import weight_digests
from .mtsa import MTSA, VARIANTS

INPUT = 'input'
#: values of SHERL's ``output_norm`` option besides None
OUTPUT_NORMS = ('t5', 'layernorm')


def _stack_widths(stack: BackboneStack, tuner: str) -> tuple[int, list[int]]:
    try:
        return int(stack.input_width), [int(w) for w in stack.widths]
    except NotImplementedError as err:
        raise ValueError(f'{tuner} needs the widths of {type(stack).__name__} (input_width and widths), which it '
                         f'does not define ({err})') from err


def resolve_selection(stack: BackboneStack, select_layers: Sequence[int | str] | None, use_input: bool | None,
                      limit: int, tuner: str) -> tuple[bool, list[int]]:
    """``(use_input, sorted layer indices)`` from ``select_layers`` / ``use_input``.

    ``select_layers=None`` selects every layer before ``limit`` and, unless
    ``use_input=False``, the input stage's output. In a list, the string
    ``'input'`` selects the input stage's output; integers are layer indices
    (negative ones count from the end, as everywhere in sherl_mm).
    """
    if select_layers is None:
        return (True if use_input is None else bool(use_input)), list(range(limit))
    if isinstance(select_layers, (int, str)):
        select_layers = [select_layers]
    wants_input = False
    indices = set()
    for item in select_layers:
        if isinstance(item, str):
            if item != INPUT:
                raise ValueError(f"{tuner}: select_layers entries are layer indices or 'input', got {item!r}")
            wants_input = True
            continue
        if isinstance(item, bool) or int(item) != item:
            raise TypeError(f"{tuner}: select_layers entries are layer indices or 'input', got {item!r}")
        indices.add(stack.check_layer_index(int(item), 'select_layers'))
    if use_input is not None:
        if wants_input and not use_input:
            raise ValueError(f"{tuner}: select_layers contains 'input' but use_input=False")
        wants_input = bool(use_input)
    return wants_input, sorted(indices)


@TUNERS.register_module()
class SHERL(FrozenStackTuner):
    """SHERL on one backbone stack.

    Args:
        stack: the backbone stack or its BACKBONES config.
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
        mtsa: options of :class:`~sherl_mm.tuners.mtsa.MTSA`: ``reduction``
            (``d = D // reduction``, default 2) or ``side_width`` (``d``), and
            any of ``variant`` (default ``'mdetr'`` on token stacks, ``'cnn'``
            on feature maps), ``down``, ``score``, ``post_mlp``, ``up_norm``,
            ``up_dropout``, ``eps``, ``temperature``, ``alpha_init``, ``init`` ...
        late_tuner: a PETL method inside the late layers (paper Fig. 5):
            ``dict(type='LoRA', rank=..., alpha=..., target_modules=...)`` or
            ``dict(type='Adapter', dim=... | reduction=..., target_modules=...)``;
            without ``target_modules`` an Adapter goes after each late layer.
        output_norm: a new trainable norm on the tuned route's output, in
            place of the stack's frozen output stage (the authors' T5 SHERL,
            METHOD.md §2.5: ``Dropout(final_side_layer_norm(h))``, a new
            T5LayerNorm initialised to 1). ``None`` (default): the stack's own
            output stage. ``'t5'``: T5LayerNorm, i.e. RMS norm with a weight
            and no bias, eps 1e-6 (``D`` parameters). ``'layernorm'``:
            ``LN_D``, eps 1e-5 (``2 D``). Needs a token stack whose output stage
            is a final norm (+ dropout), which it replaces (T5 stacks, the DETR
            decoder), or nothing (BERT, the DETR encoder).
        output_dropout: dropout after ``output_norm`` (T5: ``dropout_rate`` 0.1).
        norm_eval: keep the stack's BatchNorm statistics frozen in training.
    """

    cache_route = 'early'

    def __init__(self, stack: BackboneStack | dict, num_late_layers: int | None = None,
                 select_layers: Sequence[int | str] | None = None, use_input: bool | None = None,
                 insert_layers: Sequence[int] | None = None, mtsa: dict | None = None,
                 late_tuner: dict | None = None, output_norm: str | None = None, output_dropout: float = 0.1,
                 norm_eval: bool = True, init_cfg: dict | None = None) -> None:
        super().__init__(stack, norm_eval=norm_eval, init_cfg=init_cfg)
        stack = self.stack
        n = stack.num_layers
        self.tuner_cfg = dict(type='SHERL', num_late_layers=num_late_layers,
                              select_layers=None if select_layers is None else list(select_layers),
                              use_input=use_input, insert_layers=None if insert_layers is None else list(insert_layers),
                              mtsa=copy.deepcopy(mtsa), late_tuner=copy.deepcopy(late_tuner),
                              output_norm=output_norm, output_dropout=output_dropout)
        if n < 1:
            raise ValueError(f'SHERL: {type(stack).__name__} has no layers')
        self.points = self._insertion_points(n, num_late_layers, insert_layers)
        input_width, widths = _stack_widths(stack, 'SHERL')
        if len(widths) != n:
            raise ValueError(f'SHERL: {type(stack).__name__}.widths lists {len(widths)} widths for {n} layers')
        self.use_input, selected = resolve_selection(stack, select_layers, use_input, self.points[-1], 'SHERL')
        if select_layers is not None and selected and selected[-1] >= self.points[-1]:
            raise ValueError(f'SHERL: select_layers {list(select_layers)} contains layer {selected[-1]}, which is '
                             f'not before the insertion point {self.points[-1]} (num_layers={n}, '
                             f'late layers start at {self.points[0]}); only earlier layers can be aggregated')
        self.selected = selected

        # one MTSA per insertion point
        mtsa_cfg = dict(mtsa or {})
        reduction = mtsa_cfg.pop('reduction', None)
        side_width = mtsa_cfg.pop('side_width', None)
        if reduction is not None and side_width is not None:
            raise ValueError(f'SHERL: give mtsa.reduction or mtsa.side_width, not both '
                             f'(reduction={reduction}, side_width={side_width})')
        for key in ('in_channels', 'num_sets', 'out_channels'):
            if key in mtsa_cfg:
                raise ValueError(f'SHERL: mtsa.{key} is set from the stack (widths {widths}, input width '
                                 f'{input_width}); remove it from the mtsa options')
        variant = mtsa_cfg.setdefault('variant', 'cnn' if stack.layout == 'feature_map' else 'mdetr')
        if variant not in VARIANTS:
            raise ValueError(f'SHERL: mtsa.variant must be one of {sorted(VARIANTS)}, got {variant!r}')
        down = mtsa_cfg.get('down') or VARIANTS[variant]['down']
        if stack.layout == 'feature_map' and down != 'cnn':
            raise ValueError(f'SHERL: {type(stack).__name__} yields feature maps (B, C, H, W); use '
                             f"mtsa=dict(variant='cnn') (down='cnn'), not down={down!r}")
        if stack.layout != 'feature_map' and down == 'cnn':
            raise ValueError(f"SHERL: the CNN variant of MTSA (down='cnn') needs a feature-map stack, but "
                             f'{type(stack).__name__} yields tokens (B, K, D); use variant mdetr, t5, clipvil '
                             f'or vse_bert')
        self.selections: list[list[int | str]] = []
        self.mtsa = nn.ModuleList()
        for p in self.points:
            sel: list[int | str] = ([INPUT] if self.use_input else []) + [i for i in selected if i < p - 1]
            sel.append(p - 1)                                   # guidance = x_last = output of layer p-1
            if len(sel) < 2:
                raise ValueError(f'SHERL: the MTSA before layer {p} would see only its guidance (layer {p - 1}); '
                                 f"select at least one earlier layer or 'input' (select_layers={select_layers}, "
                                 f'use_input={use_input})')
            in_channels = [input_width if k == INPUT else widths[k] for k in sel]
            out = widths[p - 1]
            d = int(side_width) if side_width is not None else max(1, out // (2 if reduction is None else reduction))
            self.selections.append(sel)
            self.mtsa.append(MTSA(in_channels, d, len(sel), out_channels=out, **mtsa_cfg))
        self.needed = {k for sel in self.selections for k in sel}
        self.late_layers = list(range(self.points[0], n))
        self.late_adapters = nn.ModuleDict()
        self.late_targeted: list[str] = []
        if late_tuner is not None:
            self._build_late_tuner(dict(late_tuner))
        self.output_norm, self.output_dropout = self._build_output_norm(output_norm, output_dropout, widths[-1])

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _insertion_points(n: int, num_late_layers: int | None, insert_layers: Sequence[int] | None) -> list[int]:
        if insert_layers is not None:
            if num_late_layers is not None:
                raise ValueError('SHERL: give num_late_layers or insert_layers, not both')
            if isinstance(insert_layers, int):
                insert_layers = [insert_layers]
            points = sorted({int(p) for p in insert_layers})
            if not points:
                raise ValueError('SHERL: insert_layers is empty')
            bad = [p for p in points if not 1 <= p <= n]
            if bad:
                raise IndexError(f'SHERL: insert_layers {bad} out of range: an insertion point p puts MTSA before '
                                 f'layer p and must satisfy 1 <= p <= num_layers={n} (p={n}: after the last layer)')
            return points
        k = 1 if num_late_layers is None else num_late_layers
        if isinstance(k, bool) or int(k) != k or k < 0:
            raise ValueError(f'SHERL: num_late_layers must be a non-negative integer, got {num_late_layers!r}')
        if k >= n:
            raise ValueError(f'SHERL: num_late_layers={k} leaves no early layer for MTSA to aggregate; the stack has '
                             f'{n} layers, so num_late_layers must be < {n}')
        return [n - int(k)]

    def _build_late_tuner(self, cfg: dict) -> None:
        kind = cfg.pop('type', None)
        if not self.late_layers:
            raise ValueError('SHERL: late_tuner needs at least one late layer (num_late_layers >= 1)')
        if 'layers' in cfg:
            raise ValueError('SHERL: late_tuner acts on the late layers only; remove its "layers" option')
        roots = layer_roots(self.stack, self.late_layers, 'late_tuner')
        targets = cfg.pop('target_modules', None)
        if kind == 'LoRA':
            from .lora import inject_lora
            for root, prefix in roots:
                self.late_targeted += inject_lora(root, targets, prefix=prefix, strict=False, **cfg)
        elif kind == 'Adapter':
            from .adapter import BottleneckAdapter, inject_adapters
            if targets is not None:
                for root, prefix in roots:
                    self.late_targeted += inject_adapters(root, targets, prefix=prefix, strict=False, **cfg)
            else:
                dim, reduction = cfg.pop('dim', None), cfg.pop('reduction', None)
                if dim is not None and reduction is not None:
                    raise ValueError('SHERL: late_tuner Adapter takes dim or reduction, not both')
                placement = cfg.pop('placement', 'sequential')
                unknown = set(cfg) - {'scale', 'activation', 'dropout'}
                if unknown:
                    raise ValueError(f'SHERL: unknown late_tuner Adapter options {sorted(unknown)}')
                _, widths = _stack_widths(self.stack, 'SHERL')
                for i in self.late_layers:
                    src = widths[i] if placement == 'sequential' else widths[i - 1]
                    width = int(dim) if dim is not None else max(1, int(widths[i] // (reduction or 16)))
                    self.late_adapters[str(i)] = BottleneckAdapter(src, widths[i], width, placement,
                                                                   layout=self.stack.layout, **cfg)
                    self.late_targeted.append(f'layers.{i}')
        else:
            raise ValueError(f"SHERL: late_tuner type must be 'LoRA' or 'Adapter', got {kind!r}")
        if not self.late_targeted:
            raise ValueError(f'SHERL: late_tuner {kind} with target_modules={targets!r} matched no module in the '
                             f'late layers {self.late_layers}')

    def _build_output_norm(self, kind: str | None, dropout: float, width: int
                           ) -> tuple[nn.Module | None, nn.Module | None]:
        """``(norm, dropout)`` modules of the ``output_norm`` option, or ``(None, None)``."""
        if kind is None:
            return None, None
        if kind not in OUTPUT_NORMS:
            raise ValueError(f'SHERL: output_norm must be None or one of {OUTPUT_NORMS}, got {kind!r}')
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

    def _output_stage(self, hidden: Tensor, context: dict) -> Tensor:
        """The stack's output stage, or ``Dropout(output_norm(hidden))`` in its place."""
        if self.output_norm is None:
            return self.stack.finalize(hidden, context)
        # the stack's own output stage is nothing or its frozen final norm (+ dropout): replaced, not stacked
        return self.output_dropout(self.output_norm(hidden))

    # ------------------------------------------------------------------ feature cache
    def _route_fingerprint(self) -> tuple[dict[str, str], dict]:
        """The frozen tensors the early route reads (the stack without its
        late layers) and the route that decides which states are stored."""
        late = [self.stack.layers[i] for i in self.late_layers]
        route = dict(stack=type(self.stack).__name__, num_layers=self.stack.num_layers, points=self.points,
                     stored=sorted(str(k) for k in self.needed if k == INPUT or k < self.points[0]))
        return weight_digests(self.stack, exclude=late), route

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

    # ------------------------------------------------------------------ forward
    def forward(self, *inputs: Any, late_context: dict | None = None, return_intermediates: bool = False,
                sample_keys: Sequence[Any] | None = None, **kwargs: Any) -> StackOutput:
        """Run the SHERL route. ``sample_keys`` (one unique key per sample,
        e.g. dataset indices) reads / writes the feature cache; without it
        (and without keys set by the hook) the cache is not used."""
        stack = self.stack
        n = stack.num_layers
        first = self.points[0]
        keys = self._cache_keys(sample_keys)
        intermediates: list[Tensor] = []
        if keys is not None:
            if return_intermediates:
                raise ValueError('SHERL: return_intermediates needs every early layer, which the feature cache '
                                 'does not store; call without sample keys to get them')
            saved, context = self._cached_early_route(keys, inputs, kwargs)
        else:
            saved, context, intermediates = self._early_route(inputs, kwargs, return_intermediates)
        hidden = saved[first - 1]                               # x_last: the guidance of the first MTSA
        late_ctx = {**context, **late_context} if late_context else context
        frozen = hidden
        side = hidden
        for k, p in enumerate(self.points):
            feats = [saved[key] for key in self.selections[k]]
            side = self.mtsa[k](feats, hidden)
            hidden = side
            stop = self.points[k + 1] if k + 1 < len(self.points) else n
            for i in range(p, stop):
                out = stack.run_layer(i, hidden, late_ctx)
                if str(i) in self.late_adapters:
                    out = self.late_adapters[str(i)](out, hidden)
                hidden = out
                if i in self.needed:
                    saved[i] = hidden
                if return_intermediates:
                    intermediates.append(hidden)
        return StackOutput(hidden=self._output_stage(hidden, late_ctx), frozen=frozen, side=side,
                           intermediates=intermediates if return_intermediates else None)


__all__ = ['SHERL', 'resolve_selection']
