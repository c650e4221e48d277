"""Test (evaluate) a checkpoint (mmdet-style).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE.pkl]
                                           [--cfg-options k=v ...] [--launcher none|pytorch]

--out dumps the predictions to a pickle (mmengine's DumpResults metric). The
checkpoint is checked against the model built from the config first: a
checkpoint of another model is an error naming the file and mismatched keys.
As with tools/train.py, local checkpoints are loaded with
torch.load(weights_only=False), since mmengine checkpoints hold Python objects:
test only checkpoints you trust (docs/engine.md).
"""
import argparse
import os
import os.path as osp
import sys

for _p in (osp.dirname(osp.dirname(osp.abspath(__file__))), os.getcwd()):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from mmengine.config import DictAction  # noqa: E402

from sherl_mm.engine import run_test, run_tool  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (and evaluate) a checkpoint')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save logs and metrics (default: ./work_dirs/<config name>)')
    parser.add_argument('--out', type=str, help='dump predictions to a pickle file (.pkl) for offline evaluation')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings in the config, key=value pairs')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher (pytorch = torchrun)')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def main(argv=None):
    return run_tool(run_test, parse_args(argv))


if __name__ == '__main__':
    sys.exit(main())
