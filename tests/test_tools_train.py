"""tools/train.py, tools/test.py and tools/dist_train.sh end to end on the CPU
with the toy plugin config (tests/fixtures): --resume after a killed run is
bit-identical to an uninterrupted run, --amp without CUDA, torchrun with 2 CPU
processes, and clear errors for bad input.

The runs are independent processes; to keep the wall time low on 2 cores,
each group is started at once and the tests wait for their own process.
"""
import os
import os.path as osp
import pickle
import socket
import subprocess
import sys

import pytest
import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOY = 'tests/fixtures/toy_config.py'
TIMEOUT = 300


def _env():
    env = dict(os.environ)
    # CPU runs everywhere (also on a GPU machine): these tests are about the
    # CPU paths (gloo, bf16 autocast); 1 thread keeps runs comparable.
    env.update(OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONWARNINGS='ignore', HF_HUB_OFFLINE='1',
               PYTHON=sys.executable, CUDA_VISIBLE_DEVICES='')
    env.pop('SHERL_MM_DEBUG', None)
    return env


class Run:
    """A tool run started now and waited for on demand."""

    def __init__(self, *args):
        self.args = [str(a) for a in args]
        self.proc = subprocess.Popen(self.args, cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self._out = None

    def wait(self):
        if self._out is None:
            try:
                self._out, _ = self.proc.communicate(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self._out, _ = self.proc.communicate()
        return self

    @property
    def rc(self):
        return self.wait().proc.returncode

    @property
    def out(self):
        return self.wait()._out

    def ok(self):
        assert self.rc == 0, f'{" ".join(self.args)} exited with {self.rc}:\n{self.out[-4000:]}'
        return self


def train(*args):
    return Run(sys.executable, 'tools/train.py', *args)


def run_test_tool(*args):
    return Run(sys.executable, 'tools/test.py', *args)


def _load(path):
    return torch.load(path, map_location='cpu', weights_only=False)


@pytest.fixture(scope='module')
def wd(tmp_path_factory):
    return tmp_path_factory.mktemp('tools')


@pytest.fixture(scope='module')
def runs(wd):
    """First wave, started together."""
    return dict(
        full=train(TOY, '--work-dir', wd / 'full'),
        killed=train(TOY, '--work-dir', wd / 'resumed', '--cfg-options', 'custom_hooks.0.crash_after_epoch=1'),
        amp=train(TOY, '--work-dir', wd / 'amp', '--amp', '--cfg-options', 'train_cfg.max_epochs=1'),
        bad_type=train('tests/fixtures/bad_type_config.py', '--work-dir', wd / 'bad_type'),
        bad_data=train(TOY, '--work-dir', wd / 'bad_data', '--cfg-options',
                       'train_dataloader.dataset.data_root=data/no_such_dataset'),
    )


@pytest.fixture(scope='module')
def second(runs, wd):
    """Second wave: needs the first wave's checkpoints."""
    assert runs['killed'].rc == 3, runs['killed'].out[-3000:]  # os._exit(3) after epoch 1's checkpoint
    runs['full'].ok()
    full = wd / 'full' / 'epoch_2.pth'
    return dict(
        resume=train(TOY, '--work-dir', wd / 'resumed', '--resume'),
        test_out=run_test_tool(TOY, full, '--work-dir', wd / 'test', '--out', wd / 'test' / 'preds.pkl'),
        test_wrong=run_test_tool(TOY, full, '--work-dir', wd / 'test_wrong', '--cfg-options', 'model.hidden=32',
                                 'model.head.in_dim=32'),
        test_no_ckpt=run_test_tool(TOY, 'work_dirs/nothing/epoch_1.pth'),
        explicit=train(TOY, '--work-dir', wd / 'explicit', '--resume', wd / 'full' / 'epoch_1.pth'),
    )


def test_resume_after_kill_is_bit_identical(runs, second, wd):
    killed = wd / 'resumed'
    run = second['resume'].ok()
    assert 'Auto resumed from the latest checkpoint' in run.out and 'epoch_1.pth' in run.out
    assert 'resumed epoch: 1' in run.out
    # mmengine checkpoints need full unpickling: the tool switches it on, and says so once
    assert run.out.count('Local checkpoints are loaded with torch.load(weights_only=False)') == 1
    a, b = _load(wd / 'full' / 'epoch_2.pth'), _load(killed / 'epoch_2.pth')
    assert a['state_dict'].keys() == b['state_dict'].keys()
    for k in a['state_dict']:
        assert torch.equal(a['state_dict'][k], b['state_dict'][k]), k
    oa, ob = a['optimizer'], b['optimizer']
    assert oa['param_groups'] == ob['param_groups']
    assert oa['state'].keys() == ob['state'].keys()
    for i in oa['state']:
        for k, v in oa['state'][i].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(ob['state'][i][k])), (i, k)
    assert a['param_schedulers'] == b['param_schedulers']


def test_resume_from_explicit_checkpoint(second, wd):
    run = second['explicit'].ok()
    assert 'resumed epoch: 1' in run.out
    a, b = _load(wd / 'full' / 'epoch_2.pth'), _load(wd / 'explicit' / 'epoch_2.pth')
    assert all(torch.equal(a['state_dict'][k], b['state_dict'][k]) for k in a['state_dict'])


def test_amp_without_cuda(runs, wd):
    run = runs['amp'].ok()
    assert 'CUDA is not available: training with bfloat16 autocast on the CPU' in run.out
    assert 'CpuBf16OptimWrapper' in run.out
    assert osp.isfile(wd / 'amp' / 'epoch_1.pth')


def test_unknown_type_error(runs):
    run = runs['bad_type']
    assert run.rc == 2, run.out[-3000:]
    assert 'Traceback' not in run.out
    assert "model.head.type = 'ToyLinerHead'" in run.out
    assert 'tests/fixtures/bad_type_config.py:3' in run.out and "'ToyLinearHead'" in run.out


def test_missing_data_error(runs):
    run = runs['bad_data']
    assert run.rc == 2, run.out[-3000:]
    assert 'Traceback' not in run.out
    assert "train_dataloader.dataset.data_root = 'data/no_such_dataset': no such directory" in run.out


def test_test_tool_dumps_predictions(second, wd):
    run = second['test_out'].ok()
    assert 'toy/accuracy' in run.out
    with open(wd / 'test' / 'preds.pkl', 'rb') as f:
        preds = pickle.load(f)
    assert len(preds) == 16 and {'pred_label', 'pred_score', 'gt_label'} <= set(preds[0])


def test_test_tool_rejects_checkpoint_of_another_model(second, wd):
    run = second['test_wrong']
    assert run.rc == 2, run.out[-3000:]
    assert 'Traceback' not in run.out
    assert 'epoch_2.pth' in run.out and 'does not match the model' in run.out
    assert 'body.0.weight (16, 8) in checkpoint vs (32, 8) in model' in run.out


def test_test_tool_missing_checkpoint(second):
    run = second['test_no_ckpt']
    assert run.rc == 2 and "checkpoint file 'work_dirs/nothing/epoch_1.pth' does not exist" in run.out


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_torchrun_two_cpu_processes(second, wd):
    for run in second.values():  # let the other runs finish first
        run.wait()
    env_port = str(_free_port())
    run = Run('env', f'PORT={env_port}', 'bash', 'tools/dist_train.sh', TOY, 2, '--work-dir', wd / 'dist').ok()
    assert "using the gloo backend instead of 'nccl'" in run.out
    assert run.out.count('Local checkpoints are loaded with torch.load(weights_only=False)') == 1  # rank 0 only
    r0, r1 = _load(wd / 'dist' / 'rank0_weights.pth'), _load(wd / 'dist' / 'rank1_weights.pth')
    assert r0.keys() == r1.keys()
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    ckpt = _load(wd / 'dist' / 'epoch_2.pth')
    assert all(torch.equal(ckpt['state_dict'][k], r0[k]) for k in r0)
