#!/usr/bin/env python
"""Compare tuners on one config: parameters, memory, bytes saved for backward, speed.

For every tuner a fresh subprocess builds the model of CONFIG with
``model.tuner`` replaced by that tuner's config, takes one batch (from the
config's ``train_dataloader``, or a synthetic batch of the model type's
real shapes from :func:`sherl_mm.benchmark.synthetic_batch`),
and measures

* trainable parameters (M and % of all parameters);
* peak training memory (warm-up + timed ``model.train_step`` calls with the
  config's optimiser) and peak inference memory (``model.val_step`` under
  ``torch.no_grad()``);
* bytes saved for backward by one training forward (saved-tensor hooks;
  activations only, the model's own weights excluded; exact and
  device-independent);
* median training-step and inference-step time after warm-up;

and writes every figure also as a ratio to full fine-tuning measured in the
same run, to ``OUT/benchmark.json`` and ``OUT/benchmark.md``; with
accuracies (``--accuracy-json`` or ``benchmark=dict(accuracy=...)`` in the
config) also ``OUT/memory_vs_accuracy.png``.

Usage::

    python tools/analysis/benchmark_tuners.py CONFIG \
        --tuners full,linear,lora,adapter,bitfit,prompt,lst,unipt,sherl \
        [--iters 10] [--warmup 3] [--batch-size 8] [--device cuda] [--out work_dirs/bench] \
        [--accuracy-json acc.json] [--cfg-options key=value ...]

Config hooks (all optional)::

    # per-tuner overrides: a short name -> a complete TUNERS config (it
    # replaces the built-in default; new short names are allowed)
    benchmark_tuners = dict(lora=dict(type='LoRA', rank=4), sherl_r4=dict(type='SHERL', ...))
    # 'synthetic': take the batch from sherl_mm.benchmark.synthetic_batch(model, batch_size)
    benchmark = dict(batch='dataloader', accuracy=dict(full=86.5, sherl=83.0),
                     accuracy_label='RefCOCO val Acc@0.5')

The short name whose built-in type equals the config's own ``model.tuner``
type (e.g. ``sherl`` for a SHERL config) uses the config's tuner settings.
Otherwise a sibling config of the same task (``configs/lora_mdetr_refcoco.py``
beside ``configs/sherl_mdetr_refcoco.py``; ``fullft_`` for ``full``) gives
its ``model.tuner``, so that each method is measured as its config trains it.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import os.path as osp
import statistics
import subprocess
import sys
import time
import traceback

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

#: Built-in tuner configs per short name.
DEFAULT_TUNERS = {
    'full': dict(type='FullFineTune'),
    'linear': dict(type='LinearProbe'),
    'lora': dict(type='LoRA', rank=8),
    'adapter': dict(type='Adapter'),
    'bitfit': dict(type='BitFit'),
    'prompt': dict(type='PromptTuning'),
    'lst': dict(type='LST'),
    'unipt': dict(type='UniPT'),
    'sherl': dict(type='SHERL'),
}

#: (json key, ratio key, markdown header, format of the value)
METRICS = [
    ('params_trainable_m', 'params_trainable_ratio', 'trainable params (M)', '{:.4f}'),
    ('train_mem_gib', 'train_mem_ratio', 'train mem (GiB)', '{:.4f}'),
    ('infer_mem_gib', 'infer_mem_ratio', 'infer mem (GiB)', '{:.4f}'),
    ('saved_mib', 'saved_ratio', 'saved for backward (MiB)', '{:.3f}'),
    ('train_step_ms', 'train_step_ratio', 'train step (ms)', '{:.2f}'),
    ('infer_step_ms', 'infer_step_ratio', 'infer step (ms)', '{:.2f}'),
]


# ============================================================================
# Tuner configs
# ============================================================================

#: file-name prefix of a tuner's sibling configs, where it is not the short name
CONFIG_PREFIX = {'full': 'fullft'}


def sibling_tuner(config_path: str | None, name: str) -> dict | None:
    """``model.tuner`` of the sibling config for the tuner ``name``
    (``<prefix>_<task>.py`` in the same folder) of ``config_path`` or of the
    first ``_base_`` config named that way, if there is one."""
    if not config_path:
        return None
    from mmengine.config import Config

    from sherl_mm.engine.validate import config_files
    prefixes = {CONFIG_PREFIX.get(n, n) for n in DEFAULT_TUNERS}
    for path in config_files(config_path):
        folder, base = osp.split(path)
        head, _, task = base.partition('_')
        if head in prefixes and task:
            sibling = osp.join(folder, f'{CONFIG_PREFIX.get(name, name)}_{task}')
            if not osp.isfile(sibling) or osp.samefile(sibling, path):
                return None
            tuner = Config.fromfile(sibling).model.get('tuner', None)
            return _to_plain(dict(tuner)) if tuner else None
    return None


def resolve_tuners(cfg, names: list[str]) -> dict[str, dict]:
    """Map each short name to the tuner config the benchmark uses for it."""
    overrides = dict(cfg.get('benchmark_tuners', None) or {})
    own = cfg.model.get('tuner', None)
    own = copy.deepcopy(dict(own)) if own else None
    known = sorted(set(DEFAULT_TUNERS) | set(overrides))
    resolved = {}
    for name in names:
        if name in overrides:
            tuner = _to_plain(overrides[name])
        elif name in DEFAULT_TUNERS:
            tuner = copy.deepcopy(DEFAULT_TUNERS[name])
            if own is not None and own.get('type') == tuner['type']:
                tuner = copy.deepcopy(own)
            else:
                tuner = sibling_tuner(cfg.filename, name) or tuner
        else:
            raise SystemExit(f'benchmark_tuners: unknown tuner short name {name!r}; known: {", ".join(known)} '
                             f'(add others with benchmark_tuners=dict({name}=dict(type=...)) in the config)')
        if not isinstance(tuner, dict) or 'type' not in tuner:
            raise SystemExit(f'benchmark_tuners: the config for {name!r} must be a dict with a "type", got {tuner!r}')
        resolved[name] = tuner
    return resolved


def _to_plain(obj):
    """ConfigDict / tuples -> plain JSON-able dicts and lists."""
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    return obj


# ============================================================================
# Worker: one tuner, in its own process
# ============================================================================

def _sync(device) -> None:
    import torch
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _first_batch(cfg, batch_size: int | None, seed: int):
    from mmengine.runner import Runner
    if 'train_dataloader' not in cfg or cfg.train_dataloader is None:
        raise RuntimeError('the config has no train_dataloader; set benchmark=dict(batch="synthetic") '
                           'for a model type with a synthetic batch (sherl_mm.benchmark)')
    dl_cfg = copy.deepcopy(cfg.train_dataloader)
    if batch_size is not None:
        # A batch_sampler config (mmdet's AspectRatioBatchSampler) takes the
        # dataloader's batch_size unless it sets its own.
        dl_cfg['batch_size'] = batch_size
        if isinstance(dl_cfg.get('batch_sampler'), dict) and 'batch_size' in dl_cfg['batch_sampler']:
            dl_cfg['batch_sampler']['batch_size'] = batch_size
    dl_cfg['num_workers'] = 0
    dl_cfg['persistent_workers'] = False
    dl_cfg.pop('prefetch_factor', None)
    loader = Runner.build_dataloader(dl_cfg, seed=seed)
    return next(iter(loader))


def _build_optim_wrapper(model, cfg, device, notes: list[str]):
    from mmengine.optim import build_optim_wrapper
    optim_cfg = copy.deepcopy(cfg.get('optim_wrapper', None))
    if not optim_cfg:
        optim_cfg = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-4))
        notes.append('no optim_wrapper in the config: AdamW(lr=1e-4)')
    if device.type != 'cuda' and optim_cfg.get('type') == 'AmpOptimWrapper':
        # as tools/train.py trains it on a machine without CUDA
        optim_cfg['type'] = 'CpuBf16OptimWrapper'
        for key in ('loss_scale', 'use_fsdp'):
            optim_cfg.pop(key, None)
        notes.append('AmpOptimWrapper needs CUDA: measured with CpuBf16OptimWrapper (bf16 autocast) on the CPU, '
                     'as tools/train.py trains with it')
    return build_optim_wrapper(model, optim_cfg)


def _median_ms(times: list[float]) -> float | None:
    return statistics.median(times) * 1000.0 if times else None


def _time_steps(step, batch, device, warmup: int, iters: int) -> list[float]:
    times = []
    for i in range(warmup + iters):
        data = copy.deepcopy(batch)
        _sync(device)
        start = time.perf_counter()
        step(data)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def run_worker(job: dict) -> dict:
    """Measure one tuner; returns the result row (errors recorded in it)."""
    import torch
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    from sherl_mm.utils.memory import PeakMemoryMeter, SavedTensorCounter, to_gib, to_mib, trim_host_memory
    from sherl_mm.utils.modules import count_parameters

    row = dict(name=job['name'], tuner=job['tuner'], status='ok', errors={}, notes=[])
    notes = row['notes']
    device = torch.device(job['device'])
    if job.get('threads'):
        torch.set_num_threads(job['threads'])
    cfg = Config.fromfile(job['config'])
    if job.get('cfg_options'):
        cfg.merge_from_dict(job['cfg_options'])
    init_default_scope(cfg.get('default_scope', 'sherl_mm'))
    import sherl_mm  # noqa: F401  (registries)
    from sherl_mm.registry import MODELS

    cfg.model.tuner = job['tuner']
    bench = dict(cfg.get('benchmark', None) or {})
    synthetic = job.get('synthetic') or bench.get('batch', 'dataloader') == 'synthetic'

    torch.manual_seed(job['seed'])
    batch = None if synthetic else _first_batch(cfg, job.get('batch_size'), job['seed'])
    torch.manual_seed(job['seed'])
    model = MODELS.build(cfg.model)
    if job.get('init_weights', True) and hasattr(model, 'init_weights'):
        model.init_weights()
    model.to(device)
    if synthetic:
        from sherl_mm.benchmark import synthetic_batch
        batch = synthetic_batch(model, job.get('batch_size') or 2, seed=job['seed'])
        notes.append(f'synthetic batch of {type(model).__name__} (sherl_mm.benchmark)')
    optim_wrapper = _build_optim_wrapper(model, cfg, device, notes)

    params = count_parameters(model)
    row.update(model=type(model).__name__, params_total=params.total, params_trainable=params.trainable,
               params_trainable_m=params.trainable / 1e6, params_trainable_pct=params.share)
    warmup, iters = job['warmup'], job['iters']

    def record_error(key, exc):
        row['errors'][key] = f'{type(exc).__name__}: {exc}'
        row['status'] = 'partial'
        traceback.print_exc()

    def measure_phase(phase: str, error_key: str, step, training: bool) -> None:
        """Peak memory and step times of ``warmup + iters`` calls of ``step``."""
        model.train(training)
        trim_host_memory()
        try:
            meter = PeakMemoryMeter(device)
            with meter:
                times = _time_steps(step, batch, device, warmup, iters)
            _store_mem(row, phase, meter.reading, device, to_gib)
            row[f'{phase}_step_ms'] = _median_ms(times)
            row[f'{phase}_step_ms_all'] = [t * 1000.0 for t in times]
        except Exception as exc:  # noqa: BLE001 - report and go on with the other figures
            record_error(error_key, exc)

    def infer_step(data):
        with torch.no_grad():
            model.val_step(data)

    def train_step(data):
        model.train_step(data, optim_wrapper)

    # inference first: no gradients or optimiser state exist yet
    measure_phase('infer', 'inference', infer_step, training=False)
    measure_phase('train', 'train', train_step, training=True)

    # -- bytes saved for backward by one training forward --------------------
    try:
        model.train()
        optim_wrapper.zero_grad()
        data = copy.deepcopy(batch)
        with optim_wrapper.optim_context(model):
            data = model.data_preprocessor(data, True)
            with SavedTensorCounter(exclude=model) as counter:
                losses = model._run_forward(data, mode='loss')
                loss, _ = model.parse_losses(losses)
        loss.backward()
        optim_wrapper.zero_grad()
        stats = counter.stats
        row.update(saved_bytes=stats.bytes, saved_mib=to_mib(stats.bytes), saved_param_bytes=stats.param_bytes,
                   saved_tensors=stats.num_saved, saved_storages=stats.num_storages)
    except Exception as exc:  # noqa: BLE001
        record_error('saved_tensors', exc)
    if len(row['errors']) == 3:
        row['status'] = 'error'
    return row


def _store_mem(row: dict, phase: str, reading, device, to_gib) -> None:
    # CUDA: the absolute allocator peak (as the papers report it); CPU: the
    # RSS peak above the RSS once the model was built.
    headline = reading.peak if device.type == 'cuda' else reading.delta
    row[f'{phase}_mem_bytes'] = headline
    row[f'{phase}_mem_gib'] = to_gib(headline)
    row[f'{phase}_mem_peak_bytes'] = reading.peak
    row[f'{phase}_mem_baseline_bytes'] = reading.baseline
    row[f'{phase}_mem_method'] = reading.method


def worker_main(job_path: str) -> int:
    with open(job_path) as f:
        job = json.load(f)
    try:
        row = run_worker(job)
    except Exception as exc:  # noqa: BLE001 - the parent reports it in the table
        traceback.print_exc()
        row = dict(name=job['name'], tuner=job['tuner'], status='error',
                   errors={'build': f'{type(exc).__name__}: {exc}'}, notes=[])
    with open(job['result'], 'w') as f:
        json.dump(row, f, indent=2, default=str)
    return 0


# ============================================================================
# Parent: run the workers, compute ratios, write the outputs
# ============================================================================

def add_ratios(rows: list[dict], reference: str) -> None:
    """``<metric>_ratio = value / reference's value`` (the reference's own
    ratios are 1.0; ``None`` where a figure is missing or the reference's is 0)."""
    ref = next((r for r in rows if r['name'] == reference), None)
    for row in rows:
        for key, ratio_key, _, _ in METRICS:
            value = row.get(key)
            base = ref.get(key) if ref is not None else None
            if value is None or base is None:
                row[ratio_key] = None
            elif row is ref:
                row[ratio_key] = 1.0
            else:
                row[ratio_key] = value / base if base else None


