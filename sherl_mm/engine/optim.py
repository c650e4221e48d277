"""Mixed precision without CUDA."""
import logging
from contextlib import contextmanager

import torch
from mmengine.logging import print_log
from mmengine.optim import OptimWrapper

from sherl_mm.registry import OPTIM_WRAPPERS

__all__ = ['CpuBf16OptimWrapper']


@OPTIM_WRAPPERS.register_module()
class CpuBf16OptimWrapper(OptimWrapper):
    """``OptimWrapper`` that runs the forward pass under CPU bfloat16
    autocast, with no GradScaler (bf16 has fp32's exponent range, so loss
    scaling is not needed).

    mmengine's ``AmpOptimWrapper`` asserts a CUDA/NPU/MLU/MUSA device, so the
    tools pick this wrapper for ``--amp`` (or an ``AmpOptimWrapper`` config)
    on a machine without CUDA. ``loss_scale`` and ``dtype`` are accepted so
    that an ``AmpOptimWrapper`` config can be switched by changing only its
    type; ``dtype`` other than bfloat16 is ignored with a warning (CPU
    autocast supports bfloat16 only). Parameters, gradients and optimizer
    states stay float32.
    """

    def __init__(self, *args, loss_scale=None, dtype=None, **kwargs):
        super().__init__(*args, **kwargs)
        if dtype not in (None, 'bfloat16', torch.bfloat16):
            print_log(f'CpuBf16OptimWrapper: dtype={dtype!r} is not supported by CPU autocast; '
                      'using bfloat16.', logger='current', level=logging.WARNING)
        self.cast_dtype = torch.bfloat16
        print_log('Mixed precision on CPU: forward passes run under torch.autocast(device_type="cpu", '
                  'dtype=torch.bfloat16), without a GradScaler (CpuBf16OptimWrapper).', logger='current')

    @contextmanager
    def optim_context(self, model):
        with super().optim_context(model), torch.autocast(device_type='cpu', dtype=torch.bfloat16):
            yield

    def load_state_dict(self, state_dict: dict) -> None:
        # a checkpoint written by AmpOptimWrapper (on a GPU) has a GradScaler
        state_dict = dict(state_dict)
        state_dict.pop('loss_scaler', None)
        super().load_state_dict(state_dict)
