"""The logic behind tools/train.py and tools/test.py (the tools only parse
arguments)."""
import os
import os.path as osp
import sys

from mmengine.config import Config

from .hooks import CheckpointCompatHook
from .runtime import enable_amp, load_config, setup_runtime
from .validate import UserInputError, validate_config

__all__ = ['run_train', 'run_test', 'build_runner', 'run_tool', 'default_work_dir']


def default_work_dir(config_path: str) -> str:
    """``./work_dirs/<config name>``, as mmdet."""
    return osp.join('./work_dirs', osp.splitext(osp.basename(config_path))[0])


def _set_work_dir(cfg: Config, args) -> None:
    if getattr(args, 'work_dir', None):
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = default_work_dir(args.config)


def build_runner(cfg: Config, mode: str, cfg_options=None):
    """:func:`setup_runtime`, :func:`validate_config`, then the Runner
    (``runner_type`` from the config if set, as mmdet)."""
    import sherl_mm
    sherl_mm.register_all_modules(init_default_scope=False)
    setup_runtime(cfg)
    validate_config(cfg, mode=mode, cfg_options=cfg_options)
    if 'runner_type' in cfg:
        from sherl_mm.registry import RUNNERS
        return RUNNERS.build(cfg)
    from mmengine.runner import Runner
    return Runner.from_cfg(cfg)


def run_train(args):
    """tools/train.py: CONFIG [--work-dir] [--resume [CKPT]] [--amp]
    [--cfg-options] [--launcher]."""
    cfg = load_config(args.config, args.cfg_options)
    cfg.launcher = args.launcher
    _set_work_dir(cfg, args)
    if args.amp:
        enable_amp(cfg)
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None  # the latest checkpoint in work_dir (its last_checkpoint file)
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    runner = build_runner(cfg, 'train', args.cfg_options)
    runner.train()
    return runner


def _add_dump(cfg: Config, out: str) -> None:
    if not out.endswith(('.pkl', '.pickle')):
        raise UserInputError(f'--out {out!r}: the output file must end with .pkl or .pickle.')
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    dump = dict(type='DumpResults', out_file_path=out)
    ev = cfg.get('test_evaluator')
    if ev is None:
        cfg.test_evaluator = [dump]
    elif isinstance(ev, (list, tuple)):
        cfg.test_evaluator = [*ev, dump]
    elif isinstance(ev, dict) and 'metrics' in ev:
        metrics = ev['metrics']
        ev['metrics'] = [*metrics, dump] if isinstance(metrics, (list, tuple)) else [metrics, dump]
    else:
        cfg.test_evaluator = [ev, dump]


def run_test(args):
    """tools/test.py: CONFIG CHECKPOINT [--work-dir] [--out FILE]
    [--cfg-options] [--launcher]."""
    cfg = load_config(args.config, args.cfg_options)
    cfg.launcher = args.launcher
    _set_work_dir(cfg, args)
    ckpt = args.checkpoint
    if '://' not in ckpt and not osp.isfile(osp.expanduser(ckpt)):
        raise UserInputError(f'checkpoint file {ckpt!r} does not exist ({osp.abspath(ckpt)}).')
    cfg.load_from = ckpt
    cfg.resume = False
    if args.out:
        _add_dump(cfg, args.out)
    runner = build_runner(cfg, 'test', args.cfg_options)
    runner.register_hook(CheckpointCompatHook(ckpt))
    metrics = runner.test()
    return metrics


def run_tool(fn, args) -> int:
    """Run ``fn(args)``; print a :class:`UserInputError` as one clear message
    (no traceback; ``SHERL_MM_DEBUG=1`` shows it) and return exit status 2."""
    try:
        fn(args)
    except UserInputError as e:
        if os.environ.get('SHERL_MM_DEBUG'):
            raise
        tool = osp.basename(sys.argv[0]) or 'sherl_mm'
        print(f'{tool}: error: {e}', file=sys.stderr, flush=True)
        return 2
    return 0
