"""Checkpoint fixes of sherl_mm.engine: loading mmengine checkpoints under
torch >= 2.6 (weights_only) and atomic checkpoint writes."""
import glob
import io
import os
import os.path as osp
import pickle

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner import Runner
from mmengine.runner.checkpoint import CheckpointLoader, _load_checkpoint

import sherl_mm.engine  # noqa: F401  (applies the fixes)
from sherl_mm.engine import atomic_save_checkpoint, load_config
from sherl_mm.engine.checkpoint import install_checkpoint_fixes

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOY = osp.join(REPO, 'tests', 'fixtures', 'toy_config.py')


def _mmengine_like_checkpoint():
    buf = HistoryBuffer()
    buf.update(1.5)
    return {'meta': {'epoch': 1, 'seed': np.int64(3), 'dtype': np.dtype('float64')},
            'message_hub': {'log_scalars': {'train/loss': buf}},
            'state_dict': {'w': torch.ones(2)}}


def test_local_loader_reads_pickled_mmengine_checkpoint(tmp_path):
    path = str(tmp_path / 'epoch_1.pth')
    torch.save(_mmengine_like_checkpoint(), path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path)  # torch >= 2.6 default: weights_only=True
    ckpt = _load_checkpoint(path, map_location='cpu')
    assert isinstance(ckpt['message_hub']['log_scalars']['train/loss'], HistoryBuffer)
    assert CheckpointLoader._get_checkpoint_loader(path).__module__ == 'sherl_mm.engine.checkpoint'
    install_checkpoint_fixes()  # idempotent
    assert torch.equal(_load_checkpoint(path)['state_dict']['w'], torch.ones(2))


def test_mmengine_save_checkpoint_is_the_atomic_one():
    import mmengine.runner as mr
    import mmengine.runner.checkpoint as mc
    import mmengine.runner.runner as mrr
    assert mc.save_checkpoint is atomic_save_checkpoint
    assert mrr.save_checkpoint is atomic_save_checkpoint
    assert mr.save_checkpoint is atomic_save_checkpoint


def _half_then_fail(orig):
    def fake_save(obj, f, *args, **kwargs):
        data = io.BytesIO()
        orig(obj, data, *args, **kwargs)
        f.write(data.getvalue()[:len(data.getvalue()) // 2])
        raise OSError('No space left on device (simulated)')
    return fake_save


def test_atomic_save_keeps_old_file_when_write_fails(tmp_path, monkeypatch):
    path = str(tmp_path / 'latest.pth')
    atomic_save_checkpoint({'state_dict': {'w': torch.zeros(3)}}, path)
    monkeypatch.setattr(torch, 'save', _half_then_fail(torch.save))
    with pytest.raises(OSError, match='simulated'):
        atomic_save_checkpoint({'state_dict': {'w': torch.ones(3)}}, path)
    monkeypatch.undo()
    assert torch.equal(_load_checkpoint(path)['state_dict']['w'], torch.zeros(3))
    assert os.listdir(tmp_path) == ['latest.pth']  # no temp file left behind
    assert (os.stat(path).st_mode & 0o777) == (0o666 & ~_umask())


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


def test_run_killed_while_saving_keeps_previous_checkpoint(tmp_path, monkeypatch):
    """A run whose epoch-2 save dies half-way: epoch_1.pth is still there
    (even with max_keep_ckpts=1, where mmengine deletes the old checkpoint
    before writing the new one), loads, and last_checkpoint points to it."""
    monkeypatch.syspath_prepend(REPO)
    monkeypatch.chdir(REPO)
    cfg = load_config(TOY, {
        'work_dir': str(tmp_path),
        'default_hooks.checkpoint.max_keep_ckpts': 1,
        'custom_hooks': [],
        'train_cfg.val_interval': 10,
    })
    runner = Runner.from_cfg(cfg)
    orig = torch.save
    calls = []

    def save(obj, f, *args, **kwargs):
        calls.append(obj)
        if len(calls) == 1:
            return orig(obj, f, *args, **kwargs)
        return _half_then_fail(orig)(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, 'save', save)
    with pytest.raises(OSError, match='simulated'):
        runner.train()
    monkeypatch.undo()

    assert len(calls) == 2
    files = sorted(osp.basename(p) for p in glob.glob(str(tmp_path / '*')) + glob.glob(str(tmp_path / '.*')))
    assert 'epoch_1.pth' in files and 'epoch_2.pth' not in files
    assert not [f for f in files if f.endswith('.tmp')]
    with open(tmp_path / 'last_checkpoint') as f:
        last = f.read().strip()
    assert osp.basename(last) == 'epoch_1.pth'
    ckpt = _load_checkpoint(last, map_location='cpu')
    assert ckpt['meta']['epoch'] == 1
    assert set(ckpt['state_dict']) == set(runner.model.state_dict())
    assert 'rng_state' in ckpt['meta']


def test_best_and_outdated_checkpoints_removed_after_the_new_one(tmp_path, monkeypatch):
    """save_best + max_keep_ckpts=1: at the end exactly one best and one
    regular checkpoint remain, and the best one is the last recorded."""
    monkeypatch.syspath_prepend(REPO)
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
    _load_checkpoint(best)
