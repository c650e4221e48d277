"""Checkpoint files of sherl_mm.engine: atomic writes through the
'atomic_local' storage backend (also with mmengine's own CheckpointHook),
deletion of old checkpoints after the new one, and trusted loading switched on
by the tools' set-up only (never by an import)."""
import contextlib
import os
import os.path as osp
import resource
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from mmengine.hooks import CheckpointHook, Hook
from mmengine.logging import HistoryBuffer
from mmengine.runner import Runner
from mmengine.runner.checkpoint import save_checkpoint

from sherl_mm.engine import ATOMIC_BACKEND, AtomicCheckpointHook, AtomicLocalBackend, load_config, load_trusted_local

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOY = osp.join(REPO, 'tests', 'fixtures', 'toy_config.py')
#: a toy model whose checkpoint (weights + AdamW state) is about 1.2 MB
WIDE_TOY = {'model.hidden': 8192, 'model.head.in_dim': 8192}
FILE_SIZE_LIMIT = 256 * 1024


def _mmengine_like_checkpoint():
    buf = HistoryBuffer()
    buf.update(1.5)
    return {'meta': {'epoch': 1, 'seed': np.int64(3), 'dtype': np.dtype('float64')},
            'message_hub': {'log_scalars': {'train/loss': buf}},
            'state_dict': {'w': torch.ones(2)}}


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


