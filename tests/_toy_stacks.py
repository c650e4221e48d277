"""Tiny BackboneStack implementations for the tuner and feature-cache tests
(random weights, CPU, milliseconds). Import them as ``from _toy_stacks import ...``
(pytest puts ``tests/`` on the path).

* :class:`ToyTokenStack`: token embedding + positions, ``num_layers`` post-norm
  encoder layers (``nn.MultiheadAttention`` + ``linear1``/``linear2`` FFN, the
  names of ``nn.TransformerEncoderLayer``), final LayerNorm. Context:
  ``{'key_padding_mask': (B, K) bool, True = pad}``, or with
  ``mask_style='hf_additive'`` / ``'hf_bool'`` a Hugging Face 4-D mask
  ``context['attention_mask']`` of shape ``(B, 1, 1|K, K)`` (additive floats,
  or booleans with True = attend) instead. ``torch_layers=True`` uses
  ``nn.TransformerEncoderLayer`` itself (which has an inference fast path).
* :class:`ToyDecoderStack`: DETR-like decoder (zeros in, queries as
  positions, self-attention, cross-attention to ``context['memory']`` with
  ``memory_key_padding_mask``, FFN), final LayerNorm.
* :class:`ToyCNNStack`: conv stem (with BN + ReLU, or a bare conv) and
  conv/BN stages that change channels and spatial size (non-square maps),
  ``layout='feature_map'``.

All run on the CPU in milliseconds; ``dropout`` defaults to 0 so that results
are deterministic in train mode too.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sherl_mm.backbones.base import BackboneStack


class ToyEncoderLayer(nn.Module):
    """Post-norm encoder layer with nn.TransformerEncoderLayer's module names."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(dim, ffn)
        self.linear2 = nn.Linear(ffn, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, key_padding_mask=None, attn_mask=None):
        attn = self.self_attn(x, x, x, key_padding_mask=key_padding_mask, attn_mask=attn_mask, need_weights=False)[0]
        x = self.norm1(x + self.dropout(attn))
        return self.norm2(x + self.dropout(self.linear2(F.relu(self.linear1(x)))))


class ToyTokenStack(BackboneStack):
    layout = 'tokens'

    def __init__(self, vocab: int = 50, dim: int = 16, heads: int = 2, ffn: int = 32, num_layers: int = 4,
                 max_len: int = 32, dropout: float = 0.0, mask_style: str = 'kpm', torch_layers: bool = False) -> None:
        super().__init__()
        self.dim, self.heads, self.mask_style = dim, heads, mask_style
        self.embed_tokens = nn.Embedding(vocab, dim)
        self.pos_embed = nn.Parameter(torch.randn(max_len, dim) * 0.02)
        if torch_layers:
            self.layers = nn.ModuleList(nn.TransformerEncoderLayer(dim, heads, ffn, dropout=dropout, batch_first=True)
                                        for _ in range(num_layers))
        else:
            self.layers = nn.ModuleList(ToyEncoderLayer(dim, heads, ffn, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)

    @property
    def input_width(self) -> int:
        return self.dim

    @property
    def widths(self) -> list[int]:
        return [self.dim] * self.num_layers

    def embed(self, input_ids, key_padding_mask=None):
        batch, length = input_ids.shape
        hidden = self.embed_tokens(input_ids) + self.pos_embed[:length]
        if key_padding_mask is None:
            key_padding_mask = torch.zeros(batch, length, dtype=torch.bool, device=input_ids.device)
        if self.mask_style == 'kpm':
            return hidden, {'key_padding_mask': key_padding_mask}
        keep = ~key_padding_mask[:, None, None, :]                            # (B, 1, 1, K) True = attend
        if self.mask_style == 'hf_bool':
            return hidden, {'attention_mask': keep}
        additive = torch.zeros(keep.shape, dtype=hidden.dtype).masked_fill(~keep, torch.finfo(hidden.dtype).min)
        return hidden, {'attention_mask': additive}

    def run_layer(self, index, hidden, context):
        layer = self.layers[index]
        if 'key_padding_mask' in context:
            kwargs = dict(key_padding_mask=context['key_padding_mask'])
        else:   # HF 4-D mask (B, 1, Q|1, K) -> MultiheadAttention's (B*heads, Q, K)
            mask = context['attention_mask']
            batch, length = hidden.shape[:2]
            mask = mask.expand(batch, self.heads, length, mask.shape[-1]).reshape(batch * self.heads, length, -1)
            kwargs = dict(attn_mask=~mask if mask.dtype == torch.bool else mask)
        if isinstance(layer, nn.TransformerEncoderLayer):
            return layer(hidden, src_key_padding_mask=kwargs.get('key_padding_mask'), src_mask=kwargs.get('attn_mask'))
        return layer(hidden, **kwargs)

    def finalize(self, hidden, context):
        return self.norm(hidden)


class ToyDecoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, ffn: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(dim, ffn)
        self.linear2 = nn.Linear(ffn, dim)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x, memory, query_pos, memory_key_padding_mask=None):
        q = x + query_pos
        x = self.norm1(x + self.self_attn(q, q, x, need_weights=False)[0])
        x = self.norm2(x + self.cross_attn(x + query_pos, memory, memory, key_padding_mask=memory_key_padding_mask,
                                           need_weights=False)[0])
        return self.norm3(x + self.linear2(F.relu(self.linear1(x))))


