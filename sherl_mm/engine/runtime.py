"""Runtime setup shared by tools/train.py and tools/test.py.

:func:`setup_runtime` is the one place where sherl_mm adapts mmengine 0.10.7
to torch >= 2.6 and to machines without CUDA:

1. local checkpoints are loaded with ``weights_only=False``
   (:func:`sherl_mm.engine.checkpoint.trust_local_checkpoints`; only here,
   never on import: the tools load checkpoints the user names);
2. ``launcher='pytorch'`` (torchrun): the process group is initialised here,
   with NCCL and ``torch.cuda.set_device(LOCAL_RANK)`` on GPUs, with gloo and
   a ``device_ids=None`` DDP wrapper on CPU (mmengine's ``init_dist`` calls
   ``torch.cuda.set_device`` unconditionally and its DDP wrapper passes
   ``device_ids``, both of which fail without CUDA);
3. AMP: an ``AmpOptimWrapper`` config on a machine without CUDA becomes
   :class:`~sherl_mm.engine.optim.CpuBf16OptimWrapper` (bf16 autocast, no
   GradScaler), with a log line saying so;
4. ``default_hooks.<name>=None`` turns off any default hook, also the ones
   sherl_mm adds (``peak_memory``, ``param_table``), for which mmengine
   would assert.

Atomic checkpoint writes need no set-up: the default checkpoint hook writes
through a registered storage backend (:mod:`sherl_mm.engine.checkpoint`).
See docs/engine.md.
"""
import datetime
import logging
import os
import os.path as osp

import torch
import torch.distributed as torch_dist
from mmengine.config import Config
from mmengine.logging import print_log

from .checkpoint import trust_local_checkpoints
from .validate import UserInputError

__all__ = ['setup_runtime', 'load_config', 'enable_amp', 'init_distributed', 'resolve_amp', 'drop_disabled_hooks']

_AMP_TYPES = ('AmpOptimWrapper', 'mmengine.AmpOptimWrapper')
_PLAIN_TYPES = ('OptimWrapper', 'mmengine.OptimWrapper', 'sherl_mm.OptimWrapper')
_CPU_AMP = 'CpuBf16OptimWrapper'
#: the default hooks mmengine itself knows; ``None`` removes these, and
#: mmengine asserts on ``None`` for any other name
_MMENGINE_DEFAULT_HOOKS = ('runtime_info', 'timer', 'sampler_seed', 'logger', 'param_scheduler', 'checkpoint')


def _log(msg, level=logging.INFO):
    rank = int(os.environ.get('RANK', '0'))
    if rank == 0:
        print_log(msg, logger='current', level=level)


def load_config(path: str, cfg_options=None) -> Config:
    """``Config.fromfile`` + ``--cfg-options`` merge, with clear errors for a
    missing config, a config with a syntax error, or a failing
    ``custom_imports``. The current directory is put on ``sys.path`` first so
    that ``custom_imports`` of modules in the project you run from resolve,
    as with mmdet's tools."""
    import sys
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    if not osp.isfile(path):
        raise UserInputError(f'config file {path!r} does not exist ({osp.abspath(path)}).')
    try:
        cfg = Config.fromfile(path)
    except ImportError as e:
        cause = e.__cause__ or e
        raise UserInputError(
            f'config {path!r}: custom_imports failed: {type(cause).__name__}: {cause}. The modules in '
            f'custom_imports=dict(imports=[...]) must be importable from the current directory '
            f'({cwd}) or PYTHONPATH.') from e
    except SyntaxError as e:
        raise UserInputError(f'config {path!r}: syntax error: {e}') from e
    except FileNotFoundError as e:
        raise UserInputError(f'config {path!r}: {e} (check _base_)') from e
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def enable_amp(cfg: Config) -> None:
    """What ``--amp`` does (as mmdet's tools/train.py): an ``OptimWrapper``
    config becomes ``AmpOptimWrapper`` with dynamic loss scaling; on a
    machine without CUDA :func:`resolve_amp` then swaps in the CPU bf16
    wrapper."""
    ow = cfg.get('optim_wrapper')
    if ow is None:
        raise UserInputError('--amp: the config has no optim_wrapper.')
    t = ow.get('type', 'OptimWrapper')
    if t in _AMP_TYPES or t == _CPU_AMP:
        _log('AMP training is already enabled in your config.', logging.WARNING)
        return
    if t not in _PLAIN_TYPES:
        raise UserInputError(f'--amp: optim_wrapper.type is {t!r}; --amp can only switch an OptimWrapper '
                             f'to AmpOptimWrapper. Set the AMP wrapper in the config instead.')
    ow['type'] = 'AmpOptimWrapper'
    ow.setdefault('loss_scale', 'dynamic')


