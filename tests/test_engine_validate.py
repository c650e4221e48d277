"""Config/data/checkpoint checks of sherl_mm.engine.validate (in process;
the same errors through the tools are in test_tools_train.py)."""
import os.path as osp

import pytest
import torch

from sherl_mm.engine import UserInputError, check_checkpoint_compat, load_config, validate_config
from sherl_mm.engine.validate import config_files

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
FIX = osp.join(REPO, 'tests', 'fixtures')


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.syspath_prepend(REPO)
    monkeypatch.chdir(REPO)


def test_toy_config_is_valid(in_repo):
    cfg = load_config(osp.join(FIX, 'toy_config.py'))
    validate_config(cfg, 'train')
    validate_config(cfg, 'test')
    assert [osp.basename(f) for f in config_files(cfg.filename)] == ['toy_config.py', 'default_runtime.py']


def test_unknown_nested_type_names_file_key_and_close_names(in_repo):
    cfg = load_config(osp.join(FIX, 'bad_type_config.py'))
    with pytest.raises(UserInputError) as e:
        validate_config(cfg, 'train')
    msg = str(e.value)
    assert 'model.head.type' in msg and "'ToyLinerHead'" in msg
    assert 'bad_type_config.py:3' in msg
    assert "'ToyLinearHead'" in msg  # suggestion


def test_unknown_type_from_cfg_options_and_registry_kind(in_repo):
    opts = {'default_hooks.checkpoint.type': 'AtomicCheckpointHok',
            'train_dataloader.dataset.pipeline': [dict(type='PackToyInput')]}
    cfg = load_config(osp.join(FIX, 'toy_config.py'), opts)
    with pytest.raises(UserInputError) as e:
        validate_config(cfg, 'train', cfg_options=opts)
    msg = str(e.value)
    assert 'default_hooks.checkpoint.type' in msg and 'registered hook type' in msg
    assert '--cfg-options default_hooks.checkpoint.type=AtomicCheckpointHok' in msg
    assert "'AtomicCheckpointHook'" in msg
    assert 'train_dataloader.dataset.pipeline[0].type' in msg and "'PackToyInputs'" in msg


def test_missing_data_root_and_ann_file(in_repo):
    cfg = load_config(osp.join(FIX, 'toy_config.py'), {
        'train_dataloader.dataset.data_root': 'data/not_here',
        'val_dataloader.dataset.ann_file': 'nope.json'})
    with pytest.raises(UserInputError) as e:
        validate_config(cfg, 'train')
    msg = str(e.value)
    assert "train_dataloader.dataset.data_root = 'data/not_here'" in msg
    assert 'val_dataloader.dataset.ann_file' in msg and 'tests/fixtures/toy_data/nope.json' in msg
    # test mode only looks at the test dataloader
    validate_config(cfg, 'test')


def test_missing_load_from(in_repo):
    cfg = load_config(osp.join(FIX, 'toy_config.py'), {'load_from': 'work_dirs/none/epoch_9.pth'})
    with pytest.raises(UserInputError, match=r"load_from 'work_dirs/none/epoch_9.pth': no such checkpoint"):
        validate_config(cfg, 'train')


def test_bad_config_path_and_custom_import(tmp_path, in_repo):
    with pytest.raises(UserInputError, match='does not exist'):
        load_config('configs/nope.py')
    bad = tmp_path / 'cfg.py'
    bad.write_text("custom_imports = dict(imports=['my_missing_plugin'])\n")
    with pytest.raises(UserInputError, match="custom_imports failed.*my_missing_plugin"):
        load_config(str(bad))


def test_checkpoint_compat():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    good = {'state_dict': {f'module.{k}': v for k, v in model.state_dict().items()}}
    check_checkpoint_compat(model, good, 'good.pth')
    # one-sided differences (e.g. a checkpoint of the trainable part) pass
    check_checkpoint_compat(model, {'state_dict': {'1.weight': torch.zeros(2, 3)}}, 'part.pth')
    other = {'state_dict': {'backbone.conv.weight': torch.zeros(1), 'head.fc.bias': torch.zeros(1)}}
    with pytest.raises(UserInputError) as e:
        check_checkpoint_compat(model, other, 'other.pth')
    msg = str(e.value)
    assert "'other.pth'" in msg and 'backbone.conv.weight' in msg and '0.weight' in msg
    shaped = {'state_dict': {**model.state_dict(), '0.weight': torch.zeros(5, 4)}}
    with pytest.raises(UserInputError, match=r'0.weight \(5, 4\) in checkpoint vs \(3, 4\) in model'):
        check_checkpoint_compat(model, shaped, 'shaped.pth')
