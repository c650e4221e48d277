"""tools/analysis/benchmark_tuners.py on a tiny registered model (tests/fixtures_bench)."""
import json
import os
import os.path as osp
import subprocess
import sys

import pytest
from _tools import load_tool
from mmengine.config import Config

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOL = osp.join(REPO, 'tools', 'analysis', 'benchmark_tuners.py')
CONFIG = osp.join(REPO, 'tests', 'fixtures_bench', 'tiny_config.py')

# The two tuners of the end-to-end run: the reference and SHERL.
SECOND = 'sherl'


bt = load_tool('analysis/benchmark_tuners.py')


def _job(tmp_path, name, tuner, **kw):
    job = dict(name=name, tuner=tuner, config=CONFIG, cfg_options={}, device='cpu', batch_size=3, iters=1,
               warmup=0, seed=0, threads=None, synthetic=False, init_weights=True,
               result=str(tmp_path / f'{name}.result.json'))
    job.update(kw)
    return job


# --------------------------------------------------------------------------
# tuner resolution, ratios, table
# --------------------------------------------------------------------------


def test_resolve_tuners_uses_config_settings_and_overrides():
    cfg = Config.fromfile(CONFIG)
    cfg.model.tuner = dict(type='SHERL', per_stack=dict(encoder=dict(select_layers=[0, 1])))
    tuners = bt.resolve_tuners(cfg, ['full', 'lora', 'sherl', 'bitfit'])
    assert tuners['full'] == dict(type='FullFineTune')
    assert tuners['lora'] == dict(type='LoRA', rank=2)  # benchmark_tuners in the config
    assert tuners['sherl'] == dict(type='SHERL', per_stack=dict(encoder=dict(select_layers=[0, 1])))
    assert tuners['bitfit'] == dict(type='BitFit')
    with pytest.raises(SystemExit, match='unknown tuner short name'):
        bt.resolve_tuners(cfg, ['nope'])


def test_add_ratios():
    rows = [dict(name='full', params_trainable_m=2.0, train_mem_gib=4.0, infer_mem_gib=0.0, saved_mib=8.0,
                 train_step_ms=10.0, infer_step_ms=None),
            dict(name='x', params_trainable_m=0.5, train_mem_gib=1.0, infer_mem_gib=0.5, saved_mib=2.0,
                 train_step_ms=5.0, infer_step_ms=3.0)]
    bt.add_ratios(rows, 'full')
    full, x = rows
    assert full['params_trainable_ratio'] == full['train_mem_ratio'] == full['infer_mem_ratio'] == 1.0
    assert full['infer_step_ratio'] is None
    assert x['params_trainable_ratio'] == 0.25 and x['train_mem_ratio'] == 0.25 and x['saved_ratio'] == 0.25
    assert x['train_step_ratio'] == 0.5
    assert x['infer_mem_ratio'] is None  # reference figure is 0
    assert x['infer_step_ratio'] is None  # reference figure missing


# --------------------------------------------------------------------------
# the worker, in process
# --------------------------------------------------------------------------


def test_worker_dataloader_batch_counts(tmp_path):
    row = bt.run_worker(_job(tmp_path, 'linear', dict(type='LinearProbe'), iters=2))
    assert row['status'] == 'ok', row['errors']
    # Only the classification head trains: 16 * 3 + 3.
    assert row['params_trainable'] == 51
    assert row['params_trainable_pct'] == pytest.approx(100 * 51 / row['params_total'])
    # The frozen stack saves nothing. The head saves its (3, 16) fp32 input;
    # cross-entropy its (3, 3) log-softmax (saved by log_softmax and by
    # nll_loss: one storage), the int64 targets and a scalar total weight.
    assert row['saved_bytes'] == 3 * 16 * 4 + 3 * 3 * 4 + 3 * 8 + 4
    assert row['saved_tensors'] == 5 and row['saved_storages'] == 4
    assert len(row['train_step_ms_all']) == 2 and len(row['infer_step_ms_all']) == 2
    assert row['train_mem_bytes'] >= 0 and row['infer_mem_bytes'] >= 0
    assert row['train_mem_method'].startswith('process RSS')


