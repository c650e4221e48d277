"""Optimizer construction for frozen backbones, and mixed precision without CUDA."""
import logging
from contextlib import contextmanager

import torch
from mmengine.logging import MMLogger, print_log
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper
from torch import nn

from sherl_mm.registry import OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS
from sherl_mm.utils.modules import count_parameters

__all__ = ['CpuBf16OptimWrapper', 'TrainableOptimWrapperConstructor']

_FROZEN_SKIP_MESSAGE = 'is skipped since its requires_grad=False'


class _TrainableParameters:
    """What mmengine's constructor reads of a model when ``paramwise_cfg`` is
    empty (only ``parameters()``), restricted to the trainable tensors."""

    def __init__(self, model: nn.Module) -> None:
        self._model = model

    def parameters(self):
        return (p for p in self._model.parameters() if p.requires_grad)


class _DropFrozenSkipRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _FROZEN_SKIP_MESSAGE not in record.getMessage()


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class TrainableOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """mmengine's default constructor, given only the trainable parameters.

    Freezing with ``requires_grad_(False)`` is what saves memory (an
    ``lr_mult=0`` in ``paramwise_cfg`` still keeps gradients and optimizer
    state); the optimizer should then not hold the frozen tensors at all.
    mmengine's constructor passes every parameter when ``paramwise_cfg`` is
    empty, and with a ``paramwise_cfg`` (e.g. ``custom_keys`` for a head
    learning rate) skips frozen ones but logs one warning per tensor: for a
    frozen ResNet-101 + RoBERTa that is about a thousand lines. Here the
    frozen tensors are left out either way and one line reports the split.
    Everything else (``custom_keys``, ``bias_lr_mult``, ...) is mmengine's.
    """

    def __call__(self, model: nn.Module) -> OptimWrapper:
        module = model.module if hasattr(model, 'module') else model
        count = count_parameters(module)
        if not count.trainable:
            raise ValueError('TrainableOptimWrapperConstructor: the model has no trainable parameter; '
                             'check the tuner config (LinearProbe still trains the heads)')
        if self.paramwise_cfg:
            logger = MMLogger.get_current_instance()
            drop = _DropFrozenSkipRecords()
            logger.addFilter(drop)
            try:
                wrapper = super().__call__(module)
            finally:
                logger.removeFilter(drop)
        else:
            wrapper = super().__call__(_TrainableParameters(module))
        print_log(f'optimizer: {count.trainable:,} trainable parameters in '
                  f'{len(wrapper.optimizer.param_groups)} group(s); {count.total - count.trainable:,} frozen '
                  f'parameters left out',
                  logger='current')
        return wrapper


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
