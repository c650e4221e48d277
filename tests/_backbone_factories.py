"""Tiny instances of every backbone stack wrapper, for tests (random weights, CPU, milliseconds).

Other tests use them to run every tuner on every backbone::

    from _backbone_factories import STACK_NAMES, make_stack, example_inputs

    for name in STACK_NAMES:
        stack = make_stack(name)
        args, kwargs = example_inputs(name)
        out = stack(*args, **kwargs)          # StackOutput

Names and factories (stable API):

=================  ==========================  ==========  ============================================
name               factory                     layout      widths / output ``hidden``
=================  ==========================  ==========  ============================================
``bert``           ``tiny_bert_stack``         tokens      4 x 32; ``(B, 7, 32)``
``t5_encoder``     ``tiny_t5_encoder_stack``   tokens      4 x 32; ``(B, 7, 32)``
``t5_decoder``     ``tiny_t5_decoder_stack``   tokens      4 x 32; ``(B, 5, 32)``; kwargs ``memory`` ...
``clip_text``      ``tiny_clip_text_stack``    tokens      4 x 32; ``(B, 16)`` (projected embedding)
``clip_vision``    ``tiny_clip_vision_stack``  tokens      4 x 32 on 17 tokens; ``(B, 16)``
``resnet``         ``tiny_resnet_stack``       feature_map [8, 8, 16, 16, 32, 32, 64, 64]; ``(B, 64, 2, 2)``
``efficientnet``   ``tiny_efficientnet_stack`` feature_map 10 blocks, 8..80; ``(B, 1280, 2, 2)``
``generic``        ``tiny_generic_stack``      tokens      4 x 32; ``(B, 7, 32)``
``detr_encoder``   ``tiny_detr_encoder_stack`` tokens      4 x 32; ``(B, 9, 32)``; args src, pos, mask
``detr_decoder``   ``tiny_detr_decoder_stack`` tokens      4 x 32; ``(B, 5, 32)``; args queries, memory ...
=================  ==========================  ==========  ============================================

``stack_config(name)`` is the BACKBONES config each factory builds from
(``BACKBONES.build(stack_config(name))``; tuners take it as ``stack=``). The
generic one holds a module instance, since :class:`TinyTokenEncoder` is not
registered. ``tiny_t5_pair()`` gives an encoder and a decoder stack that share one T5.
``example_inputs(name, batch=2)`` returns ``(args, kwargs)`` with padding in
the text inputs; they are the same at every call (own seeded generator).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from sherl_mm.backbones import (DetrDecoderStack, DetrEncoderStack, EfficientNetStack, HFEncoderStack,
                                HFT5DecoderStack, HFT5EncoderStack, ModuleListStack, OpenCLIPTextStack,
                                OpenCLIPVisionStack, ResNetStack)
from sherl_mm.registry import BACKBONES

WIDTH = 32
VOCAB = 100
TEXT_LEN = 7
DECODER_LEN = 5
CLIP_CONTEXT = 12
CLIP_SOT, CLIP_EOT = 98, 99
IMAGE_SIZE = 64
CLIP_IMAGE_SIZE = 32
DETR_MEMORY_LEN = 9
DETR_QUERIES = 5

BERT_CONFIG = dict(model_type='bert', hidden_size=WIDTH, num_hidden_layers=4, num_attention_heads=4,
                   intermediate_size=64, vocab_size=VOCAB, max_position_embeddings=64)
T5_CONFIG = dict(d_model=WIDTH, d_kv=8, d_ff=64, num_layers=4, num_decoder_layers=4, num_heads=4, vocab_size=VOCAB)
CLIP_CONFIG = dict(embed_dim=16,
                   vision_cfg=dict(layers=4, width=WIDTH, head_width=8, patch_size=8, image_size=CLIP_IMAGE_SIZE),
                   text_cfg=dict(context_length=CLIP_CONTEXT, vocab_size=VOCAB, width=WIDTH, heads=4, layers=4))


class TinyTokenEncoder(nn.Module):
    """Embedding + ``nn.TransformerEncoder`` + final LayerNorm: a network no
    wrapper knows, for :class:`ModuleListStack`."""

    def __init__(self, vocab: int = VOCAB, width: int = WIDTH, layers: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.randn(64, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, 4, 64, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids) + self.pos[:input_ids.shape[1]]
        return self.norm(self.encoder(x, src_key_padding_mask=attention_mask == 0))


DETR_CONFIG = dict(num_layers=4, embed_dims=WIDTH, num_heads=4, feedforward_channels=64)


def stack_config(name: str) -> dict:
    """The BACKBONES config of the tiny stack ``name`` (a new dict at every call)."""
    configs = {
        'bert': dict(type='HFEncoderStack', config=BERT_CONFIG),
        't5_encoder': dict(type='HFT5EncoderStack', config=T5_CONFIG),
        't5_decoder': dict(type='HFT5DecoderStack', config=T5_CONFIG),
        'clip_text': dict(type='OpenCLIPTextStack', model_cfg=CLIP_CONFIG),
        'clip_vision': dict(type='OpenCLIPVisionStack', model_cfg=CLIP_CONFIG),
        'resnet': dict(type='ResNetStack', depth=18, resnet=dict(base_channels=8)),
        'efficientnet': dict(type='EfficientNetStack', pretrained=False,
                             override_params=dict(width_coefficient=0.25, depth_coefficient=0.5)),
        'generic': dict(type='ModuleListStack', layers='encoder.layers', output_module='norm',
                        key_padding_mask_arg='src_key_padding_mask'),
        'detr_encoder': dict(type='DetrEncoderStack', **DETR_CONFIG),
        'detr_decoder': dict(type='DetrDecoderStack', **DETR_CONFIG),
    }
    if name not in configs:
        raise KeyError(f'unknown tiny stack {name!r}; names: {STACK_NAMES}')
    cfg = copy.deepcopy(configs[name])
    if name == 'generic':
        # a module instance (the wrapped network is not in MODELS), made only here: it draws from the global RNG
        cfg['module'] = TinyTokenEncoder()
    return cfg


def _build(name: str):
    return BACKBONES.build(stack_config(name))


def tiny_bert_stack() -> HFEncoderStack:
    return _build('bert')


def tiny_t5_encoder_stack() -> HFT5EncoderStack:
    return _build('t5_encoder')


def tiny_t5_decoder_stack() -> HFT5DecoderStack:
    return _build('t5_decoder')


def tiny_t5_pair() -> tuple[HFT5EncoderStack, HFT5DecoderStack]:
    from transformers import T5Config, T5Model
    model = T5Model(T5Config(**T5_CONFIG))
    return HFT5EncoderStack(model=model), HFT5DecoderStack(model=model)


def tiny_clip_model() -> nn.Module:
    import open_clip
    return open_clip.model.CLIP(**CLIP_CONFIG)


def tiny_clip_text_stack(output: str = 'embedding') -> OpenCLIPTextStack:
    return BACKBONES.build(dict(stack_config('clip_text'), output=output))


def tiny_clip_vision_stack(output: str = 'embedding') -> OpenCLIPVisionStack:
    return BACKBONES.build(dict(stack_config('clip_vision'), output=output))


def tiny_resnet_stack() -> ResNetStack:
    return _build('resnet')


def tiny_efficientnet_stack() -> EfficientNetStack:
    return _build('efficientnet')


def tiny_generic_stack() -> ModuleListStack:
    return _build('generic')


def tiny_detr_encoder_stack() -> DetrEncoderStack:
    return _build('detr_encoder')


def tiny_detr_decoder_stack() -> DetrDecoderStack:
    return _build('detr_decoder')


FACTORIES = {
    'bert': tiny_bert_stack,
    't5_encoder': tiny_t5_encoder_stack,
    't5_decoder': tiny_t5_decoder_stack,
    'clip_text': tiny_clip_text_stack,
    'clip_vision': tiny_clip_vision_stack,
    'resnet': tiny_resnet_stack,
    'efficientnet': tiny_efficientnet_stack,
    'generic': tiny_generic_stack,
    'detr_encoder': tiny_detr_encoder_stack,
    'detr_decoder': tiny_detr_decoder_stack,
}
STACK_NAMES = tuple(FACTORIES)


def make_stack(name: str):
    if name not in FACTORIES:
        raise KeyError(f'unknown tiny stack {name!r}; names: {STACK_NAMES}')
    return FACTORIES[name]()


def _ids(gen: torch.Generator, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, VOCAB, (batch, length), generator=gen)
    mask = torch.ones(batch, length, dtype=torch.long)
    for b in range(batch):  # sample b has b padding positions (at most length - 2)
        pad = min(b, length - 2)
        if pad:
            mask[b, length - pad:] = 0
            ids[b, length - pad:] = 0
    return ids, mask


def clip_text_ids(batch: int = 2, gen: torch.Generator | None = None) -> torch.Tensor:
    """``(B, 12)`` ids laid out as open_clip's tokenizer does: SOT, words, EOT, zeros."""
    gen = gen or torch.Generator().manual_seed(0)
    text = torch.zeros(batch, CLIP_CONTEXT, dtype=torch.long)
    for b in range(batch):
        words = 3 + b % (CLIP_CONTEXT - 4)
        text[b, 0] = CLIP_SOT
        text[b, 1:1 + words] = torch.randint(1, CLIP_SOT, (words,), generator=gen)
        text[b, 1 + words] = CLIP_EOT
    return text


