"""Memory measurement: saved-tensor counting, peak meters, and the hooks
through an mmengine Runner on the CPU."""
import glob
import json
import mmap
import os.path as osp
import time

import pytest
import torch
from mmengine.evaluator import BaseMetric
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch import nn
from torch.utils.data import Dataset

from sherl_mm.engine.hooks import ParameterTableHook, PeakMemoryHook, parameter_rows, parameter_table
from sherl_mm.registry import HOOKS, METRICS
from sherl_mm.utils.memory import (GIB, PeakMemoryMeter, RSSPeakSampler, SavedTensorCounter, current_rss_bytes,
                                   process_peak_rss_bytes, saved_tensor_bytes, to_gib, to_paper_gb)

# --------------------------------------------------------------------------
# saved tensors
# --------------------------------------------------------------------------


def test_saved_bytes_linear_frozen_input():
    """Linear with a trainable weight and an input that needs no gradient:
    autograd saves only the input (for grad of the weight)."""
    lin = nn.Linear(4, 3)
    x = torch.randn(5, 4)
    stats = saved_tensor_bytes(lin, x, exclude=lin)
    assert stats.num_saved == 1
    assert stats.num_storages == 1
    assert stats.bytes == 5 * 4 * 4  # the fp32 input
    assert stats.param_bytes == 0
    assert stats.total_bytes == 80
    assert stats.by_device == {'cpu': 80}


def test_saved_bytes_linear_input_needs_grad():
    """Now the weight is saved as well (for grad of the input); it is a
    parameter, so it counts as param_bytes, not activation bytes."""
    lin = nn.Linear(4, 3)
    x = torch.randn(5, 4, requires_grad=True)
    stats = saved_tensor_bytes(lin, x, exclude=lin)
    assert stats.num_saved == 2
    assert stats.bytes == 80
    assert stats.param_bytes == 3 * 4 * 4
    assert stats.total_bytes == 80 + 48
    # Without exclude, the weight counts as an ordinary saved tensor.
    assert saved_tensor_bytes(lin, x).bytes == 128


def test_saved_bytes_dedupes_storages():
    """x * x saves x twice (one storage); relu saves its output; a view
    shares its base's storage."""
    x = torch.randn(5, 4, requires_grad=True)
    stats = saved_tensor_bytes(lambda: (x * x).relu())
    assert stats.num_saved == 3
    assert stats.num_storages == 2
    assert stats.bytes == 2 * 80

    y = torch.randn(6, 4, requires_grad=True)
    stats = saved_tensor_bytes(lambda: y[:3] * y[3:])
    assert stats.num_saved == 2
    assert stats.num_storages == 1
    assert stats.bytes == 6 * 4 * 4


def test_saved_bytes_frozen_net_saves_nothing_and_is_repeatable():
    net = nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 8)).requires_grad_(False)
    x = torch.randn(3, 8)
    assert saved_tensor_bytes(net, x).num_saved == 0
    head = nn.Linear(8, 2)
    a = saved_tensor_bytes(lambda: head(net(x)), exclude=head)
    b = saved_tensor_bytes(lambda: head(net(x)), exclude=head)
    assert a == b
    assert a.bytes == 3 * 8 * 4  # only the head's input


def test_counter_allows_backward_and_half_precision():
    lin = nn.Linear(4, 4).to(torch.bfloat16)
    x = torch.randn(2, 4, dtype=torch.bfloat16)
    with SavedTensorCounter(exclude=lin) as counter:
        loss = lin(x).float().sum()
    loss.backward()
    assert lin.weight.grad is not None
    assert counter.stats.bytes == 2 * 4 * 2  # the bf16 input


# --------------------------------------------------------------------------
# peak meters
# --------------------------------------------------------------------------


def test_units():
    assert to_gib(GIB) == 1.0
    assert to_paper_gb(GIB) == pytest.approx(1.024)
    assert to_gib(None) is None


def _resident_block(num_bytes: int) -> mmap.mmap:
    """A fresh anonymous mapping with every page written: resident memory that the C allocator cannot
    serve from free memory it already holds (a long test process may hold hundreds of MiB), and that
    ``close()`` gives back to the kernel at once."""
    block = mmap.mmap(-1, num_bytes)
    for offset in range(0, num_bytes, mmap.PAGESIZE):
        block[offset] = 1
    return block