def _caption(meta: dict) -> str:
    dev = meta['device']
    if dev.startswith('cuda'):
        mem = ('Memory: `torch.cuda.max_memory_allocated()` per phase (the allocator peak, reset when the phase '
               'starts), absolute: it includes the weights and, for training, gradients and optimiser state; '
               'it excludes the CUDA context and cached free blocks.')
    else:
        mem = ('Memory (CPU): the peak resident memory (RSS) of the worker process during the phase **minus its RSS '
               'once the model was built** (sampled from /proc/self/statm, plus `ru_maxrss` when the phase set a new '
               'process high; glibc run with `MALLOC_MMAP_THRESHOLD_=65536` so that freed tensors leave RSS). It '
               'excludes the weights; training includes gradients and optimiser state. Sampling makes small figures '
               'approximate; "saved for backward" is the exact, device-independent activation figure.')
    return (f'Tuners on `{meta["config"]}` ({meta["model"] or "?"}), device `{dev}`, batch size '
            f'{meta["batch_size"] or "as in the config"}, {meta["warmup"]} warm-up + {meta["iters"]} timed steps, '
            f'one process per tuner. {mem} GiB = 2^30 bytes; the SHERL paper\'s "GB" is MiB/1000 = GiB × 1.024. '
            f'Saved for backward: bytes of the distinct storages autograd keeps for backward in one training '
            f'forward, weights excluded. Times: medians. (×r) = ratio to `{meta["reference"]}` in the same run.')


