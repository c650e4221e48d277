"""Train a model from a config (mmdet-style).

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
                                 [--cfg-options k=v ...] [--launcher none|pytorch]

Multi-process (GPUs, or CPU with gloo): tools/dist_train.sh CONFIG N [args].
The logic lives in sherl_mm.engine (run_train); this file parses arguments.
Resuming loads local checkpoints with torch.load(weights_only=False), since
mmengine checkpoints hold Python objects: resume only from checkpoints you
trust (docs/engine.md).
"""
import argparse
import os
import os.path as osp
import sys

# custom_imports of modules in the project you run from (and sherl_mm itself
# when it is not installed) resolve as with mmdet's tools
for _p in (osp.dirname(osp.dirname(osp.abspath(__file__))), os.getcwd()):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from mmengine.config import DictAction  # noqa: E402

from sherl_mm.engine import run_tool, run_train  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models (default: ./work_dirs/<config name>)')
    parser.add_argument('--amp', action='store_true', default=False,
                        help='enable automatic mixed precision training (AmpOptimWrapper on CUDA; '
                        'bfloat16 autocast without GradScaler on a machine without CUDA)')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from the given checkpoint; without a value, from the latest '
                        'checkpoint in the work_dir')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings in the config, key=value pairs, e.g. '
                        'train_cfg.max_epochs=2 optim_wrapper.optimizer.lr=1e-3')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher (pytorch = torchrun)')
    # torch.distributed.launch passes --local-rank; torchrun sets LOCAL_RANK
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def main(argv=None):
    return run_tool(run_train, parse_args(argv))


if __name__ == '__main__':
    sys.exit(main())
