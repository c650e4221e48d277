"""Hugging Face text encoders (BERT/RoBERTa-like, T5 encoder and decoder) as stacks.

Needs transformers 5.x: layer masks are built by the model's own helpers
(``model._create_attention_masks`` for BERT-like models, the
``create_bidirectional_mask``/``create_causal_mask`` functions T5Stack calls),
never by hand, so the plain route equals the model's own forward exactly.
Nothing is downloaded: ``pretrained`` and ``tokenizer`` are local directories.
"""
from __future__ import annotations

import inspect
import os
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from sherl_mm.registry import BACKBONES

from ._common import PretrainedStack, check_dir

_MODEL_FILES = 'the model files (config.json and model.safetensors or pytorch_model.bin, e.g. from ' \
               '`huggingface-cli download <name> --local-dir <dir>` on a machine with network access)'
_TOKENIZER_FILES = 'the tokenizer files (tokenizer.json / tokenizer_config.json / vocab files)'
_TOKENIZER_NAMES = ('tokenizer.json', 'tokenizer_config.json', 'vocab.txt', 'vocab.json', 'spiece.model')


class _TokenizerMixin:
    """``self.tokenizer`` and :meth:`encode_texts` for the text stacks."""

    tokenizer: Any = None

    def _build_tokenizer(self, tokenizer: str | os.PathLike | None, pretrained: str | None) -> None:
        owner = type(self).__name__
        path = None
        if tokenizer is not None:
            path = check_dir(tokenizer, 'tokenizer', owner, _TOKENIZER_FILES)
        elif pretrained is not None and any(os.path.isfile(os.path.join(pretrained, n)) for n in _TOKENIZER_NAMES):
            path = pretrained
        if path is None:
            self.tokenizer = None
            return
        from transformers import AutoTokenizer
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)

    def encode_texts(self, texts: Sequence[str], max_length: int | None = None,
                     device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
        """Tokenise ``texts`` with ``self.tokenizer`` (padding to the longest).

        Returns ``(input_ids, attention_mask)``, both ``(B, T)`` long, on
        ``device`` (default: the stack's device).
        """
        if self.tokenizer is None:
            raise RuntimeError(f'{type(self).__name__}: no tokenizer; pass tokenizer=<local dir> (or a pretrained '
                               f'dir that holds the tokenizer files)')
        if isinstance(texts, str):
            texts = [texts]
        limit = max_length or getattr(self, '_max_positions', None)
        model_max = getattr(self.tokenizer, 'model_max_length', None)
        if isinstance(model_max, int) and model_max < 1_000_000:
            limit = min(limit, model_max) if limit else model_max
        enc = self.tokenizer(list(texts), padding='longest', truncation=limit is not None, max_length=limit,
                             return_tensors='pt')
        if device is None:
            device = next(self.parameters()).device  # type: ignore[attr-defined]
        return enc['input_ids'].to(device), enc['attention_mask'].to(device)


def _pretrained_kwargs(attn_implementation: str | None) -> dict:
    return {} if attn_implementation is None else dict(attn_implementation=attn_implementation)


def _call_supported(fn, **kwargs: Any) -> Any:
    """Call a transformers helper with the keyword arguments its signature
    takes: transformers 5.24 renamed ``past_key_values`` to ``cache``, and we
    pass both (as ``None``) so that either release works."""
    params = inspect.signature(fn).parameters
    return fn(**{k: v for k, v in kwargs.items() if k in params})


def _key_padding_mask(attention_mask: Tensor | None, batch: int, length: int, device) -> Tensor:
    if attention_mask is None:
        return torch.zeros(batch, length, dtype=torch.bool, device=device)
    if attention_mask.dim() != 2:
        raise ValueError(f'attention_mask must be (B, T) with 1 = token, 0 = padding; got shape '
                         f'{tuple(attention_mask.shape)}')
    return attention_mask == 0


@BACKBONES.register_module()
class HFEncoderStack(_TokenizerMixin, PretrainedStack):
    """A BERT-like Hugging Face encoder (BERT, RoBERTa, XLM-R, ELECTRA ...).

    Exactly one of ``pretrained``, ``config`` and ``model`` gives the network.

    Args:
        pretrained: local directory for ``AutoModel.from_pretrained``.
        config: kwargs of a config built from scratch with random weights,
            e.g. ``dict(model_type='bert', hidden_size=32,
            num_hidden_layers=4, num_attention_heads=4,
            intermediate_size=64, vocab_size=1000)``.
        model: an already built model (``BertModel``, ``RobertaModel`` ...;
            a model with a task head is reduced to its ``base_model``).
        tokenizer: local tokenizer directory; defaults to ``pretrained``
            when that holds tokenizer files. Exposed as ``self.tokenizer``.
        attn_implementation: ``'sdpa'`` (transformers' default) or
            ``'eager'``.

    Route: :meth:`embed` ``(input_ids, attention_mask)`` runs the model's
    embeddings and mask helper; layers are ``model.encoder.layer``;
    :meth:`finalize` is the identity, so ``hidden`` is the model's
    ``last_hidden_state`` ``(B, T, D)``. The pooler is not built.

    Context: ``attention_mask`` (the per-layer mask the model's own
    ``_create_attention_masks`` built; ``None`` when nothing is masked under
    SDPA), ``key_padding_mask`` ``(B, T)`` bool, True at padding, and
    ``position_ids`` (as given, usually ``None``).
    """

    def __init__(self, pretrained: str | os.PathLike | None = None, config: dict | None = None,
                 model: nn.Module | None = None, tokenizer: str | os.PathLike | None = None,
                 attn_implementation: str | None = None, init_cfg: dict | None = None) -> None:
        super().__init__(init_cfg=init_cfg)
        owner = type(self).__name__
        if sum(x is not None for x in (pretrained, config, model)) != 1:
            raise ValueError(f'{owner}: give exactly one of pretrained (a local dir), config (a dict) and model')
        from transformers import AutoConfig, AutoModel
        if pretrained is not None:
            pretrained = check_dir(pretrained, 'pretrained', owner, _MODEL_FILES)
            kwargs = _pretrained_kwargs(attn_implementation)
            try:
                model = AutoModel.from_pretrained(pretrained, local_files_only=True, add_pooling_layer=False,
                                                  **kwargs)
            except TypeError:  # a model class without a pooler option
                model = AutoModel.from_pretrained(pretrained, local_files_only=True, **kwargs)
        elif config is not None:
            cfg = dict(config)
            if 'model_type' not in cfg:
                raise ValueError(f"{owner}: config needs a model_type, e.g. dict(model_type='bert', ...)")
            hf_config = AutoConfig.for_model(cfg.pop('model_type'), **cfg)
            kwargs = _pretrained_kwargs(attn_implementation)
            try:
                model = AutoModel.from_config(hf_config, add_pooling_layer=False, **kwargs)
            except TypeError:
                model = AutoModel.from_config(hf_config, **kwargs)
        if not hasattr(model, 'embeddings') and hasattr(getattr(model, 'base_model', None), 'embeddings'):
            model = model.base_model  # e.g. BertForMaskedLM -> BertModel; task heads are dropped
        if not (hasattr(model, 'embeddings') and isinstance(getattr(getattr(model, 'encoder', None), 'layer', None),
                                                            nn.ModuleList)):
            raise TypeError(f'{owner}: {type(model).__name__} is not a BERT-like encoder (model.embeddings and '
                            f'model.encoder.layer); wrap it with ModuleListStack instead')
        self.model = model
        self._max_positions = getattr(model.config, 'max_position_embeddings', None)
        self._build_tokenizer(tokenizer, pretrained)

    @property
    def layers(self) -> nn.ModuleList:  # type: ignore[override]
        return self.model.encoder.layer

    @layers.setter
    def layers(self, value: nn.ModuleList) -> None:
        self.model.encoder.layer = value

    @property
    def config(self):
        return self.model.config

    @property
    def input_width(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def widths(self) -> list[int]:
        return [int(self.model.config.hidden_size)] * self.num_layers

    def embed(self, input_ids: Tensor | Sequence[str] | None = None, attention_mask: Tensor | None = None,
              token_type_ids: Tensor | None = None, position_ids: Tensor | None = None,
              inputs_embeds: Tensor | None = None) -> tuple[Tensor, dict]:
        """Embeddings and layer masks, as ``model.forward`` builds them.

        ``input_ids`` may also be a list of strings, tokenised with
        :meth:`encode_texts` (then ``attention_mask`` must be ``None``).
        """
        if isinstance(input_ids, (list, tuple)) and input_ids and isinstance(input_ids[0], str):
            if attention_mask is not None:
                raise ValueError('pass either texts or (input_ids, attention_mask), not both')
            input_ids, attention_mask = self.encode_texts(input_ids)
        model = self.model
        hidden = model.embeddings(input_ids=input_ids, position_ids=position_ids, token_type_ids=token_type_ids,
                                  inputs_embeds=inputs_embeds)
        if hasattr(model, 'embeddings_project'):  # ELECTRA
            hidden = model.embeddings_project(hidden)
        layer_mask = self._layer_mask(attention_mask, hidden)
        batch, length = hidden.shape[:2]
        context = dict(attention_mask=layer_mask,
                       key_padding_mask=_key_padding_mask(attention_mask, batch, length, hidden.device),
                       position_ids=position_ids)
        return hidden, context

    def _layer_mask(self, attention_mask: Tensor | None, hidden: Tensor):
        model = self.model
        if hasattr(model, '_create_attention_masks'):
            mask = _call_supported(model._create_attention_masks, attention_mask=attention_mask,
                                   encoder_attention_mask=None, embedding_output=hidden,
                                   encoder_hidden_states=None, past_key_values=None, cache=None)
            return mask[0] if isinstance(mask, tuple) else mask
        from transformers.masking_utils import create_bidirectional_mask
        return create_bidirectional_mask(config=model.config, inputs_embeds=hidden, attention_mask=attention_mask)

    def run_layer(self, index: int, hidden: Tensor, context: dict) -> Tensor:
        kwargs = {}
        if context.get('position_ids') is not None:
            kwargs['position_ids'] = context['position_ids']
        out = self.layers[index](hidden, context.get('attention_mask'), **kwargs)
        return out[0] if isinstance(out, tuple) else out


def _t5_classes():
    from transformers import T5Config
    from transformers.models.t5.modeling_t5 import T5Stack
    return T5Config, T5Stack


class _T5StackBase(_TokenizerMixin, PretrainedStack):
    """Shared by the T5 encoder and decoder stacks (``self.t5`` is a T5Stack)."""

    _side = 'encoder'
    # The relative position bias is rebuilt when the token count changes.
    prompt_context_policies = {'position_bias': 'keep'}

    def _build(self, pretrained, config, model, tokenizer, attn_implementation) -> None:
        owner = type(self).__name__
        if sum(x is not None for x in (pretrained, config, model)) != 1:
            raise ValueError(f'{owner}: give exactly one of pretrained (a local dir), config (a dict) and model')
        T5Config, T5Stack = _t5_classes()
        kwargs = _pretrained_kwargs(attn_implementation)
        if pretrained is not None:
            pretrained = check_dir(pretrained, 'pretrained', owner, _MODEL_FILES)
            if self._side == 'encoder':
                from transformers import T5EncoderModel
                model = T5EncoderModel.from_pretrained(pretrained, local_files_only=True, **kwargs)
            else:
                from transformers import T5Model
                model = T5Model.from_pretrained(pretrained, local_files_only=True, **kwargs)
        elif config is not None:
            cfg = dict(config)
            cfg.pop('model_type', None)
            t5_config = T5Config(**cfg, **kwargs)
            t5_config.is_encoder_decoder = False
            t5_config.use_cache = False
            if self._side == 'decoder':
                t5_config.is_decoder = True
                t5_config.num_layers = t5_config.num_decoder_layers
            else:
                t5_config.is_decoder = False
            model = T5Stack(t5_config)
        if not isinstance(model, T5Stack):
            part = getattr(model, self._side, None)
            if not isinstance(part, T5Stack):
                kinds = 'T5Model, T5ForConditionalGeneration' + (', T5EncoderModel' if self._side == 'encoder' else '')
                raise TypeError(f'{owner}: model must be a T5Stack or a T5 model with a .{self._side} ({kinds}), '
                                f'got {type(model).__name__}')
            model = part
        if bool(model.is_decoder) != (self._side == 'decoder'):
            raise ValueError(f'{owner}: the given T5Stack is {"a decoder" if model.is_decoder else "an encoder"}')
        self.t5 = model
        self._build_tokenizer(tokenizer, pretrained)

    @property
    def layers(self) -> nn.ModuleList:  # type: ignore[override]
        return self.t5.block

    @layers.setter
    def layers(self, value: nn.ModuleList) -> None:
        self.t5.block = value

    @property
    def config(self):
        return self.t5.config

    @property
    def input_width(self) -> int:
        return int(self.t5.config.d_model)

    @property
    def widths(self) -> list[int]:
        return [int(self.t5.config.d_model)] * self.num_layers

    def _embed_tokens(self, input_ids, inputs_embeds):
        if isinstance(input_ids, (list, tuple)) and input_ids and isinstance(input_ids[0], str):
            raise TypeError('T5 stacks take token ids; tokenise texts with encode_texts() first')
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError('give exactly one of input_ids and inputs_embeds')
        return self.t5.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds

    def _position_bias(self, inputs_embeds: Tensor) -> Tensor:
        # Block 0 owns the relative attention bias and hands the bias it
        # computes to the later blocks; compute it once here.
        length = inputs_embeds.shape[1]
        return self.t5.block[0].layer[0].SelfAttention.compute_bias(length, length, device=inputs_embeds.device)

    def _layer_position_bias(self, hidden: Tensor, context: dict) -> Tensor:
        bias = context['position_bias']
        if bias.shape[-1] != hidden.shape[1]:  # a route changed the token count (e.g. prompts)
            bias = self._position_bias(hidden)
        return bias

    def finalize(self, hidden: Tensor, context: dict) -> Tensor:
        return self.t5.dropout(self.t5.final_layer_norm(hidden))

    #: finalize is final_layer_norm + dropout only (see BackboneStack.output_stage)
    output_stage = 'norm'


@BACKBONES.register_module()
class HFT5EncoderStack(_T5StackBase):
    """The encoder of a Hugging Face T5.

    Args: as :class:`HFT5DecoderStack` (``model`` may also be a
    ``T5EncoderModel``; ``pretrained`` loads ``T5EncoderModel``).

    Route: :meth:`embed` ``(input_ids, attention_mask)`` = token embedding +
    dropout; layers = ``encoder.block``; :meth:`finalize` =
    ``final_layer_norm`` + dropout, so ``hidden`` equals
    ``T5EncoderModel(...).last_hidden_state`` ``(B, T, D)``.

    Context: ``attention_mask`` (built by ``create_bidirectional_mask`` as
    T5Stack does), ``position_bias`` (block 0's relative bias ``(1, H, T,
    T)``, shared by all blocks; recomputed for the hidden length when a
    route changed the token count), ``key_padding_mask`` ``(B, T)`` bool,
    True at padding.
    """

    _side = 'encoder'

    def __init__(self, pretrained: str | os.PathLike | None = None, config: dict | None = None,
                 model: nn.Module | None = None, tokenizer: str | os.PathLike | None = None,
                 attn_implementation: str | None = None, init_cfg: dict | None = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self._build(pretrained, config, model, tokenizer, attn_implementation)

    def embed(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
              inputs_embeds: Tensor | None = None) -> tuple[Tensor, dict]:
        from transformers.masking_utils import create_bidirectional_mask
        inputs_embeds = self._embed_tokens(input_ids, inputs_embeds)
        mask = create_bidirectional_mask(config=self.t5.config, inputs_embeds=inputs_embeds,
                                         attention_mask=attention_mask)
        batch, length = inputs_embeds.shape[:2]
        context = dict(attention_mask=mask, position_bias=self._position_bias(inputs_embeds),
                       key_padding_mask=_key_padding_mask(attention_mask, batch, length, inputs_embeds.device))
        return self.t5.dropout(inputs_embeds), context

    def run_layer(self, index: int, hidden: Tensor, context: dict) -> Tensor:
        return self.layers[index](hidden, context.get('attention_mask'), self._layer_position_bias(hidden, context))[0]


@BACKBONES.register_module()
class HFT5DecoderStack(_T5StackBase):
    """The decoder of a Hugging Face T5, with a swappable cross-attention memory.

    Exactly one of ``pretrained``, ``config`` and ``model`` gives the network.

    Args:
        pretrained: local directory of a T5 checkpoint (``T5Model``).
        config: ``T5Config`` kwargs for random weights, e.g. ``dict(d_model=32,
            d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
            num_heads=4, vocab_size=100)``.
        model: a ``T5Stack`` decoder or a T5 model holding ``.decoder``
            (pass the same ``T5Model`` to the encoder stack to share it).
        tokenizer: local tokenizer directory (``self.tokenizer``).
        attn_implementation: ``'sdpa'`` or ``'eager'``.

    Route: :meth:`embed` ``(input_ids, attention_mask, memory,
    memory_attention_mask)``: decoder token embedding + dropout; layers =
    ``decoder.block``; :meth:`finalize` = ``final_layer_norm`` + dropout
    (active in train mode), so ``hidden`` equals the T5 decoder's
    ``last_hidden_state`` ``(B, T, D)``. No key/value cache is used.

    Context: ``attention_mask`` (causal mask from ``create_causal_mask``),
    ``position_bias``, ``key_padding_mask`` ``(B, T)``; ``memory`` (the
    encoder output, ``encoder_hidden_states``, ``(B, S, D)`` or ``None``),
    ``memory_mask`` (the cross-attention mask from
    ``create_bidirectional_mask``) and ``memory_key_padding_mask`` ``(B, S)``
    bool, True at padding. A late context ``dict(memory=other)`` makes a
    layer cross-attend to ``other``; when ``other`` has another length than
    the original memory, the cross mask is rebuilt from
    ``memory_key_padding_mask`` (which must then be given with it).
    """

    _side = 'decoder'

    def __init__(self, pretrained: str | os.PathLike | None = None, config: dict | None = None,
                 model: nn.Module | None = None, tokenizer: str | os.PathLike | None = None,
                 attn_implementation: str | None = None, init_cfg: dict | None = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self._build(pretrained, config, model, tokenizer, attn_implementation)

    def embed(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
              memory: Tensor | None = None, memory_attention_mask: Tensor | None = None,
              inputs_embeds: Tensor | None = None) -> tuple[Tensor, dict]:
        from transformers.masking_utils import create_causal_mask
        inputs_embeds = self._embed_tokens(input_ids, inputs_embeds)
        mask = _call_supported(create_causal_mask, config=self.t5.config, inputs_embeds=inputs_embeds,
                               attention_mask=attention_mask, past_key_values=None, cache=None)
        batch, length = inputs_embeds.shape[:2]
        context = dict(attention_mask=mask, position_bias=self._position_bias(inputs_embeds),
                       key_padding_mask=_key_padding_mask(attention_mask, batch, length, inputs_embeds.device),
                       memory=memory, memory_mask=None, memory_key_padding_mask=None)
        if memory is not None:
            context['memory_mask'] = self._memory_mask(memory, memory_attention_mask, inputs_embeds)
            context['memory_key_padding_mask'] = _key_padding_mask(memory_attention_mask, memory.shape[0],
                                                                   memory.shape[1], memory.device)
        return self.t5.dropout(inputs_embeds), context

    def _memory_mask(self, memory: Tensor, memory_attention_mask: Tensor | None, inputs_embeds: Tensor):
        from transformers.masking_utils import create_bidirectional_mask
        return create_bidirectional_mask(config=self.t5.config, inputs_embeds=inputs_embeds,
                                         attention_mask=memory_attention_mask, encoder_hidden_states=memory)

    def _cross_mask(self, hidden: Tensor, context: dict):
        memory, mask = context.get('memory'), context.get('memory_mask')
        if memory is None or mask is None or (mask.shape[-1] == memory.shape[1]
                                              and mask.shape[-2] in (1, hidden.shape[1])):
            return mask
        # another memory length (a late memory) or another query count (prompts)
        padding = context.get('memory_key_padding_mask')
        if padding is None or padding.shape[-1] != memory.shape[1]:
            raise ValueError(f'{type(self).__name__}: the memory given for this layer has {memory.shape[1]} '
                             f'positions but the cross-attention mask covers {mask.shape[-1]}; give '
                             f'memory_key_padding_mask (B, {memory.shape[1]}) with it')
        return self._memory_mask(memory, (~padding).long(), hidden)

    def run_layer(self, index: int, hidden: Tensor, context: dict) -> Tensor:
        memory = context.get('memory')
        return self.layers[index](hidden, context.get('attention_mask'), self._layer_position_bias(hidden, context),
                                  memory, self._cross_mask(hidden, context) if memory is not None else None, None)[0]


__all__ = ['HFEncoderStack', 'HFT5DecoderStack', 'HFT5EncoderStack']