def _fmt(value, ratio, fmt: str) -> str:
    if value is None:
        return 'n/a'
    text = fmt.format(value)
    if ratio is not None:
        text += f' (×{ratio:.3g})'
    return text


def markdown_table(rows: list[dict], meta: dict) -> str:
    header = ['tuner', 'type', *[m[2] for m in METRICS[:1]], 'trainable %', *[m[2] for m in METRICS[1:]], 'status']
    lines = [f'**{_caption(meta)}**', '', '| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for row in rows:
        cells = [row['name'], str(row['tuner'].get('type', '?'))]
        for i, (key, ratio_key, _, fmt) in enumerate(METRICS):
            cells.append(_fmt(row.get(key), row.get(ratio_key), fmt))
            if i == 0:
                pct = row.get('params_trainable_pct')
                cells.append('n/a' if pct is None else f'{pct:.3f}')
        status = row['status']
        if row.get('errors'):
            status += ': ' + '; '.join(f'{k}: {v}' for k, v in row['errors'].items()).replace('|', '\\|')[:300]
        cells.append(status)
        lines.append('| ' + ' | '.join(c.replace('\n', ' ') for c in cells) + ' |')
    notes = sorted({n for row in rows for n in row.get('notes', [])})
    if notes:
        lines += [''] + [f'* {n}' for n in notes]
    return '\n'.join(lines) + '\n'


def load_accuracies(path: str | None, cfg) -> tuple[dict, str]:
    bench = dict(cfg.get('benchmark', None) or {})
    acc = dict(bench.get('accuracy', None) or {})
    label = bench.get('accuracy_label', 'accuracy')
    if path:
        with open(path) as f:
            data = json.load(f)
        label = data.pop('_label', label) if isinstance(data, dict) else label
        acc.update(data)
    clean = {}
    for name, value in acc.items():
        if isinstance(value, dict):
            value = value.get('accuracy')
        if value is not None:
            clean[name] = float(value)
    return clean, label


def plot_memory_vs_accuracy(rows: list[dict], accuracies: dict, label: str, meta: dict, path: str) -> str | None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    points = [(r['name'], r['train_mem_gib'], accuracies[r['name']], r.get('params_trainable_m') or 0.0)
              for r in rows if r['name'] in accuracies and r.get('train_mem_gib') is not None]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    sizes = [max(p[3], 1e-6) for p in points]
    biggest = max(sizes)
    for name, mem, acc, params in points:
        size = 40 + 360 * math.sqrt(max(params, 1e-6) / biggest)
        ax.scatter([mem], [acc], s=size, alpha=0.6, edgecolors='black', linewidths=0.6,
                   color='tab:red' if name == 'sherl' else 'tab:blue')
        ax.annotate(f'{name} ({params:.3g}M)', (mem, acc), textcoords='offset points', xytext=(6, 6), fontsize=8)
    where = 'CUDA allocator peak' if meta['device'].startswith('cuda') else 'RSS peak over model baseline'
    ax.set_xlabel(f'peak training memory (GiB, {where})')
    ax.set_ylabel(label)
    ax.set_title('Accuracy vs training memory (marker area ~ trainable params)', fontsize=10)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def parse_args(argv=None):
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config', help='config whose model has a `tuner` field')
    parser.add_argument('--tuners', default='full,linear,lora,adapter,bitfit,prompt,lst,unipt,sherl',
                        help='comma-separated short names (built-in: %s; more via benchmark_tuners in the config)'
                        % ','.join(DEFAULT_TUNERS))
    parser.add_argument('--reference', default='full',
                        help='short name the ratios refer to; added to --tuners when missing (default: full)')
    parser.add_argument('--iters', type=int, default=10, help='timed steps per phase (default 10)')
    parser.add_argument('--warmup', type=int, default=3, help='untimed steps before them (default 3)')
    parser.add_argument('--batch-size', type=int, default=None, help='override the dataloader batch size')
    parser.add_argument('--device', default=None, help='cpu or cuda[:i] (default: cuda when available)')
    parser.add_argument('--out', default=None, help='output folder (default work_dirs/benchmark_tuners/<config>)')
    parser.add_argument('--accuracy-json', default=None,
                        help='JSON {short name: accuracy, "_label": axis label} for the memory-vs-accuracy plot')
    parser.add_argument('--synthetic', action='store_true',
                        help="use the model type's synthetic batch (sherl_mm.benchmark) instead of the dataloader")
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=None, help='torch.set_num_threads in the workers')
    parser.add_argument('--timeout', type=float, default=None, help='seconds per tuner subprocess')
    parser.add_argument('--no-init-weights', action='store_true', help='skip model.init_weights()')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config settings')
    args = parser.parse_args(argv)
    if args.iters < 1 or args.warmup < 0:
        parser.error('--iters must be >= 1 and --warmup >= 0')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    from mmengine.config import Config

    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    if device.startswith('cuda') and not torch.cuda.is_available():
        raise SystemExit('--device cuda: CUDA is not available on this machine; use --device cpu')
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if 'model' not in cfg or not isinstance(cfg.model, dict):
        raise SystemExit(f'{args.config}: no model dict in the config')
    names = [n.strip() for n in args.tuners.split(',') if n.strip()]
    if args.reference not in names:
        names.insert(0, args.reference)
    names = list(dict.fromkeys(names))
    tuners = resolve_tuners(cfg, names)

    out = args.out or osp.join('work_dirs', 'benchmark_tuners', osp.splitext(osp.basename(args.config))[0])
    os.makedirs(osp.join(out, 'workers'), exist_ok=True)
    env = dict(os.environ)
    env['PYTHONPATH'] = REPO_ROOT + (os.pathsep + env['PYTHONPATH'] if env.get('PYTHONPATH') else '')
    if not device.startswith('cuda'):
        from sherl_mm.utils.memory import CPU_MALLOC_ENV
        for key, value in CPU_MALLOC_ENV.items():
            env.setdefault(key, value)

    rows = []
    for name in names:
        job = dict(name=name, tuner=tuners[name], config=osp.abspath(args.config), cfg_options=args.cfg_options or {},
                   device=device, batch_size=args.batch_size, iters=args.iters, warmup=args.warmup, seed=args.seed,
                   threads=args.threads, synthetic=args.synthetic, init_weights=not args.no_init_weights,
                   result=osp.abspath(osp.join(out, 'workers', f'{name}.result.json')))
        job_path = osp.join(out, 'workers', f'{name}.job.json')
        with open(job_path, 'w') as f:
            json.dump(job, f, indent=2, default=str)
        if osp.exists(job['result']):
            os.remove(job['result'])
        log_path = osp.join(out, 'workers', f'{name}.log')
        print(f'[benchmark_tuners] {name}: {json.dumps(tuners[name])}', flush=True)
        start = time.perf_counter()
        with open(log_path, 'w') as log:
            try:
                proc = subprocess.run([sys.executable, osp.abspath(__file__), '--worker', job_path], env=env,
                                      stdout=log, stderr=subprocess.STDOUT, timeout=args.timeout)
                rc = proc.returncode
            except subprocess.TimeoutExpired:
                rc = 'timeout'
        if osp.exists(job['result']):
            with open(job['result']) as f:
                row = json.load(f)
        else:
            with open(log_path) as f:
                tail = f.read()[-800:]
            row = dict(name=name, tuner=tuners[name], status='error', notes=[],
                       errors={'worker': f'worker exited with {rc} and no result; log {log_path}: ...{tail}'})
        row['worker_log'] = log_path
        rows.append(row)
        print(f'[benchmark_tuners] {name}: {row["status"]} in {time.perf_counter() - start:.1f} s'
              + (f' {row["errors"]}' if row.get('errors') else ''), flush=True)

    add_ratios(rows, args.reference)
    meta = dict(config=args.config, model=next((r.get('model') for r in rows if r.get('model')), None),
                device=device, batch_size=args.batch_size, iters=args.iters, warmup=args.warmup,
                reference=args.reference, torch=torch.__version__,
                gpu=torch.cuda.get_device_name(torch.device(device)) if device.startswith('cuda') else None,
                units=dict(mem='GiB (2**30 bytes)', saved='MiB (2**20 bytes)', time='ms (median)',
                           paper_gb='MiB/1000 = GiB * 1.024'),
                memory_method='cuda_max_memory_allocated_absolute' if device.startswith('cuda')
                else 'cpu_rss_peak_minus_model_baseline',
                metrics={key: ratio for key, ratio, _, _ in METRICS})
    meta['caption'] = _caption(meta)

    accuracies, label = load_accuracies(args.accuracy_json, cfg)
    for row in rows:
        if row['name'] in accuracies:
            row['accuracy'] = accuracies[row['name']]
    with open(osp.join(out, 'benchmark.json'), 'w') as f:
        json.dump(dict(meta=meta, results=rows), f, indent=2, default=str)
    table = markdown_table(rows, meta)
    with open(osp.join(out, 'benchmark.md'), 'w') as f:
        f.write(table)
    print(table)
    if accuracies:
        png = plot_memory_vs_accuracy(rows, accuracies, label, meta, osp.join(out, 'memory_vs_accuracy.png'))
        print(f'[benchmark_tuners] plot: {png}' if png else
              '[benchmark_tuners] no tuner has both an accuracy and a training-memory figure: no plot')
    print(f'[benchmark_tuners] wrote {osp.join(out, "benchmark.json")} and {osp.join(out, "benchmark.md")}')
    return 0 if all(r['status'] == 'ok' for r in rows) else 1


if __name__ == '__main__':
    if len(sys.argv) == 3 and sys.argv[1] == '--worker':
        sys.exit(worker_main(sys.argv[2]))
    sys.exit(main())