def resolve_amp(cfg: Config) -> None:
    """On a machine without CUDA, replace an ``AmpOptimWrapper`` config (which
    would assert at build time) by ``CpuBf16OptimWrapper``."""
    ow = cfg.get('optim_wrapper')
    if not isinstance(ow, dict) or ow.get('type') not in _AMP_TYPES or torch.cuda.is_available():
        return
    dtype = ow.get('dtype')
    ow['type'] = _CPU_AMP
    ow.pop('loss_scale', None)
    ow.pop('use_fsdp', None)
    note = f'; the requested dtype {dtype} is not supported on CPU' if dtype not in (None, 'bfloat16') else ''
    _log('AMP requested but CUDA is not available: training with bfloat16 autocast on the CPU '
         f'(CpuBf16OptimWrapper, no GradScaler){note}.', logging.WARNING)


def init_distributed(cfg: Config) -> None:
    """Initialise the default process group for ``launcher='pytorch'``
    (torchrun), on GPUs or on CPU. No-op for other launchers (mmengine's
    ``init_dist`` handles slurm/mpi) or when a group already exists."""
    if cfg.get('launcher', 'none') != 'pytorch' or not torch_dist.is_available() or torch_dist.is_initialized():
        return
    missing = [k for k in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT') if k not in os.environ]
    if missing:
        raise UserInputError(f'--launcher pytorch needs the environment set by torchrun ({", ".join(missing)} '
                             f'missing). Start it with tools/dist_train.sh CONFIG N or '
                             f'torchrun --nproc_per_node N tools/train.py CONFIG --launcher pytorch.')
    env_cfg = cfg.setdefault('env_cfg', {})
    dist_cfg = dict(env_cfg.get('dist_cfg') or {})
    backend = dist_cfg.pop('backend', 'nccl')
    dist_cfg.pop('init_backend', None)
    timeout = dist_cfg.pop('timeout', None)
    if timeout is not None:
        dist_cfg['timeout'] = datetime.timedelta(seconds=timeout)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ['LOCAL_RANK']))
        torch_dist.init_process_group(backend=backend, **dist_cfg)
        return
    if backend != 'gloo':
        _log(f'CUDA is not available: using the gloo backend instead of {backend!r} for distributed training.')
    env_cfg.setdefault('dist_cfg', {})['backend'] = 'gloo'
    torch_dist.init_process_group(backend='gloo', **dist_cfg)
    # mmengine's default DDP wrapper passes device_ids=[LOCAL_RANK], which a
    # CPU module refuses; config values override the Runner's default_args.
    wrapper = cfg.get('model_wrapper_cfg')
    if wrapper is None:
        cfg.model_wrapper_cfg = dict(type='MMDistributedDataParallel', device_ids=None, broadcast_buffers=False,
                                     find_unused_parameters=cfg.get('find_unused_parameters', False))
    else:
        from mmengine.registry import MODEL_WRAPPERS
        from torch.nn.parallel import DistributedDataParallel
        wtype = MODEL_WRAPPERS.get(wrapper.get('type', 'MMDistributedDataParallel'))
        if isinstance(wtype, type) and issubclass(wtype, DistributedDataParallel):
            wrapper['device_ids'] = None


def drop_disabled_hooks(cfg: Config) -> None:
    """Remove ``default_hooks`` entries set to ``None`` that mmengine does
    not know (it only accepts ``None`` for its own defaults)."""
    hooks = cfg.get('default_hooks')
    if not isinstance(hooks, dict):
        return
    for name in [k for k, v in hooks.items() if v is None and k not in _MMENGINE_DEFAULT_HOOKS]:
        hooks.pop(name)


def setup_runtime(cfg: Config) -> Config:
    """Apply sherl_mm's runtime fixes to ``cfg`` (in place) and the process;
    call it before ``Runner.from_cfg``. See the module docstring."""
    init_distributed(cfg)
    trust_local_checkpoints()
    resolve_amp(cfg)
    drop_disabled_hooks(cfg)
    return cfg