def test_rss_readings_and_cpu_meter():
    assert current_rss_bytes() > 0
    assert process_peak_rss_bytes() >= current_rss_bytes() * 0.5
    meter = PeakMemoryMeter('cpu')
    with meter:
        _resident_block(128 * 2 ** 20).close()
    reading = meter.reading
    assert reading.peak >= reading.baseline
    assert reading.delta == reading.peak - reading.baseline
    # The sampler or ru_maxrss sees most of a 128 MiB block held while touched.
    assert reading.delta > 64 * 2 ** 20


def test_rss_sampler_reset_forgets_the_earlier_peak(monkeypatch):
    """After reset() the peak is the RSS from then on, not the high before it (scripted readings, no thread)."""
    import sherl_mm.utils.memory as memory
    rss = [500]
    monkeypatch.setattr(memory, 'current_rss_bytes', lambda: rss[0])
    sampler = RSSPeakSampler()
    sampler.sample()
    rss[0] = 100
    assert sampler.peak_bytes == 500
    sampler.reset()
    assert sampler.peak_bytes == 100
    rss[0] = 300
    assert sampler.peak_bytes == 300


def test_rss_sampler_reset_with_real_memory():
    """A 128 MiB block held and freed before reset() counts in the peak before it, not after."""
    sampler = RSSPeakSampler(interval=0.001).start()
    try:
        block = _resident_block(128 * 2 ** 20)
        high = sampler.peak_bytes
        block.close()
        sampler.reset()
        assert high - sampler.peak_bytes > 64 * 2 ** 20
    finally:
        sampler.stop()


# --------------------------------------------------------------------------
# hooks through a Runner
# --------------------------------------------------------------------------


class _ToyDataset(Dataset):
    def __len__(self):
        return 16

    def __getitem__(self, idx):
        g = torch.Generator().manual_seed(idx)
        return dict(inputs=torch.randn(8, generator=g), data_samples=torch.tensor(idx % 2))


class _ToyModel(BaseModel):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16)).requires_grad_(False)
        self.head = nn.Linear(16, 2)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        logits = self.head(self.backbone(inputs))
        if mode == 'loss':
            return dict(loss=nn.functional.cross_entropy(logits, data_samples))
        return logits


@METRICS.register_module(force=True)
class _ToyAccuracy(BaseMetric):
    def process(self, data_batch, data_samples):
        for logits, label in zip(data_samples, data_batch['data_samples']):
            self.results.append(float(logits.argmax() == label))

    def compute_metrics(self, results):
        return dict(acc=sum(results) / len(results))


def _runner(tmp_path, custom_hooks, max_iters=6, log_interval=2, val_interval=None, model=None):
    loader = dict(dataset=_ToyDataset(), sampler=dict(type='DefaultSampler', shuffle=False),
                  collate_fn=dict(type='default_collate'), batch_size=4, num_workers=0)
    evaluation = {}
    if val_interval:
        evaluation = dict(val_dataloader=loader, val_cfg=dict(), val_evaluator=dict(type='_ToyAccuracy'),
                          test_dataloader=loader, test_cfg=dict(), test_evaluator=dict(type='_ToyAccuracy'))
    return Runner(
        model=model or _ToyModel(),
        work_dir=str(tmp_path),
        train_dataloader=loader,
        train_cfg=dict(by_epoch=False, max_iters=max_iters, val_interval=val_interval or 10 ** 6),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        default_hooks=dict(logger=dict(type='LoggerHook', interval=log_interval),
                           checkpoint=dict(type='CheckpointHook', interval=10 ** 6, by_epoch=False)),
        log_processor=dict(by_epoch=False),
        custom_hooks=custom_hooks,
        default_scope='sherl_mm',
        experiment_name=f'mem_{tmp_path.name}',
        **evaluation,
    )


def _scalars(tmp_path):
    files = glob.glob(osp.join(str(tmp_path), '*', 'vis_data', 'scalars.json'))
    assert len(files) == 1, files
    with open(files[0]) as f:
        return [json.loads(line) for line in f if line.strip()]


def _log_text(tmp_path):
    files = glob.glob(osp.join(str(tmp_path), '*', '*.log'))
    assert len(files) == 1, files
    with open(files[0]) as f:
        return f.read()


