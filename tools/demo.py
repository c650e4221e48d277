#!/usr/bin/env python
"""The grounding demo: SHERL transfer of a small MDETR-like model, on a CPU, in minutes.

    python tools/demo.py [--out work_dirs/demo] [--source-epochs 50] [--target-epochs 20] [--skip-fullft]
                         [--sherl-placement text|fusion] [--jobs 2]

Steps (each a ``tools/train.py`` / ``tools/test.py`` run in its own process,
so that every peak-memory figure belongs to one run; logs go to
``OUT/<step>.log``):

1. build the demo data (``tools/data/make_grounding_demo.py``: emoji
   composited on the sample photos, MDETR's RefCOCO format), unless the data
   root holds what this version would write (``--skip-if-current``);
2. pre-train a grounding model on the *source* task
   (``configs/demo/mdetr_demo_source.py``: name grounding; transformer,
   projections and heads train, the pretrained EfficientNet-Lite0 and
   MiniLM stay frozen);
3. SHERL transfer to the *target* task (the same emoji named in other
   words, "a puppy", "the desert plant"), then test on val / testA / testB.
   ``--sherl-placement text`` (default, ``configs/demo/sherl_text_mdetr_demo.py``):
   SHERL on the text encoder, where the new words are read; ``fusion``
   (``configs/demo/sherl_mdetr_demo.py``): the paper's MDETR placement, MTSA
   on the fusion transformer (docs/investigations.md: it does not learn the new words);
4. the same transfer with full fine-tuning (``configs/demo/fullft_mdetr_demo.py``)
   for comparison (``--skip-fullft`` leaves it out); steps 3 and 4 run at
   the same time, each process on its share of the CPU threads (``--jobs 1``:
   one after the other);
5. print Acc@0.5 per split (MDETR's protocol: top-scored box, GIoU >= 0.5)
   before and after each transfer, next to the expected score of naming a
   random emoji of the scene with its exact box; trainable parameters and
   peak training memory; write them to ``OUT/results.json`` /
   ``OUT/results.md``, and draw a few test images
   with the predicted (red) and true (green) boxes to
   ``OUT/sherl_predictions.png``.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import os.path as osp
import pickle
import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
SPLITS = ('val', 'testA', 'testB')
#: SHERL's config per ``--sherl-placement``
SHERL_CONFIGS = {'text': 'configs/demo/sherl_text_mdetr_demo.py', 'fusion': 'configs/demo/sherl_mdetr_demo.py'}
FULLFT_CONFIG = 'configs/demo/fullft_mdetr_demo.py'
PLACEMENT_LABELS = {'text': 'on the text encoder', 'fusion': "on the fusion transformer, the paper's MDETR placement"}
SOURCE_CONFIG = 'configs/demo/mdetr_demo_source.py'


def run_step(name: str, args: list[str], out_dir: str, threads: int | None = None) -> str:
    """Run ``python ARGS`` in the repository; its output goes to
    ``OUT/<name>.log``, whose path is returned. ``threads`` caps the
    process's CPU threads (OpenMP/MKL). A failing step ends the demo with
    the tail of its log."""
    log = osp.join(out_dir, f'{name}.log')
    start = time.time()
    env = dict(os.environ)
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    print(f'[{name}] python {" ".join(args)}', flush=True)
    with open(log, 'w') as f:
        status = subprocess.run([sys.executable, *args], cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                                env=env).returncode
    if status != 0:
        with open(log) as f:
            tail = f.readlines()[-25:]
        sys.exit(f'[{name}] failed (exit status {status}); the end of {log}:\n{"".join(tail)}')
    print(f'[{name}] done in {time.time() - start:.0f} s (log: {osp.relpath(log, REPO)})', flush=True)
    return log


def latest_run_dir(work_dir: str) -> str:
    """The timestamped folder mmengine made for the newest run in ``work_dir``."""
    runs = sorted(d for d in glob.glob(osp.join(work_dir, '*')) if osp.isdir(d) and re.search(r'\d{8}_\d{6}$', d))
    if not runs:
        sys.exit(f'no run folder in {work_dir}')
    return runs[-1]


def test_metrics(run: str) -> dict:
    """The metrics a tools/test.py run logged, from its run folder."""
    with open(osp.join(run, osp.basename(run) + '.json')) as f:
        return json.load(f)


def peak_train_memory_gib(run: str) -> float:
    """The whole-run peak PeakMemoryHook logged in a training run's folder
    (GiB; on CPU the process's peak resident memory)."""
    peak = 0.0
    with open(osp.join(run, 'vis_data', 'scalars.json')) as f:
        for line in f:
            record = json.loads(line)
            peak = max(peak, record.get('peak_mem_run_gib', 0.0), record.get('peak_mem_gib', 0.0))
    return peak


def trainable_parameters(log: str) -> tuple[int, int]:
    """``(trainable, total)`` from the ParameterTableHook line of a train log."""
    with open(log) as f:
        found = re.search(r'trainable params: ([\d,]+) \|\| all params: ([\d,]+)', f.read())
    if found is None:
        sys.exit(f'{log}: no "trainable params" line (is ParameterTableHook in default_hooks?)')
    return int(found.group(1).replace(',', '')), int(found.group(2).replace(',', ''))


def random_pick_accuracy(target_root: str) -> dict[str, float]:
    """Per split, the expected Acc@0.5 (%) of naming one of the scene's
    emoji at random, with its exact box: the yardstick for "non-trivial"."""
    acc = {}
    for split in SPLITS:
        with open(osp.join(target_root, f'scenes_{split}.json')) as f:
            scenes = json.load(f)['scenes']
        picks = [1 / len(scene['objects']) for scene in scenes for _ in scene['expressions']]
        acc[split] = 100 * sum(picks) / len(picks)
    return acc


def draw_predictions(pred_file: str, png: str, per_split: int = 3) -> None:
    """A grid of test images with the top-scored box (red) and the true box (green)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from PIL import Image

    with open(pred_file, 'rb') as f:
        samples = pickle.load(f)
    shown = [s for split in ('testA', 'testB') for s in [s for s in samples if s.get('split') == split][:per_split]]
    fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3.6))
    for ax, sample in zip(axes, shown):
        ax.imshow(Image.open(sample['img_path']).convert('RGB'))
        for box, colour in ((sample['ref_bbox'], 'lime'), (sample['pred_instances']['bboxes'][0].tolist(), 'red')):
            x1, y1, x2, y2 = box
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color=colour, linewidth=2))
        ax.set_title(sample['text'], fontsize=9)
        ax.axis('off')
    fig.suptitle('SHERL on the demo target task: predicted (red) and true (green) boxes', fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='work_dirs/demo', help='folder for the runs, logs and results')
    parser.add_argument('--data-root', default='data/demo_grounding',
                        help='demo data (built when missing or written by another builder version or arguments)')
    parser.add_argument('--source-epochs', type=int, default=50)
    parser.add_argument('--target-epochs', type=int, default=20)
    parser.add_argument('--skip-fullft', action='store_true', help='leave out the full fine-tuning comparison')
    parser.add_argument('--sherl-placement', default='text', choices=sorted(SHERL_CONFIGS),
                        help="text: SHERL on the text encoder (learns the target's new words); fusion: the paper's "
                             'MDETR placement on the fusion transformer')
    parser.add_argument('--jobs', type=int, default=2,
                        help='transfers run at the same time, the CPU threads shared among them (1: one by one)')
    parser.add_argument('--data-args', default='',
                        help='extra arguments for make_grounding_demo.py, one string, e.g. "--num-train 32"')
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    out = osp.abspath(args.out)
    data_root = osp.abspath(args.data_root)
    os.makedirs(out, exist_ok=True)
    started = time.time()

    run_step('data', ['tools/data/make_grounding_demo.py', '--out', data_root, '--skip-if-current',
                      *shlex.split(args.data_args)], out)

    def data_options(variant: str) -> list[str]:
        root = osp.join(data_root, variant) + '/'
        return [f'{loader}.dataset.data_root={root}' for loader in ('train_dataloader', 'val_dataloader')] + [
            f'test_dataloader.dataset.datasets.{i}.data_root={root}' for i in range(len(SPLITS))]

    source_dir = osp.join(out, 'source')
    source_ckpt = osp.join(source_dir, f'epoch_{args.source_epochs}.pth')
    run_step('source', ['tools/train.py', SOURCE_CONFIG, '--work-dir', source_dir, '--cfg-options',
                        f'train_cfg.max_epochs={args.source_epochs}', f'train_cfg.val_interval={args.source_epochs}',
                        f'default_hooks.checkpoint.interval={args.source_epochs}', *data_options('source')], out)

    # the pre-trained model on the target task, before any transfer: what the tuners start from
    run_step('source-on-target', ['tools/test.py', SOURCE_CONFIG, source_ckpt, '--work-dir', source_dir,
                                  '--cfg-options', *data_options('target')], out)
    metrics = test_metrics(latest_run_dir(source_dir))
    before = {split: metrics[f'refexp_giou0.5/demo_target_{split}_P@1'] for split in SPLITS}

    methods = {'sherl': SHERL_CONFIGS[args.sherl_placement]}
    if not args.skip_fullft:
        methods['fullft'] = FULLFT_CONFIG
    jobs = max(1, min(args.jobs, len(methods)))
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None

    def transfer(method: str) -> dict:
        config, work_dir = methods[method], osp.join(out, method)
        train_log = run_step(f'{method}-train', [
            'tools/train.py', config, '--work-dir', work_dir, '--cfg-options', f'load_from={source_ckpt}',
            f'train_cfg.max_epochs={args.target_epochs}', f'train_cfg.val_interval={args.target_epochs}',
            f'default_hooks.checkpoint.interval={args.target_epochs}', *data_options('target')], out, threads)
        train_run = latest_run_dir(work_dir)
        preds = osp.join(work_dir, 'test_predictions.pkl')
        run_step(f'{method}-test', [
            'tools/test.py', config, osp.join(work_dir, f'epoch_{args.target_epochs}.pth'), '--work-dir', work_dir,
            '--out', preds, '--cfg-options', *data_options('target')], out, threads)
        metrics = test_metrics(latest_run_dir(work_dir))
        trainable, total = trainable_parameters(train_log)
        return dict(acc={split: metrics[f'refexp_giou0.5/demo_target_{split}_P@1'] for split in SPLITS},
                    trainable_params=trainable, total_params=total,
                    peak_train_mem_gib=peak_train_memory_gib(train_run), predictions=preds)

    # the transfers are independent: on a small CPU two single-threaded processes train faster than two
    # two-threaded ones in turn (the demo model's matrices are too small to keep two threads busy)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = dict(zip(methods, pool.map(transfer, methods)))

    png = osp.join(out, 'sherl_predictions.png')
    draw_predictions(results['sherl']['predictions'], png)
    header = ('| method | trainable params | peak train memory (GiB, process RSS) | '
              + ' | '.join(f'Acc@0.5 {s}' for s in SPLITS) + ' |')
    chance = random_pick_accuracy(osp.join(data_root, 'target'))

    def row(label: str, params: str, memory: str, acc: dict) -> str:
        return f'| {label} | {params} | {memory} | ' + ' | '.join(f'{acc[s]:.1f}' for s in SPLITS) + ' |'

    rows = [header, '|' + ' --- |' * (3 + len(SPLITS)),
            row('a random emoji of the scene, exact box (expected)', '-', '-', chance),
            row('before transfer (the pre-trained model)', '-', '-', before)]
    labels = {'sherl': f'SHERL ({PLACEMENT_LABELS[args.sherl_placement]})', 'fullft': 'full fine-tuning'}
    for method, r in results.items():
        share = 100 * r['trainable_params'] / r['total_params']
        rows.append(row(labels[method], f'{r["trainable_params"]:,} ({share:.2f}%)', f'{r["peak_train_mem_gib"]:.2f}',
                        r['acc']))
    table = '\n'.join(rows)
    with open(osp.join(out, 'results.md'), 'w') as f:
        f.write(table + '\n')
    with open(osp.join(out, 'results.json'), 'w') as f:
        json.dump(dict(random_pick=chance, before_transfer=before, sherl_placement=args.sherl_placement, **results),
                  f, indent=2)
    print(f'\nGrounding demo, target task (test with {osp.relpath(data_root, REPO)}/target), '
          f'{time.time() - started:.0f} s in all:\n{table}\npredictions drawn in {osp.relpath(png, REPO)}')


if __name__ == '__main__':
    main()
