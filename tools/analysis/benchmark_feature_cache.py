#!/usr/bin/env python
"""Epoch time with and without the frozen-route feature cache, on a real config.

    python tools/analysis/benchmark_feature_cache.py CONFIG [--epochs 3] [--stacks image,text]
        [--out work_dirs/bench_cache] [--cfg-options k=v ...]

Two ``tools/train.py`` runs of CONFIG, each in its own process, with the same
seed, data order and epochs: one without ``FrozenFeatureCacheHook``, one with it
(``--stacks`` limits it to some stacks; default: every frozen stack and SHERL
early route). The config's training pipeline must be deterministic (the hook
refuses random transforms). Reported, as a markdown table and
``OUT/cache_benchmark.json``:

* the training time of every epoch (sum of mmengine's per-iteration ``time``
  from ``vis_data/scalars.json``; epoch 1 builds the cache) and the ratio
  cached / uncached, over epochs 2+ as the headline;
* the largest difference between the two runs' final trainable weights
  (the cached route runs in eval mode: equal when the frozen layers have no
  dropout).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import os.path as osp
import subprocess
import sys
from collections import defaultdict

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def derived_config(config: str, work_dir: str, hook: dict | None) -> str:
    """CONFIG with its own feature cache hook (under either name) removed and ``hook`` added to
    ``custom_hooks`` (the other custom hooks, e.g. EMA, stay)."""
    from mmengine.config import Config
    hooks = [dict(h) for h in Config.fromfile(config).get('custom_hooks', []) or []
             if h.get('type') not in ('FrozenFeatureCacheHook', 'EarlyRouteCacheHook')]
    path = osp.join(work_dir, 'benchmark_config.py')
    os.makedirs(work_dir, exist_ok=True)
    with open(path, 'w') as f:
        f.write(f'_base_ = [{osp.abspath(config)!r}]\ncustom_hooks = {hooks + ([hook] if hook else [])!r}\n')
    return path


def train(config: str, work_dir: str, epochs: int, hook: dict | None, options: list[str]) -> str:
    """One training run; returns its timestamped log folder."""
    cmd = [sys.executable, osp.join(REPO, 'tools', 'train.py'), derived_config(config, work_dir, hook),
           '--work-dir', work_dir, '--cfg-options', f'train_cfg.max_epochs={epochs}',
           f'train_cfg.val_interval={epochs + 1}', f'default_hooks.checkpoint.interval={epochs}', 'randomness.seed=0',
           *options]
    log = osp.join(work_dir, 'train.log')
    with open(log, 'w') as f:
        status = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT).returncode
    if status:
        sys.exit(f'training failed (exit {status}); see {log}')
    return sorted(d for d in glob.glob(osp.join(work_dir, '2*')) if osp.isdir(d))[-1]


def epoch_seconds(run_dir: str) -> list[float]:
    per_epoch: dict[int, float] = defaultdict(float)
    with open(osp.join(run_dir, 'vis_data', 'scalars.json')) as f:
        for line in f:
            record = json.loads(line)
            if 'time' in record and 'epoch' in record and 'loss' in record:
                per_epoch[int(record['epoch'])] += float(record['time'])
    return [per_epoch[e] for e in sorted(per_epoch)]


def max_weight_difference(a: str, b: str) -> float:
    import torch
    sa = torch.load(a, map_location='cpu', weights_only=False)['state_dict']
    sb = torch.load(b, map_location='cpu', weights_only=False)['state_dict']
    return max((sa[k].float() - sb[k].float()).abs().max().item() for k in sa if sa[k].is_floating_point())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config')
    parser.add_argument('--epochs', type=int, default=3)
    parser.add_argument('--stacks', default=None, help='comma-separated stacks to cache (default: all cacheable)')
    parser.add_argument('--out', default='work_dirs/bench_cache')
    parser.add_argument('--cfg-options', nargs='*', default=[], help='passed on to tools/train.py')
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error('--epochs must be >= 2: epoch 1 builds the cache')
    # log every iteration so that the per-epoch sums cover all of them
    options = ['default_hooks.logger.interval=1', *args.cfg_options]
    hook = dict(type='FrozenFeatureCacheHook')
    if args.stacks:
        hook['stacks'] = args.stacks.split(',')
    out = osp.abspath(args.out)
    plain_dir, cached_dir = osp.join(out, 'uncached'), osp.join(out, 'cached')
    plain = epoch_seconds(train(args.config, plain_dir, args.epochs, None, options))
    cached = epoch_seconds(train(args.config, cached_dir, args.epochs, hook, options))
    diff = max_weight_difference(osp.join(plain_dir, f'epoch_{args.epochs}.pth'),
                                 osp.join(cached_dir, f'epoch_{args.epochs}.pth'))
    later = sum(cached[1:]) / sum(plain[1:])
    rows = ['| epoch | uncached (s) | cached (s) | cached / uncached |', '|---|---|---|---|']
    for epoch, (a, b) in enumerate(zip(plain, cached), 1):
        rows.append(f'| {epoch}{" (builds the cache)" if epoch == 1 else ""} | {a:.1f} | {b:.1f} | {b / a:.3f} |')
    rows.append(f'| 2-{args.epochs} | {sum(plain[1:]):.1f} | {sum(cached[1:]):.1f} | **{later:.3f}** |')
    table = '\n'.join(rows)
    result = dict(config=args.config, epochs=args.epochs, stacks=hook.get('stacks', 'all'),
                  uncached_s=plain, cached_s=cached, ratio_after_first=later, max_weight_diff=diff)
    with open(osp.join(out, 'cache_benchmark.json'), 'w') as f:
        json.dump(result, f, indent=2)
    print(f'{args.config}, {args.epochs} epochs, cached stacks: {result["stacks"]}\n\n{table}\n\n'
          f'largest |difference| of the final weights: {diff:.2e}')


if __name__ == '__main__':
    main()
