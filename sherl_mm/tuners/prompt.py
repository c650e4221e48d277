"""Prompt tuning (Lester et al. 2021; VPT, Jia et al. 2022): learnable tokens
prepended to the token sequence of a frozen stack.

* ``mode='input'`` (shallow / VPT-shallow): ``num_tokens`` prompts are
  prepended after the input stage and run through every layer.
* ``mode='deep'`` (VPT-deep): each listed layer gets its own prompts; they
  enter before the first listed layer and replace the prompt positions'
  hidden states before each further listed layer.

The prompts sit at positions ``0 .. P-1`` and are stripped before the output
stage, so the stack's output (and every intermediate) has its original
length. The layers see a context extended for the extra tokens by
:func:`prepend_tokens`; override :meth:`PromptTuning.prepend_tokens` /
:meth:`PromptTuning.strip_tokens` for stacks whose context it cannot extend.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from sherl_mm.backbones.base import BackboneStack, StackOutput
from sherl_mm.registry import TUNERS

from .base import BaseTuner
from .options import NormEvalOption, OptionError, layer_indices, number, one_of, option

MODES = ('input', 'deep')
POLICIES = ('zeros', 'ones', 'keep')
#: How :func:`prepend_tokens` extends context entries by default. ``'zeros'``
#: pads the new token positions with zeros / False (``key_padding_mask``:
#: True = padding, so prompts are never padding; positional embeddings:
#: prompts get none, as MDETR's text tokens); ``'ones'`` with ones / True;
#: ``'keep'`` leaves the entry alone (it is not per query token).
DEFAULT_POLICIES = dict(key_padding_mask='zeros', padding_mask='zeros', pos='zeros', query_pos='zeros',
                        pos_embed='zeros', token_type_ids='zeros')
#: Context keys that are never per query token (cross-attention memory ...).
_NOT_PER_TOKEN_PREFIXES = ('memory', 'encoder_', 'cross_')


def _pad(value: Tensor, num: int, fill: str) -> Tensor:
    shape = list(value.shape)
    shape[1] = num
    pad = value.new_zeros(shape) if fill == 'zeros' else value.new_ones(shape)
    return torch.cat([pad.expand(value.shape[0], *shape[1:]), value], dim=1)


def extend_attention_mask(mask: Tensor | None, batch: int, length: int, num: int) -> Tensor | None:
    """Extend a Hugging Face style attention mask for ``num`` tokens prepended
    to a sequence of ``length``.

    * 2-D ``(B, K)``: 1 / True = attend; the new tokens get 1 / True.
    * 4-D ``(B|1, H|1, Q, K)`` with ``Q`` in ``{1, K}``: additive floats (0 =
      attend, very negative = masked) or booleans with SDPA's meaning (True =
      attend). Every query may attend to the new keys; the new query rows
      attend to the new keys and to every key some old query may attend to.
    """
    if mask is None:
        return None
    is_bool = mask.dtype == torch.bool
    if mask.dim() == 2:
        if mask.shape[1] != length:
            raise ValueError(f'prompt tuning: context["attention_mask"] has shape {tuple(mask.shape)}, expected '
                             f'(B, {length})')
        return _pad(mask, num, 'ones')
    if mask.dim() != 4 or mask.shape[-1] != length or mask.shape[-2] not in (1, length):
        raise ValueError(f'prompt tuning cannot extend context["attention_mask"] of shape {tuple(mask.shape)} '
                         f'for {num} prepended tokens (expected 2-D (B, {length}) or 4-D (B, H, 1|{length}, '
                         f'{length})); override PromptTuning.prepend_tokens for this stack')
    if is_bool:
        allowed = mask
        keep, block = True, False
    else:
        block = torch.finfo(mask.dtype).min
        allowed = mask > block / 2
        keep = 0.0
    new_cols = mask.new_full((*mask.shape[:-1], num), keep)
    out = torch.cat([new_cols, mask], dim=-1)
    if mask.shape[-2] == 1:
        return out
    key_allowed = allowed.any(dim=-2, keepdim=True)                                   # (B, H, 1, K)
    rows_old = torch.where(key_allowed, mask.new_full((), keep), mask.new_full((), block))
    rows = torch.cat([mask.new_full((*mask.shape[:-2], 1, num), keep), rows_old], dim=-1)
    return torch.cat([rows.expand(*mask.shape[:-2], num, num + length), out], dim=-2)


def prepend_tokens(stack: BackboneStack, hidden: Tensor, context: Mapping[str, Any], prompts: Tensor,
                   policies: Mapping[str, str] | None = None) -> tuple[Tensor, dict]:
    """Prepend ``prompts`` ``(B, P, D)`` to ``hidden`` ``(B, K, D)`` and
    return ``(hidden', context')`` with the per-token context entries extended.

    ``context['attention_mask']`` is extended by :func:`extend_attention_mask`;
    other entries follow ``policies`` (key → ``'zeros'``, ``'ones'``,
    ``'keep'``), then the stack's ``prompt_context_policies``, then
    :data:`DEFAULT_POLICIES`. A tensor entry that looks per
    token (``(B, K, ...)``) with no policy raises a ``ValueError`` naming it, and
    so does a feature-map stack. The input ``context`` is not modified.
    """
    if stack.layout != 'tokens':
        raise ValueError(f'PromptTuning needs a token stack; {type(stack).__name__} has layout={stack.layout!r} '
                         f'(feature maps have no token sequence to prepend prompts to)')
    if hidden.dim() != 3:
        raise ValueError(f'PromptTuning expects hidden states (B, K, D), got {tuple(hidden.shape)}')
    batch, length, _ = hidden.shape
    num = prompts.shape[1]
    rules = {**DEFAULT_POLICIES, **stack.prompt_context_policies, **dict(policies or {})}
    new = dict(context)
    for key, value in context.items():
        rule = rules.get(key)
        if rule is not None and rule not in POLICIES:
            raise ValueError(f'prepend_tokens: policy for context key {key!r} must be one of {POLICIES}, '
                             f'got {rule!r}')
        if rule == 'keep' or value is None:
            continue
        if key == 'attention_mask' and rule is None:
            new[key] = extend_attention_mask(value, batch, length, num)
        elif rule is not None:
            if not isinstance(value, Tensor) or value.dim() < 2 or value.shape[1] != length:
                raise ValueError(f'PromptTuning: context[{key!r}] should be a (B, {length}, ...) tensor to pad, '
                                 f'got {type(value).__name__} {tuple(getattr(value, "shape", ()))}')
            new[key] = _pad(value, num, rule)
        elif not key.startswith(_NOT_PER_TOKEN_PREFIXES) and _looks_per_token(value, batch, length):
            raise ValueError(f'PromptTuning cannot extend context[{key!r}] for {num} prompt tokens: it looks per '
                             f'token ({_shape(value)} with K={length}); give context_policies={{{key!r}: '
                             f"'zeros' | 'ones' | 'keep'}} or override PromptTuning.prepend_tokens")
    return torch.cat([prompts.to(hidden.dtype), hidden], dim=1), new


def _looks_per_token(value: Any, batch: int, length: int) -> bool:
    if isinstance(value, (tuple, list)):
        return any(_looks_per_token(v, batch, length) for v in value)
    if not isinstance(value, Tensor) or value.dim() < 2:
        return False
    return (value.shape[0] in (1, batch) and value.shape[1] == length) or \
        (value.dim() >= 3 and value.shape[-1] == length)


def _shape(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return '(' + ', '.join(_shape(v) for v in value) + ')'
    return str(tuple(value.shape)) if isinstance(value, Tensor) else type(value).__name__


def strip_tokens(hidden: Tensor, num: int) -> Tensor:
    """Drop the ``num`` prepended tokens of ``(B, P + K, D)``."""
    return hidden[:, num:]


def _policies(value: Any) -> str | None:
    if isinstance(value, Mapping) and all(p in POLICIES for p in value.values()):
        return None
    return f'must be a dict of context key -> one of {list(POLICIES)}'


@dataclass(frozen=True, kw_only=True)
class PromptTuningOptions(NormEvalOption):
    """Options of :class:`PromptTuning`.

    Attributes:
        num_tokens: ``P`` prompts per layer (default 10).
        mode: ``'input'`` (shallow) or ``'deep'`` (VPT-deep).
        layers: ``'deep'`` only: the layers that get fresh prompts (default
            all); the prompts enter before the first one.
        init_std: prompts start as ``N(0, init_std²)`` (default 0.02).
        dropout: dropout on the prompts, in [0, 1) (VPT uses 0.1; default 0).
        dim: prompt width when the stack does not define ``input_width``.
        context_policies: how to extend context entries the default rules do
            not know (see :func:`prepend_tokens`).
        norm_eval: see :class:`~sherl_mm.tuners.options.NormEvalOption`.
    """

    num_tokens: int = option(10, number(1, integer=True))
    mode: str = option('input', one_of(*MODES))
    layers: list[int] | int | None = option(None, layer_indices)
    init_std: float = option(0.02, number(0))
    dropout: float = option(0.0, number(0, 1, high_open=True))
    dim: int | None = option(None, number(1, integer=True))
    context_policies: dict[str, str] | None = option(None, _policies)

    def check(self) -> None:
        super().check()
        if self.mode == 'input' and self.layers is not None:
            raise OptionError('layers', f"={self.layers!r}: only applies to mode='deep' (mode='input' prompts enter "
                                        f'before layer 0)')


@TUNERS.register_module()
class PromptTuning(BaseTuner):
    """Learnable prompt tokens for a frozen token stack.

    Args:
        stack: the backbone stack (``layout='tokens'``) or its config.
        **options: :class:`PromptTuningOptions`.
    """

    options_class = PromptTuningOptions
    options: PromptTuningOptions

    def __init__(self, stack: BackboneStack | dict, init_cfg: dict | None = None, **options: Any) -> None:
        super().__init__(stack, init_cfg=init_cfg, **options)
        stack, config = self.stack, self.options
        if stack.layout != 'tokens':
            raise ValueError(f'PromptTuning needs a token stack; {type(stack).__name__} has '
                             f'layout={stack.layout!r} (prompt tokens cannot be prepended to feature maps). '
                             f'Use LoRA, Adapter or BitFit for this stack')
        layers = [config.layers] if isinstance(config.layers, int) else config.layers
        self.layer_ids = [0] if config.mode == 'input' else (
            list(range(stack.num_layers)) if layers is None else
            sorted({stack.check_layer_index(i, 'layers') for i in layers}))
        if not self.layer_ids:
            raise ValueError('PromptTuning: layers is empty')
        self.num_tokens, self.mode = config.num_tokens, config.mode
        self.dim = config.dim if config.dim is not None else self._stack_width()
        self.context_policies = dict(config.context_policies or {})
        ref = next(stack.parameters(), None)
        self.prompts = nn.Parameter(torch.empty(len(self.layer_ids), self.num_tokens, self.dim,
                                                device=None if ref is None else ref.device,
                                                dtype=None if ref is None else ref.dtype))
        self.prompt_dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.reset_parameters()

    def _stack_width(self) -> int:
        stack = self.stack
        try:
            widths = [stack.input_width] + list(stack.widths)
        except NotImplementedError as err:
            raise ValueError(f'PromptTuning: {type(stack).__name__} does not define its widths; pass dim=') from err
        used = {widths[i] for i in self.layer_ids}
        if len(used) != 1 or len(set(widths[self.layer_ids[0]:])) != 1:
            raise ValueError(f'PromptTuning needs a constant token width from the first prompted layer on; '
                             f'{type(stack).__name__} has input/layer widths {widths}')
        return used.pop()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.prompts, std=self.options.init_std)

    def prompt_tokens(self, slot: int, batch: int) -> Tensor:
        """The prompts of ``self.layer_ids[slot]`` for a batch, ``(B, P, D)``."""
        return self.prompt_dropout(self.prompts[slot]).unsqueeze(0).expand(batch, -1, -1)

    def prepend_tokens(self, hidden: Tensor, context: dict, prompts: Tensor) -> tuple[Tensor, dict]:
        """Overridable: prepend ``prompts`` and return the extended context."""
        return prepend_tokens(self.stack, hidden, context, prompts, self.context_policies)

    def replace_tokens(self, hidden: Tensor, prompts: Tensor) -> Tensor:
        """Overridable: put fresh ``prompts`` at the prompt positions (deep mode)."""
        return torch.cat([prompts.to(hidden.dtype), hidden[:, self.num_tokens:]], dim=1)

    def strip_tokens(self, hidden: Tensor, context: dict) -> Tensor:
        """Overridable: drop the prompt positions before the output stage."""
        return strip_tokens(hidden, self.num_tokens)

    def forward(self, *inputs: Any, late_context: dict | None = None, return_intermediates: bool = False,
                **kwargs: Any) -> StackOutput:
        stack = self.stack
        hidden, context = stack.embed(*inputs, **kwargs)
        layer_context = context
        slots = {layer: slot for slot, layer in enumerate(self.layer_ids)}
        first = self.layer_ids[0]
        length = None
        intermediates = []
        for index in range(stack.num_layers):
            if index == first:
                length = hidden.shape[1]
                prompts = self.prompt_tokens(0, hidden.shape[0])
                hidden, layer_context = self.prepend_tokens(hidden, context, prompts)
            elif index in slots:
                hidden = self.replace_tokens(hidden, self.prompt_tokens(slots[index], hidden.shape[0]))
            hidden = stack.run_layer(index, hidden, layer_context)
            if length is not None and hidden.shape[1] != length + self.num_tokens:
                raise ValueError(f'PromptTuning: layer {index} of {type(stack).__name__} changed the number of '
                                 f'tokens ({length + self.num_tokens} -> {hidden.shape[1]}); prompts need a stack '
                                 f'that keeps the sequence length')
            if return_intermediates:
                intermediates.append(hidden if length is None else self.strip_tokens(hidden, layer_context))
        if length is not None:
            hidden = self.strip_tokens(hidden, layer_context)
        return StackOutput(hidden=stack.finalize(hidden, context),
                           intermediates=intermediates if return_intermediates else None)


__all__ = ['DEFAULT_POLICIES', 'PromptTuning', 'PromptTuningOptions', 'extend_attention_mask', 'prepend_tokens', 'strip_tokens']
