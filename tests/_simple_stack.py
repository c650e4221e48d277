"""Tiny backbone stacks for the tuner tests (random weights, CPU, milliseconds).

``SimpleTokenStack``: token embedding + positions, ``num_layers`` post-norm
encoder layers (``nn.MultiheadAttention`` + ``linear1``/``linear2`` FFN, the
names of ``nn.TransformerEncoderLayer``) and a final LayerNorm. The context is
``{'key_padding_mask': (B, K) bool, True = pad}``, or with
``mask_style='hf_additive'`` / ``'hf_bool'`` a Hugging Face 4-D mask
``context['attention_mask']`` of shape ``(B, 1, 1|K, K)`` (additive floats, or
booleans with True = attend) instead. ``torch_layers=True`` uses
``nn.TransformerEncoderLayer`` itself (which has an inference fast path).

``SimpleConvStack``: a conv stem and two conv/BN/ReLU stages, ``layout='feature_map'``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sherl_mm.backbones.base import BackboneStack


class SimpleEncoderLayer(nn.Module):
    """Post-norm encoder layer with nn.TransformerEncoderLayer's module names."""

    def __init__(self, dim: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.linear1 = nn.Linear(dim, ffn)
        self.linear2 = nn.Linear(ffn, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x, key_padding_mask=None, attn_mask=None):
        attn = self.self_attn(x, x, x, key_padding_mask=key_padding_mask, attn_mask=attn_mask, need_weights=False)[0]
        x = self.norm1(x + attn)
        return self.norm2(x + self.linear2(F.relu(self.linear1(x))))


class SimpleTokenStack(BackboneStack):
    layout = 'tokens'

    def __init__(self, vocab: int = 50, dim: int = 16, heads: int = 2, ffn: int = 32, num_layers: int = 3,
                 max_len: int = 32, mask_style: str = 'kpm', torch_layers: bool = False) -> None:
        super().__init__()
        self.dim, self.heads, self.mask_style = dim, heads, mask_style
        self.embed_tokens = nn.Embedding(vocab, dim)
        self.pos_embed = nn.Parameter(torch.randn(max_len, dim) * 0.02)
        if torch_layers:
            self.layers = nn.ModuleList(nn.TransformerEncoderLayer(dim, heads, ffn, dropout=0.0, batch_first=True)
                                        for _ in range(num_layers))
        else:
            self.layers = nn.ModuleList(SimpleEncoderLayer(dim, heads, ffn) for _ in range(num_layers))
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


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 1)

    def forward(self, x):
        return F.relu(self.conv2(F.relu(self.bn1(self.conv1(x)))))


class SimpleConvStack(BackboneStack):
    layout = 'feature_map'

    def __init__(self, channels: tuple[int, ...] = (8, 16)) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, 2, 1)
        cins = (4,) + tuple(channels[:-1])
        self.layers = nn.ModuleList(ConvBlock(cin, cout, 2) for cin, cout in zip(cins, channels))
        self.channels = tuple(channels)

    @property
    def input_width(self) -> int:
        return 4

    @property
    def widths(self) -> list[int]:
        return list(self.channels)

    def embed(self, images):
        return self.stem(images), {}

    def run_layer(self, index, hidden, context):
        return self.layers[index](hidden)
