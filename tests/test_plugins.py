"""User components loaded through ``custom_imports``: a tuner and a backbone
stack registered in the user's own file and built from a config, and the
README's MyEncoder + ModuleListStack + SHERL example trained by tools/train.py."""
import os
import os.path as osp
import shutil
import subprocess
import sys

import torch

from sherl_mm.engine.runtime import load_config
from sherl_mm.registry import BACKBONES, MODELS, TUNERS
from sherl_mm.tuners import load_trainable, save_trainable

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
FIXTURES = osp.join(REPO, 'tests', 'fixtures')


def test_user_tuner_and_backbone_from_custom_imports(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)                     # custom_imports name 'tests.fixtures...' from the repository root
    cfg = load_config(osp.join(FIXTURES, 'toy_tuner_config.py'))     # imports the plugin module
    tuner_cls, stack_cls = TUNERS.get('ToyGainTuner'), BACKBONES.get('ToyMLPStack')
    assert tuner_cls is not None and stack_cls is not None
    assert tuner_cls.__module__ == stack_cls.__module__ == 'tests.fixtures.toy_tuner_plugin'

    model = MODELS.build(cfg.model)
    tuner = model.stacks['text']
    assert type(tuner) is tuner_cls and type(tuner.stack) is stack_cls
    assert torch.equal(tuner.gain, torch.full((8,), 0.5))
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == ['head.bias', 'head.weight', 'stacks.text.gain']

    from mmengine.structures import BaseDataElement
    ids = [torch.randint(0, 20, (5,)) for _ in range(3)]
    samples = [BaseDataElement(gt_label=i) for i in range(3)]
    model(ids, samples, mode='loss')['loss'].backward()
    assert tuner.gain.grad is not None
    assert all(p.grad is None for p in tuner.stack.parameters())

    # a user tuner saves and reloads only its own weights, like the built-in ones
    with torch.no_grad():
        tuner.gain.add_(torch.arange(8.0))
    path = str(tmp_path / 'gain.safetensors')
    save_trainable(tuner, path)
    fresh = TUNERS.build(dict(type='ToyGainTuner'), default_args=dict(stack=tuner.stack))
    load_trainable(fresh, path)
    assert torch.equal(fresh.gain, tuner.gain)


def _env() -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONWARNINGS='ignore', HF_HUB_OFFLINE='1',
               CUDA_VISIBLE_DEVICES='')
    env.pop('SHERL_MM_DEBUG', None)
    return env


def test_readme_example_trains_with_tools_train(tmp_path):
    # the README's layout: my_project/ next to sherl_mm's configs/, tools run from the folder holding both
    shutil.copytree(osp.join(FIXTURES, 'my_project'), tmp_path / 'my_project',
                    ignore=shutil.ignore_patterns('__pycache__'))
    os.symlink(osp.join(REPO, 'configs'), tmp_path / 'configs')
    work = tmp_path / 'work'
    proc = subprocess.run([sys.executable, osp.join(REPO, 'tools', 'train.py'), 'my_project/configs/my_config.py',
                           '--work-dir', str(work)], cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:]
    ckpt = torch.load(work / 'epoch_1.pth', map_location='cpu', weights_only=False)
    assert ckpt['meta']['epoch'] == 1 and ckpt['meta']['iter'] == 2                 # 8 samples, batch 4
    state = ckpt['state_dict']
    # the SHERL route on the ModuleListStack: MTSA over input + layers 0, 1, then frozen layer 2
    assert 'stacks.text.mtsa.0.alpha' in state and 'stacks.text.stack.module.encoder.layers.2.linear1.weight' in state
    assert state['stacks.text.mtsa.0.alpha'].item() != 0.0                  # trained (alpha starts at 0)
    # the optimizer holds exactly the trainable tensors: MTSA and the head
    n_mtsa = sum(1 for k in state if k.startswith('stacks.text.mtsa.') and 'running' not in k)
    assert len(ckpt['optimizer']['state']) == n_mtsa + 2
