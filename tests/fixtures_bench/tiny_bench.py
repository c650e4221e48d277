"""Tiny registered components for the tuner benchmark tests.

``BenchTinyStack`` is a 4-layer pre-norm transformer encoder exposed as a
:class:`~sherl_mm.backbones.base.BackboneStack`; ``BenchTinyClassifier`` puts
one ``tuner=`` config on it through :func:`sherl_mm.tuners.build_tuned_stacks`
and classifies the mean token, with a synthetic batch registered for the
benchmark; ``BenchTinyDataset`` yields random token sets with labels. Imported by the benchmark worker through the fixture config's
``custom_imports``.
"""
from __future__ import annotations

import torch
from mmengine.model import BaseModel
from torch import nn
from torch.utils.data import Dataset

from sherl_mm.backbones.base import BackboneStack
from sherl_mm.benchmark import register_synthetic_batch
from sherl_mm.registry import BACKBONES, DATASETS, MODELS
from sherl_mm.tuners import build_tuned_stacks


@BACKBONES.register_module(force=True)
class BenchTinyStack(BackboneStack):
    layout = 'tokens'

    def __init__(self, in_dim: int = 6, width: int = 16, depth: int = 4, heads: int = 2, tokens: int = 5) -> None:
        super().__init__()
        self.width = width
        self.embedding = nn.Linear(in_dim, width)
        self.position = nn.Parameter(torch.randn(1, tokens, width) * 0.02)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, dropout=0.0, batch_first=True,
                                       norm_first=True) for _ in range(depth))
        self.norm = nn.LayerNorm(width)

    @property
    def input_width(self) -> int:
        return self.width

    @property
    def widths(self) -> list[int]:
        return [self.width] * len(self.layers)

    def embed(self, tokens):
        return self.embedding(tokens) + self.position[:, :tokens.shape[1]], {}

    def run_layer(self, index, hidden, context):
        return self.layers[index](hidden)

    def finalize(self, hidden, context):
        return self.norm(hidden)


@MODELS.register_module(force=True)
class BenchTinyClassifier(BaseModel):
    def __init__(self, backbone: dict, num_classes: int = 3, tuner: dict | None = None,
                 data_preprocessor: dict | None = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor)
        backbone = dict(backbone)
        self.in_dim = backbone.get('in_dim', 6)
        self.tokens = backbone.get('tokens', 5)
        stack = BACKBONES.build(backbone)
        self.stacks = build_tuned_stacks({'encoder': stack}, tuner, default_targets=('encoder',))
        self.head = nn.Linear(stack.width, num_classes)
        self.num_classes = num_classes

    def forward(self, inputs, data_samples=None, mode='tensor'):
        hidden = self.stacks['encoder'](inputs).hidden
        logits = self.head(hidden.mean(dim=1))
        if mode == 'loss':
            return dict(loss=nn.functional.cross_entropy(logits, data_samples))
        if mode == 'predict':
            return list(logits.argmax(dim=-1))
        return logits


@register_synthetic_batch('BenchTinyClassifier')
def tiny_batch(model: BenchTinyClassifier, batch_size: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(inputs=torch.randn(batch_size, model.tokens, model.in_dim, generator=g),
                data_samples=torch.randint(0, model.num_classes, (batch_size,), generator=g))


@DATASETS.register_module(force=True)
class BenchTinyDataset(Dataset):
    def __init__(self, length: int = 32, tokens: int = 5, in_dim: int = 6, num_classes: int = 3) -> None:
        self.length, self.tokens, self.in_dim, self.num_classes = length, tokens, in_dim, num_classes

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, idx: int) -> dict:
        g = torch.Generator().manual_seed(idx)
        return dict(inputs=torch.randn(self.tokens, self.in_dim, generator=g), data_samples=torch.tensor(idx % 3))