class ToyDecoderStack(BackboneStack):
    """``embed(query_pos (Q, D) or (B, Q, D), memory (B, S, D), memory_key_padding_mask (B, S))``."""

    layout = 'tokens'

    def __init__(self, dim: int = 16, heads: int = 2, ffn: int = 32, num_layers: int = 4) -> None:
        super().__init__()
        self.dim = dim
        self.layers = nn.ModuleList(ToyDecoderLayer(dim, heads, ffn) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)

    @property
    def input_width(self) -> int:
        return self.dim

    @property
    def widths(self) -> list[int]:
        return [self.dim] * self.num_layers

    def embed(self, query_pos, memory, memory_key_padding_mask=None):
        if query_pos.dim() == 2:
            query_pos = query_pos.unsqueeze(0).expand(memory.shape[0], -1, -1)
        return torch.zeros_like(query_pos), dict(query_pos=query_pos, memory=memory,
                                                 memory_key_padding_mask=memory_key_padding_mask)

    def run_layer(self, index, hidden, context):
        return self.layers[index](hidden, context['memory'], context['query_pos'],
                                  context.get('memory_key_padding_mask'))

    def finalize(self, hidden, context):
        return self.norm(hidden)


class ToyCNNBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 1)

    def forward(self, x):
        return F.relu(self.conv2(F.relu(self.bn1(self.conv1(x)))))


class ToyCNNStack(BackboneStack):
    """Stem to 4 channels at stride 2 (``Conv → BN → ReLU``, or the bare conv
    with ``stem_norm=False``), then stages ``channels`` with ``strides`` (the
    last stage keeps the size, as ResNet blocks within a stage)."""

    layout = 'feature_map'

    def __init__(self, channels: tuple[int, ...] = (6, 8, 12, 12), strides: tuple = (1, 2, 2, 1),
                 stem_norm: bool = True) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, 2, 1)
        self.stem_norm = nn.BatchNorm2d(4) if stem_norm else None
        cins = (4,) + tuple(channels[:-1])
        self.layers = nn.ModuleList(ToyCNNBlock(cin, cout, s) for cin, cout, s in zip(cins, channels, strides))
        self.channels = tuple(channels)

    @property
    def input_width(self) -> int:
        return 4

    @property
    def widths(self) -> list[int]:
        return list(self.channels)

    def embed(self, images):
        hidden = self.stem(images)
        return (hidden if self.stem_norm is None else F.relu(self.stem_norm(hidden))), {}

    def run_layer(self, index, hidden, context):
        return self.layers[index](hidden)


def token_batch(batch: int = 2, length: int = 7, vocab: int = 50, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, length), generator=g)
    pad = torch.zeros(batch, length, dtype=torch.bool)
    pad[-1, length - 2:] = True
    return ids, pad


def decoder_batch(batch: int = 2, queries: int = 5, mem_len: int = 6, dim: int = 16, seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    query_pos = torch.randn(queries, dim, generator=g)
    memory = torch.randn(batch, mem_len, dim, generator=g)
    mask = torch.zeros(batch, mem_len, dtype=torch.bool)
    mask[-1, mem_len - 2:] = True
    return query_pos, memory, mask


def image_batch(batch: int = 2, height: int = 24, width: int = 16, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, height, width, generator=g)
