"""AMP on CPU and the CPU distributed setup of sherl_mm.engine (in process;
the tool runs are in test_tools_train.py)."""
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope

from sherl_mm.engine import CpuBf16OptimWrapper, UserInputError, enable_amp, init_distributed, resolve_amp
from sherl_mm.registry import OPTIM_WRAPPERS

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason='CPU-only behaviour')


def test_cpu_bf16_wrapper_autocasts_and_steps():
    model = torch.nn.Linear(4, 2)
    wrapper = OPTIM_WRAPPERS.build(dict(type='CpuBf16OptimWrapper', loss_scale='dynamic',
                                        optimizer=torch.optim.SGD(model.parameters(), lr=0.1)))
    assert isinstance(wrapper, CpuBf16OptimWrapper)
    w0 = model.weight.detach().clone()
    with wrapper.optim_context(model):
        assert torch.is_autocast_enabled('cpu')
        out = model(torch.randn(3, 4))
        assert out.dtype == torch.bfloat16
    wrapper.update_params(out.float().pow(2).mean())
    assert model.weight.dtype == torch.float32 and not torch.equal(model.weight, w0)
    assert not torch.is_autocast_enabled('cpu')
    # a checkpoint written by AmpOptimWrapper on a GPU carries a GradScaler
    state = wrapper.state_dict()
    state['loss_scaler'] = {'scale': 65536.0}
    wrapper.load_state_dict(state)


@no_cuda
def test_amp_flag_and_amp_config_fall_back_to_cpu_bf16():
    cfg = Config(dict(optim_wrapper=dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.1))))
    enable_amp(cfg)
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    resolve_amp(cfg)
    assert cfg.optim_wrapper.type == 'CpuBf16OptimWrapper' and 'loss_scale' not in cfg.optim_wrapper
    model = torch.nn.Linear(2, 2)
    with DefaultScope.overwrite_default_scope('sherl_mm'):  # as the Runner builds it
        assert isinstance(build_optim_wrapper(model, cfg.optim_wrapper), CpuBf16OptimWrapper)

    cfg = Config(dict(optim_wrapper=dict(type='AmpOptimWrapper', dtype='float16', optimizer=dict(type='SGD', lr=1))))
    resolve_amp(cfg)
    assert cfg.optim_wrapper.type == 'CpuBf16OptimWrapper'

    cfg = Config(dict(optim_wrapper=dict(type='MyWrapper', optimizer=dict(type='SGD', lr=1))))
    with pytest.raises(UserInputError, match='--amp'):
        enable_amp(cfg)


def test_pytorch_launcher_without_torchrun_env_is_a_clear_error(monkeypatch):
    for k in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT'):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(UserInputError, match='torchrun'):
        init_distributed(Config(dict(launcher='pytorch')))
    init_distributed(Config(dict(launcher='none')))  # no-op


def test_default_runtime():
    cfg = Config.fromfile(osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))),
                                   'configs', '_base_', 'default_runtime.py'))
    assert cfg.default_scope == 'sherl_mm'
    assert cfg.default_hooks.checkpoint.type == 'AtomicCheckpointHook'
    assert cfg.visualizer.vis_backends[0].type == 'LocalVisBackend'
    assert cfg.load_from is None and cfg.resume is False