def test_hooks_are_registered():
    assert HOOKS.get('PeakMemoryHook') is PeakMemoryHook
    assert HOOKS.get('ParameterTableHook') is ParameterTableHook


def test_peak_memory_hook_cpu_runner(tmp_path):
    runner = _runner(tmp_path, [dict(type='PeakMemoryHook', paper_units=True)])
    runner.train()
    records = _scalars(tmp_path)
    iter_records = [r for r in records if 'loss' in r]
    assert [r['step'] for r in iter_records] == [2, 4, 6]
    for r in iter_records:
        assert 0.01 < r['peak_mem_gib'] < 1024  # the process peak RSS, in GiB
        assert r['peak_mem_paper_gb'] == pytest.approx(r['peak_mem_gib'] * 1.024)
    # ru_maxrss never decreases.
    values = [r['peak_mem_gib'] for r in iter_records]
    assert values == sorted(values)
    run = [r for r in records if 'peak_mem_run_gib' in r]
    assert len(run) == 1 and run[0]['peak_mem_run_gib'] >= values[-1]
    log = _log_text(tmp_path)
    assert 'peak_mem_gib:' in log
    assert 'ru_maxrss' in log
    assert 'whole-run peak memory' in log


class _SpikeModel(_ToyModel):
    """Holds 256 MiB of resident memory during its first training step only."""

    def __init__(self):
        super().__init__()
        self.steps = 0

    def forward(self, inputs, data_samples=None, mode='tensor'):
        if mode == 'loss':
            self.steps += 1
            if self.steps == 1:
                block = _resident_block(256 * 2 ** 20)
                time.sleep(0.2)   # held long enough for the 1 ms sampler, also on a busy machine
                block.close()
        return super().forward(inputs, data_samples, mode)


def test_peak_memory_hook_sampled_mode(tmp_path):
    """In sampled mode each log line reports the peak since the previous one: the first interval holds
    a 256 MiB spike, the later ones do not (with the sampler's reset broken they would repeat it)."""
    runner = _runner(tmp_path, [dict(type='PeakMemoryHook', cpu_mode='sampled', sample_interval=0.001)],
                     model=_SpikeModel())
    runner.train()
    iter_records = [r for r in _scalars(tmp_path) if 'loss' in r]
    assert len(iter_records) == 3
    assert all(r['peak_mem_gib'] > 0 for r in iter_records)
    first, *later = [r['peak_mem_gib'] for r in iter_records]
    assert first - max(later) > 0.125    # GiB: at least half the spike


class _ScriptedPeakHook(PeakMemoryHook):
    """Replaces the device counter by a scripted allocator: iteration i
    allocates ``script[i]`` bytes at its peak, and the counter reports the
    maximum since the last reset, like torch.cuda.max_memory_allocated."""

    script = [5, 1, 2, 9, 3, 4, 7, 1]

    def before_train(self, runner):
        self._i = -1
        self._peak_since_reset = 0
        self.resets = []
        super().before_train(runner)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self._i += 1
        self._peak_since_reset = max(self._peak_since_reset, self.script[self._i] * GIB)
        super().after_train_iter(runner, batch_idx, data_batch, outputs)

    def _read(self):
        return self._peak_since_reset

    def _reset(self):
        self.resets.append(getattr(self, '_i', -1))
        self._peak_since_reset = 0


def test_peak_memory_hook_interval_semantics(tmp_path):
    """The logged value is the peak since the previous log line; the
    whole-run peak is the maximum over all of them."""
    HOOKS.register_module(module=_ScriptedPeakHook, force=True)
    try:
        # validation after iterations 2, 4, 6 and 8 resets the counter in the
        # middle of each logging interval: the hook carries the part before it.
        runner = _runner(tmp_path, [dict(type='_ScriptedPeakHook')], max_iters=8, log_interval=3, val_interval=2)
        runner.train()
    finally:
        HOOKS._module_dict.pop('_ScriptedPeakHook', None)
    records = _scalars(tmp_path)
    iter_records = [r for r in records if 'loss' in r]
    # Log lines at iterations 3 and 6 (and none at 8: ignore_last, 16/4 = 4
    # batches per epoch so the epoch end never falls on a log line here).
    assert [r['step'] for r in iter_records] == [3, 6]
    assert [r['peak_mem_gib'] for r in iter_records] == [5.0, 9.0]
    run = [r for r in records if 'peak_mem_run_gib' in r]
    assert run[0]['peak_mem_run_gib'] == 9.0
    val_records = [r for r in records if 'acc' in r]
    assert len(val_records) == 4 and all(r['eval_peak_mem_gib'] == 0.0 for r in val_records)