def test_worker_synthetic_batch(tmp_path):
    row = bt.run_worker(_job(tmp_path, 'full', dict(type='FullFineTune'), synthetic=True, batch_size=2))
    assert row['status'] == 'ok', row['errors']
    assert row['params_trainable'] == row['params_total']
    assert 'synthetic batch of BenchTinyClassifier (sherl_mm.benchmark)' in row['notes']
    assert row['saved_bytes'] > 2 * 16 * 4


def test_worker_measures_cpu_amp_as_training_runs_it(tmp_path):
    """An AmpOptimWrapper config is measured on the CPU with CpuBf16OptimWrapper, as tools/train.py trains
    it there: the forward runs under bf16 autocast, so the head saves its (3, 16) input in bf16, half the
    fp32 bytes of the same run without AMP."""
    fp32 = bt.run_worker(_job(tmp_path, 'fp32', dict(type='LinearProbe')))
    amp = bt.run_worker(_job(tmp_path, 'amp', dict(type='LinearProbe'),
                             cfg_options={'optim_wrapper.type': 'AmpOptimWrapper'}))
    assert fp32['status'] == amp['status'] == 'ok', (fp32['errors'], amp['errors'])
    assert any('CpuBf16OptimWrapper' in note for note in amp['notes'])
    assert fp32['saved_bytes'] - amp['saved_bytes'] == 3 * 16 * (4 - 2)


def test_grounding_synthetic_batch_feeds_the_grounding_model():
    """The paper-size MDETR benchmark's input (benchmark=dict(batch='synthetic')) comes from
    sherl_mm.benchmark, not from the model class: random images of the requested size with one caption
    span and box each, which the grounding model's preprocessor and loss accept."""
    import _tiny_grounding as T
    from sherl_mm.benchmark import synthetic_batch
    from sherl_mm.benchmark.synthetic import grounding_batch
    from torch import nn

    model = T.build_tiny()
    assert not hasattr(model, 'synthetic_batch')
    batch = grounding_batch(model, 2, image_size=(64, 96))
    assert [tuple(x.shape) for x in batch['inputs']] == [(3, 64, 96)] * 2
    losses = model(**model.data_preprocessor(batch, True), mode='loss')
    assert all(v.isfinite().all() for k, v in losses.items() if 'loss' in k)
    full_size = synthetic_batch(model, 1)          # looked up by the model's class: MDETR's test scale
    assert tuple(full_size['inputs'][0].shape) == (3, 800, 1066)
    with pytest.raises(KeyError, match='no synthetic batch for Linear'):
        synthetic_batch(nn.Linear(2, 2), 1)


def test_worker_reports_build_errors(tmp_path):
    job = _job(tmp_path, 'bogus', dict(type='NoSuchTuner'))
    path = tmp_path / 'bogus.job.json'
    path.write_text(json.dumps(job))
    assert bt.worker_main(str(path)) == 0
    row = json.loads((tmp_path / 'bogus.result.json').read_text())
    assert row['status'] == 'error'
    assert 'NoSuchTuner' in row['errors']['build'] and 'not registered' in row['errors']['build']


# --------------------------------------------------------------------------
# end to end: two tuners, one subprocess each
# --------------------------------------------------------------------------