def example_inputs(name: str, batch: int = 2) -> tuple[tuple, dict]:
    """Example ``(args, kwargs)`` for the stack ``make_stack(name)``."""
    gen = torch.Generator().manual_seed(0)
    if name in ('bert', 't5_encoder', 'generic'):
        ids, mask = _ids(gen, batch, TEXT_LEN)
        return (ids, mask), {}
    if name == 't5_decoder':
        ids, mask = _ids(gen, batch, DECODER_LEN)
        _, memory_mask = _ids(gen, batch, TEXT_LEN)
        memory = torch.randn(batch, TEXT_LEN, WIDTH, generator=gen)
        return (ids, mask), dict(memory=memory, memory_attention_mask=memory_mask)
    if name == 'clip_text':
        return (clip_text_ids(batch, gen),), {}
    if name == 'clip_vision':
        return (torch.randn(batch, 3, CLIP_IMAGE_SIZE, CLIP_IMAGE_SIZE, generator=gen),), {}
    if name in ('resnet', 'efficientnet'):
        return (torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen),), {}
    if name in ('detr_encoder', 'detr_decoder'):
        # image + text tokens with their positions; sample b has b padded positions at the end
        memory = torch.randn(batch, DETR_MEMORY_LEN, WIDTH, generator=gen)
        pos = torch.randn(batch, DETR_MEMORY_LEN, WIDTH, generator=gen)
        pad = torch.zeros(batch, DETR_MEMORY_LEN, dtype=torch.bool)
        for b in range(batch):
            if b:
                pad[b, DETR_MEMORY_LEN - min(b, DETR_MEMORY_LEN - 2):] = True
        if name == 'detr_encoder':
            return (memory, pos, pad), {}
        queries = torch.randn(DETR_QUERIES, WIDTH, generator=gen)   # the learned query embedding
        return (queries, memory, pos, pad), {}
    raise KeyError(f'unknown tiny stack {name!r}; names: {STACK_NAMES}')


__all__ = ['FACTORIES', 'STACK_NAMES', 'TinyTokenEncoder', 'clip_text_ids', 'example_inputs', 'make_stack',
           'stack_config', 'tiny_bert_stack', 'tiny_clip_model', 'tiny_clip_text_stack', 'tiny_clip_vision_stack',
           'tiny_detr_decoder_stack', 'tiny_detr_encoder_stack', 'tiny_efficientnet_stack', 'tiny_generic_stack',
           'tiny_resnet_stack', 'tiny_t5_decoder_stack', 'tiny_t5_encoder_stack', 'tiny_t5_pair']
