#!/usr/bin/env python
"""Epoch time of SHERL training with and without the early-route feature cache.

A config-free setup: a pre-norm transformer stack (default 12 layers, width
256, 32 tokens) under SHERL (``num_late_layers=1``), a linear head, and a
fixed synthetic dataset with fixed-length, partly padded sequences. Two runs
with the same seeds and the same shuffled order train for ``--epochs``
epochs: one on the plain route, one with ``feature_cache`` (epoch 1 builds
the cache, later epochs read it). Prints a markdown table of per-epoch times,
the ratio cached / uncached over epochs 2+, and the largest difference
between the two runs' trained MTSA weights.

Usage::

    python tools/analysis/benchmark_feature_cache.py [--layers 12] [--width 256] [--samples 512] \
        [--tokens 32] [--batch-size 32] [--epochs 3] [--select all|0,3,6,9] [--threads N] [--out DIR]

The layer is written out (no ``nn.TransformerEncoderLayer``) so that the same
kernels run in train and eval mode: the cache computes the early route in
eval mode, the plain route in train mode, and PyTorch's eval fast path would
otherwise add rounding differences between the two runs.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sherl_mm.backbones.base import BackboneStack
from sherl_mm.tuners import SHERL


class Block(nn.Module):
    """Pre-norm self-attention + FFN block; ``mask`` (B, K) is True at padding."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.ffn = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        b, k, d = x.shape
        q, key, v = self.qkv(self.norm1(x)).view(b, k, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, key, v, attn_mask=~mask[:, None, None, :])
        x = x + self.proj(attn.transpose(1, 2).reshape(b, k, d))
        return x + self.ffn(self.norm2(x))


class BenchStack(BackboneStack):
    """``embed(features (B, K, width), mask (B, K))``; context ``{'mask': (B, K)}``."""

    layout = 'tokens'

    def __init__(self, layers: int, width: int, heads: int, tokens: int) -> None:
        super().__init__()
        self.width = width
        self.position = nn.Parameter(torch.randn(tokens, width) * 0.02)
        self.layers = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)

    @property
    def input_width(self) -> int:
        return self.width

    @property
    def widths(self) -> list[int]:
        return [self.width] * len(self.layers)

    def embed(self, features: Tensor, mask: Tensor) -> tuple[Tensor, dict]:
        return features + self.position, {'mask': mask}

    def run_layer(self, index: int, hidden: Tensor, context: dict) -> Tensor:
        return self.layers[index](hidden, context['mask'])

    def finalize(self, hidden: Tensor, context: dict) -> Tensor:
        return self.norm(hidden)


def make_data(args: argparse.Namespace) -> tuple[Tensor, Tensor, Tensor]:
    """``(features (N, K, W), mask (N, K), labels (N,))``; every 4th sample padded by a quarter."""
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(args.samples, args.tokens, args.width, generator=g)
    mask = torch.zeros(args.samples, args.tokens, dtype=torch.bool)
    mask[::4, args.tokens - args.tokens // 4:] = True
    return feats, mask, torch.randint(0, 10, (args.samples,), generator=g)


def run(args: argparse.Namespace, cache_dir: str | None) -> tuple[list[float], dict[str, Tensor]]:
    """Train one run; returns per-epoch seconds and the trained MTSA state dict."""
    torch.manual_seed(0)
    stack = BenchStack(args.layers, args.width, args.heads, args.tokens)
    select = None if args.select == 'all' else [int(i) for i in args.select.split(',')]
    cache = None if cache_dir is None else dict(dir=cache_dir, pipeline_fingerprint='benchmark-synthetic-v1')
    tuner = SHERL(stack, num_late_layers=1, select_layers=select, feature_cache=cache).train()
    head = nn.Linear(args.width, 10)
    params = [p for p in tuner.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3)
    feats, mask, labels = make_data(args)
    times = []
    for epoch in range(args.epochs):
        order = torch.randperm(args.samples, generator=torch.Generator().manual_seed(epoch))
        start = time.perf_counter()
        for i in range(0, args.samples, args.batch_size):
            idx = order[i:i + args.batch_size]
            out = tuner(feats[idx], mask[idx], sample_keys=idx.tolist() if cache_dir else None)
            loss = F.cross_entropy(head(out.hidden.mean(1)), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if cache_dir:
            tuner.feature_cache.commit()
        times.append(time.perf_counter() - start)
    return times, {k: v.clone() for k, v in tuner.mtsa.state_dict().items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--layers', type=int, default=12)
    parser.add_argument('--width', type=int, default=256)
    parser.add_argument('--heads', type=int, default=4)
    parser.add_argument('--tokens', type=int, default=32)
    parser.add_argument('--samples', type=int, default=512)
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--epochs', type=int, default=3)
    parser.add_argument('--select', default='all', help="SHERL select_layers: 'all' (paper default) or e.g. 0,3,6,9")
    parser.add_argument('--threads', type=int, default=0, help='torch.set_num_threads (0: leave as is)')
    parser.add_argument('--out', default=None, help='cache directory (default: a temporary one, removed after)')
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error('--epochs must be >= 2: epoch 1 builds the cache')
    if args.threads:
        torch.set_num_threads(args.threads)
    cache_dir = args.out or tempfile.mkdtemp(prefix='sherl_feature_cache_')
    try:
        plain_times, plain_weights = run(args, None)
        cached_times, cached_weights = run(args, cache_dir)
    finally:
        if args.out is None:
            shutil.rmtree(cache_dir, ignore_errors=True)
    diff = max((plain_weights[k] - cached_weights[k]).abs().max().item() for k in plain_weights)
    identical = all(torch.equal(plain_weights[k], cached_weights[k]) for k in plain_weights)
    later_plain = sum(plain_times[1:]) / len(plain_times[1:])
    later_cached = sum(cached_times[1:]) / len(cached_times[1:])
    print(f'SHERL feature cache: {args.layers} layers, width {args.width}, {args.tokens} tokens, '
          f'{args.samples} samples, batch {args.batch_size}, select_layers={args.select}, '
          f'{torch.get_num_threads()} threads\n')
    print('| epoch | uncached (s) | cached (s) | cached / uncached |')
    print('|---|---|---|---|')
    for epoch, (a, b) in enumerate(zip(plain_times, cached_times), 1):
        note = ' (builds cache)' if epoch == 1 else ''
        print(f'| {epoch}{note} | {a:.2f} | {b:.2f} | {b / a:.3f} |')
    print(f'| mean of 2+ | {later_plain:.2f} | {later_cached:.2f} | **{later_cached / later_plain:.3f}** |\n')
    print(f'MTSA weights after {args.epochs} epochs: {"identical" if identical else "not identical"} '
          f'(max |diff| {diff:.2e})')


if __name__ == '__main__':
    main()