def test_benchmark_end_to_end(tmp_path):
    out = tmp_path / 'bench'
    acc = tmp_path / 'acc.json'
    acc.write_text(json.dumps({'full': 90.0, SECOND: 88.5, '_label': 'toy accuracy'}))
    env = dict(os.environ)
    env.pop('PYTHONPATH', None)
    proc = subprocess.run(
        [sys.executable, TOOL, CONFIG, '--tuners', SECOND, '--iters', '2', '--warmup', '1', '--device', 'cpu',
         '--out', str(out), '--accuracy-json', str(acc)],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    data = json.loads((out / 'benchmark.json').read_text())
    meta, rows = data['meta'], data['results']
    assert meta['reference'] == 'full' and meta['device'] == 'cpu'
    assert meta['memory_method'] == 'cpu_rss_peak_minus_model_baseline'
    # The reference is added in front when --tuners does not name it.
    assert [r['name'] for r in rows] == ['full', SECOND]
    full, other = rows
    assert full['tuner'] == {'type': 'FullFineTune'}
    ratio_keys = ['params_trainable_ratio', 'train_mem_ratio', 'infer_mem_ratio', 'saved_ratio',
                  'train_step_ratio', 'infer_step_ratio']
    for row in rows:
        assert row['status'] == 'ok', row['errors']
        for key in ratio_keys:
            assert key in row
        for key in ('params_trainable_m', 'params_trainable_pct', 'train_mem_gib', 'infer_mem_gib', 'saved_mib',
                    'saved_bytes', 'train_step_ms', 'infer_step_ms'):
            assert row[key] is not None, key
    for key in ratio_keys:
        assert full[key] == 1.0
    assert full['params_trainable_pct'] == 100.0
    assert other['params_trainable'] < full['params_trainable']
    assert other['params_trainable_ratio'] == pytest.approx(other['params_trainable'] / full['params_trainable'])
    assert other['saved_ratio'] == pytest.approx(other['saved_bytes'] / full['saved_bytes'])
    assert other['accuracy'] == 88.5

    table = (out / 'benchmark.md').read_text()
    assert 'minus its RSS once the model was built' in table  # the CPU caption
    assert '| full | FullFineTune |' in table and f'| {SECOND} |' in table
    assert '(×1)' in table
    png = out / 'memory_vs_accuracy.png'
    assert png.is_file() and png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert (out / 'workers' / 'full.log').is_file()


def test_sibling_configs_give_each_tuner_its_settings():
    """configs/benchmark/mdetr_refcoco_paper_size.py derives from sherl_mdetr_refcoco.py, whose
    siblings (lora_, fullft_ ...) set the other tuners."""
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'benchmark', 'mdetr_refcoco_paper_size.py'))
    tuners = bt.resolve_tuners(cfg, ['full', 'lora', 'sherl', 'linear'])
    assert tuners['lora'] == dict(type='LoRA', rank=8, alpha=16)
    assert tuners['full']['per_stack'] == dict(image=dict(frozen_modules=r'conv1|bn1|layers\.[0-2]'))
    assert tuners['sherl']['per_stack']['decoder'] == dict(select_layers=[0, 2, 3, 4], num_late_layers=1)
    assert tuners['linear'] == dict(type='LinearProbe')      # no linear_mdetr_refcoco.py: the built-in default


def test_cache_benchmark_config_and_epoch_times(tmp_path):
    """benchmark_feature_cache.py: the derived config keeps the config's other custom hooks (EMA)
    and adds the cache hook; per-epoch times sum the logged iteration times."""
    cb = load_tool('analysis/benchmark_feature_cache.py')
    path = cb.derived_config(osp.join(REPO, 'configs', 'sherl_mdetr_refcoco.py'), str(tmp_path),
                             dict(type='EarlyRouteCacheHook', stacks=['image']))
    hooks = Config.fromfile(path).custom_hooks
    assert [h['type'] for h in hooks] == ['EMAHook', 'EarlyRouteCacheHook'] and hooks[1]['stacks'] == ['image']
    run = tmp_path / '20261201_000000'
    (run / 'vis_data').mkdir(parents=True)
    lines = [dict(epoch=1, iter=1, loss=1.0, time=0.5), dict(epoch=1, iter=2, loss=1.0, time=0.25),
             dict(epoch=2, iter=3, loss=1.0, time=0.125), dict(epoch=2, time=9.0)]   # the last: a val line
    (run / 'vis_data' / 'scalars.json').write_text('\n'.join(json.dumps(x) for x in lines))
    assert cb.epoch_seconds(str(run)) == [0.75, 0.125]