def test_parameter_table_rows():
    model = _ToyModel()
    rows = parameter_rows(model)
    assert rows == [('backbone', 8 * 16 + 16 + 16 * 16 + 16, 0), ('head', 16 * 2 + 2, 34)]
    deep = parameter_rows(model, max_depth=2)
    assert ('backbone.0', 8 * 16 + 16, 0) in deep and ('head', 34, 34) in deep
    table = parameter_table(model)
    lines = table.splitlines()
    assert lines[0].split() == ['module', 'params', 'trainable', 'trainable', '%']
    assert lines[2].split() == ['backbone', '416', '0', '0.00']
    assert lines[3].split() == ['head', '34', '34', '100.00']
    assert lines[5].split() == ['TOTAL', '450', '34', '7.56']
    assert lines[6] == 'trainable params: 34 || all params: 450 || trainable%: 7.5556'


def test_parameter_table_hook_runner(tmp_path):
    runner = _runner(tmp_path, [dict(type='ParameterTableHook')], max_iters=2)
    runner.train()
    log = _log_text(tmp_path)
    assert 'Parameters of _ToyModel:' in log
    assert 'trainable params: 34 || all params: 450 || trainable%: 7.5556' in log
    assert runner.message_hub.get_info('params_trainable') == 34
    assert runner.message_hub.get_info('params_total') == 450


def test_peak_memory_hook_cuda_branch_with_fake_counter(tmp_path, monkeypatch):
    """The CUDA branch reads max_memory_allocated of the model's device and
    resets it at every log line (counter faked: no GPU needed)."""
    import sherl_mm.engine.hooks.memory_hook as hook_module
    calls = dict(reads=0, resets=[])
    counter = dict(peak=0)

    def fake_peak(device=None, reset=False):
        calls['reads'] += 1
        assert device == torch.device('cuda', 0)
        counter['peak'] = max(counter['peak'], 3 * GIB)
        return counter['peak']

    def fake_reset(device=None):
        calls['resets'].append(device)
        counter['peak'] = 0

    monkeypatch.setattr(hook_module, 'cuda_peak_bytes', fake_peak)
    monkeypatch.setattr(hook_module, 'reset_cuda_peak', fake_reset)

    class _CudaHook(PeakMemoryHook):
        @staticmethod
        def _model_device(runner):
            return torch.device('cuda', 0)

    HOOKS.register_module(module=_CudaHook, force=True)
    try:
        runner = _runner(tmp_path, [dict(type='_CudaHook')], max_iters=4, log_interval=2)
        runner.train()
    finally:
        HOOKS._module_dict.pop('_CudaHook', None)
    iter_records = [r for r in _scalars(tmp_path) if 'loss' in r]
    assert [r['peak_mem_gib'] for r in iter_records] == [3.0, 3.0]
    # once in before_train, then at the log lines after iterations 2 and 4
    assert len(calls['resets']) == 3
    log = _log_text(tmp_path)
    assert 'torch.cuda.max_memory_allocated() since the previous log line' in log
    assert 'CUDA allocator peak' in log


def test_peak_memory_hook_val_and_test(tmp_path):
    runner = _runner(tmp_path, [dict(type='PeakMemoryHook', cpu_mode='sampled')], max_iters=4, log_interval=2,
                     val_interval=2)
    runner.train()
    runner.test()
    records = _scalars(tmp_path)
    evals = [r for r in records if 'acc' in r]
    assert len(evals) == 2  # val after iterations 2 and 4
    assert all(r['eval_peak_mem_gib'] > 0.01 for r in evals)
    assert len([r for r in records if 'peak_mem_gib' in r]) == 2
    # (the test run's scalars do not reach scalars.json: train's after_run
    # closed the visualizer; its log line has the figure)
    test_lines = [line for line in _log_text(tmp_path).splitlines() if 'Iter(test)' in line and 'acc:' in line]
    assert len(test_lines) == 1 and 'eval_peak_mem_gib:' in test_lines[0]
