"""Pooling of a variable-length set of features into one embedding.

:class:`GPO` is VSE∞'s Generalized Pooling Operator (Chen et al., CVPR 2021):
each feature dimension is sorted over the set (descending), and the k-th
largest values are weighted by ``w_k``, generated from the position ``k`` and
the set size by a small bi-GRU over sinusoidal position encodings, then a
softmax with temperature 0.1 over the valid positions. Implemented in full
(not simplified): positional encoding of size ``d_pe``, one bidirectional
GRU layer of ``d_hidden`` whose two directions are averaged, a bias-free
Linear to a score.

:class:`MeanPooling` is the masked average.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


def lengths_to_mask(lengths: Tensor, max_len: int) -> Tensor:
    """``(B,)`` lengths -> ``(B, max_len)`` bool, True at valid positions."""
    return torch.arange(max_len, device=lengths.device)[None] < lengths[:, None]


def sinusoid_encoding(length: int, dim: int, device=None) -> Tensor:
    """Transformer sinusoidal position encoding ``(length, dim)``."""
    position = torch.arange(length, dtype=torch.float32, device=device)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(position * div)
    pe[:, 1::2] = torch.cos(position * div[:dim // 2])
    return pe


class GPO(nn.Module):
    """Generalized Pooling Operator.

    Args:
        d_pe: size of the position encoding fed to the GRU.
        d_hidden: GRU hidden size.
        temperature: softmax temperature of the pooling weights (0.1).
    """

    def __init__(self, d_pe: int = 32, d_hidden: int = 32, temperature: float = 0.1) -> None:
        super().__init__()
        self.d_pe = d_pe
        self.temperature = temperature
        self.gru = nn.GRU(d_pe, d_hidden, num_layers=1, batch_first=True, bidirectional=True)
        self.linear = nn.Linear(d_hidden, 1, bias=False)

    def pool_weights(self, lengths: Tensor, max_len: int) -> tuple[Tensor, Tensor]:
        """Weights ``(B, max_len, 1)`` (softmax over valid positions) and the mask."""
        batch = lengths.shape[0]
        mask = lengths_to_mask(lengths, max_len).unsqueeze(-1)
        pes = sinusoid_encoding(max_len, self.d_pe, lengths.device).unsqueeze(0).expand(batch, -1, -1)
        pes = pes.masked_fill(~mask, 0)
        packed = pack_padded_sequence(pes, lengths.cpu().clamp(min=1), batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=max_len)
        half = out.shape[2] // 2
        out = (out[:, :, :half] + out[:, :, half:]) / 2
        scores = self.linear(out).masked_fill(~mask, -10000.0)
        return torch.softmax(scores / self.temperature, dim=1), mask

    def forward(self, features: Tensor, lengths: Tensor) -> Tensor:
        """``features`` ``(B, K, D)`` with the first ``lengths[b]`` valid -> ``(B, D)``."""
        lengths = lengths.long()
        max_len = int(lengths.max())
        features = features[:, :max_len]
        weights, mask = self.pool_weights(lengths, max_len)
        sorted_feats = features.masked_fill(~mask, -10000.0).sort(dim=1, descending=True)[0]
        sorted_feats = sorted_feats.masked_fill(~mask, 0)
        return (sorted_feats * weights.to(sorted_feats.dtype)).sum(dim=1)


class MeanPooling(nn.Module):
    """Masked mean over the valid positions."""

    def forward(self, features: Tensor, lengths: Tensor) -> Tensor:
        mask = lengths_to_mask(lengths.long(), features.shape[1]).unsqueeze(-1).to(features.dtype)
        return (features * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def build_pooling(kind: str, **kwargs) -> nn.Module:
    if kind == 'gpo':
        return GPO(**kwargs)
    if kind == 'mean':
        return MeanPooling()
    raise ValueError(f"pooling must be 'gpo' or 'mean', got {kind!r}")


__all__ = ['GPO', 'MeanPooling', 'build_pooling', 'lengths_to_mask', 'sinusoid_encoding']