@contextlib.contextmanager
def _file_size_limit(nbytes):
    """Writes past ``nbytes`` fail with EFBIG, as on a full disk: the file
    keeps what was written before (a truncated file)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


class _DiskFullAt(Hook):
    """Writes past FILE_SIZE_LIMIT fail from the end of epoch ``epoch``
    (before that epoch's checkpoint) to the end of the run."""
    priority = 'VERY_HIGH'

    def __init__(self, epoch):
        self.epoch = epoch
        self.limit = contextlib.ExitStack()

    def after_train_epoch(self, runner):
        if runner.epoch + 1 == self.epoch:
            self.limit.enter_context(_file_size_limit(FILE_SIZE_LIMIT))


def _train_until_disk_full(cfg, epoch=2):
    runner = Runner.from_cfg(cfg)
    disk_full = _DiskFullAt(epoch)
    runner.register_hook(disk_full)
    try:
        with pytest.raises(OSError) as err:
            runner.train()
    finally:
        disk_full.limit.close()
    assert err.value.errno == 27, err.value  # EFBIG: the write itself failed
    return runner


def _files(folder):
    return sorted(os.listdir(folder))


@pytest.mark.parametrize('backend', [ATOMIC_BACKEND, 'local'])
def test_save_checkpoint_through_the_atomic_backend_keeps_the_old_file(tmp_path, backend):
    """mmengine's own save_checkpoint, a write that fails half-way: with the
    atomic backend the old file stays (no temp file left); with mmengine's
    local backend (the control) the file is left truncated."""
    path = str(tmp_path / 'latest.pth')
    save_checkpoint({'state_dict': {'w': torch.zeros(3)}}, path, backend_args=dict(backend=backend))
    with _file_size_limit(FILE_SIZE_LIMIT), pytest.raises(OSError):
        save_checkpoint({'state_dict': {'w': torch.ones(2 ** 18)}}, path, backend_args=dict(backend=backend))
    assert _files(tmp_path) == ['latest.pth']
    if backend == 'local':
        with pytest.raises(Exception):
            load_trusted_local(path)
        return
    assert torch.equal(load_trusted_local(path)['state_dict']['w'], torch.zeros(3))
    assert (os.stat(path).st_mode & 0o777) == (0o666 & ~_umask())


def test_atomic_backend_put_text_and_other_operations(tmp_path):
    backend = AtomicLocalBackend()
    target = tmp_path / 'sub' / 'last_checkpoint'
    backend.put_text('epoch_1.pth', target)
    assert backend.get_text(target) == 'epoch_1.pth' and backend.isfile(target)
    backend.remove(target)
    assert not osp.exists(target)


def test_checkpoint_hook_selects_the_atomic_backend_for_local_folders_only():
    assert AtomicCheckpointHook(interval=1).backend_args == {'backend': ATOMIC_BACKEND}
    assert AtomicCheckpointHook(out_dir='/tmp/ckpts').backend_args == {'backend': ATOMIC_BACKEND}
    assert AtomicCheckpointHook(out_dir='s3://bucket/ckpts').backend_args is None
    own = dict(backend='local')
    assert AtomicCheckpointHook(backend_args=own).backend_args is own


@pytest.mark.parametrize('backend', [ATOMIC_BACKEND, 'local'])
def test_stock_checkpoint_hook_with_the_atomic_backend(tmp_path, monkeypatch, backend):
    """mmengine's CheckpointHook configured with the backend, nothing else:
    the disk fills while epoch 2's checkpoint is written. Atomic: no
    epoch_2.pth at all; the control (mmengine's local backend) leaves a
    truncated epoch_2.pth."""
    monkeypatch.chdir(REPO)
    cfg = load_config(TOY, {
        **WIDE_TOY, 'work_dir': str(tmp_path), 'custom_hooks': [], 'train_cfg.val_interval': 10,
        'default_hooks.checkpoint': dict(_delete_=True, type='CheckpointHook', interval=1,
                                         backend_args=dict(backend=backend))})
    runner = _train_until_disk_full(cfg)
    assert [type(h) for h in runner.hooks if isinstance(h, CheckpointHook)] == [CheckpointHook]
    pth = [f for f in _files(tmp_path) if f.endswith(('.pth', '.tmp'))]
    if backend == 'local':
        assert pth == ['epoch_1.pth', 'epoch_2.pth']
        assert osp.getsize(tmp_path / 'epoch_2.pth') == FILE_SIZE_LIMIT
        return
    assert pth == ['epoch_1.pth']
    assert load_trusted_local(str(tmp_path / 'epoch_1.pth'))['meta']['epoch'] == 1


def test_run_killed_while_saving_keeps_previous_checkpoint(tmp_path, monkeypatch):
    """The default runtime's AtomicCheckpointHook with max_keep_ckpts=1 (where
    mmengine deletes the old checkpoint before writing the new one): the disk
    fills while epoch 2's checkpoint is written. epoch_1.pth is still there,
    loads, and last_checkpoint points to it."""
    monkeypatch.chdir(REPO)
    cfg = load_config(TOY, {
        **WIDE_TOY, 'work_dir': str(tmp_path), 'custom_hooks': [], 'train_cfg.val_interval': 10,
        'default_hooks.checkpoint.max_keep_ckpts': 1})
    runner = _train_until_disk_full(cfg)
    hook = next(h for h in runner.hooks if isinstance(h, AtomicCheckpointHook))
    assert isinstance(hook.file_backend, AtomicLocalBackend)
    files = _files(tmp_path)
    assert 'epoch_1.pth' in files and 'epoch_2.pth' not in files
    assert not [f for f in files if f.endswith('.tmp')]
    with open(tmp_path / 'last_checkpoint') as f:
        last = f.read().strip()
    assert osp.basename(last) == 'epoch_1.pth'
    ckpt = load_trusted_local(last, map_location='cpu')
    assert ckpt['meta']['epoch'] == 1
    assert set(ckpt['state_dict']) == set(runner.model.state_dict())
    assert 'rng_state' in ckpt['meta']


def test_best_and_outdated_checkpoints_removed_after_the_new_one(tmp_path, monkeypatch):
    """save_best + max_keep_ckpts=1: at the end exactly one best and one
    regular checkpoint remain, and the best one is the last recorded."""
    monkeypatch.chdir(REPO)
    cfg = load_config(TOY, {
        'work_dir': str(tmp_path), 'custom_hooks': [], 'train_cfg.max_epochs': 3,
        'default_hooks.checkpoint.max_keep_ckpts': 1,
        'default_hooks.checkpoint.save_best': 'toy/confidence', 'default_hooks.checkpoint.rule': 'greater'})
    runner = Runner.from_cfg(cfg)
    events = []
    orig_remove, orig_replace = os.remove, os.replace
    monkeypatch.setattr(os, 'remove', lambda p, *a, **k: (events.append(('remove', osp.basename(p))),
                                                          orig_remove(p, *a, **k)))
    monkeypatch.setattr(os, 'replace', lambda s, d, *a, **k: (events.append(('write', osp.basename(d))),
                                                              orig_replace(s, d, *a, **k)))
    runner.train()
    monkeypatch.undo()
    names = sorted(f for f in os.listdir(tmp_path) if f.endswith('.pth'))
    best = runner.message_hub.get_info('best_ckpt')
    assert [f for f in names if f.startswith('epoch_')] == ['epoch_3.pth']
    assert [f for f in names if f.startswith('best_')] == [osp.basename(best)]
    # every removal comes after the write of its replacement
    b1, b2 = 'best_toy_confidence_epoch_1.pth', 'best_toy_confidence_epoch_2.pth'
    assert ('remove', b1) in events, events
    assert events.index(('remove', b1)) > events.index(('write', b2))
    assert events.index(('remove', 'epoch_1.pth')) > events.index(('write', 'epoch_2.pth'))
    load_trusted_local(best)


_IMPORT_THEN_SETUP = textwrap.dedent('''
    import importlib, pickle, pkgutil, sys
    import mmengine.fileio.backends.registry_utils as storage
    import mmengine.runner, mmengine.runner.checkpoint as ckpt, mmengine.runner.runner
    import torch
    from mmengine.runner.checkpoint import CheckpointLoader, _load_checkpoint

    def state():
        return dict(loaders=dict(CheckpointLoader._schemes), prefixes=dict(storage.prefix_to_backends),
                    saves=[m.save_checkpoint for m in (ckpt, mmengine.runner.runner, mmengine.runner)])

    before, backends_before = state(), dict(storage.backends)
    import sherl_mm
    sherl_mm.register_all_modules()
    for info in pkgutil.walk_packages(sherl_mm.__path__, 'sherl_mm.'):
        importlib.import_module(info.name)
    from tests._tiny_grounding import build_tiny
    build_tiny()
    after = state()
    for key in before:
        assert before[key] == after[key], key
    assert set(storage.backends) - set(backends_before) == {'atomic_local'}
    assert all(storage.backends[k] is v for k, v in backends_before.items())
    path = sys.argv[1]
    try:
        _load_checkpoint(path)
    except pickle.UnpicklingError:
        print('IMPORT: weights_only loading kept')

    from sherl_mm.engine import build_runner, load_config, load_trusted_local
    for _ in range(2):
        cfg = load_config('tests/fixtures/toy_config.py', dict(work_dir=sys.argv[2]))
        build_runner(cfg, 'train')
    assert CheckpointLoader._get_checkpoint_loader('a/b.pth') is load_trusted_local
    changed = {p for p, f in CheckpointLoader._schemes.items() if before['loaders'].get(p) is not f}
    assert changed == {''}, changed
    assert state()['saves'] == before['saves']
    print('SETUP: loaded', type(_load_checkpoint(path)['message_hub']['log_scalars']['train/loss']).__name__)
''')


def test_import_changes_nothing_and_the_tools_setup_trusts_local_checkpoints(tmp_path):
    """In a fresh interpreter: importing every sherl_mm module and building a
    model leaves mmengine's checkpoint loaders, its save_checkpoint and its
    storage prefixes as they were (one backend name is added), and a pickled
    mmengine checkpoint still fails to load; the tools' runner set-up
    (build_runner, twice) then switches trusted loading on for local files
    only, logging it once."""
    path = str(tmp_path / 'epoch_1.pth')
    torch.save(_mmengine_like_checkpoint(), path)
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    proc = subprocess.run([sys.executable, '-c', _IMPORT_THEN_SETUP, path, str(tmp_path / 'work')], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert 'IMPORT: weights_only loading kept' in out
    assert 'SETUP: loaded HistoryBuffer' in out
    assert out.count('Local checkpoints are loaded with torch.load(weights_only=False)') == 1, out[-4000:]
