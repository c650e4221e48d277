"""Peak-memory logging for training runs (CUDA and CPU)."""
from __future__ import annotations

from typing import Any

import torch
from mmengine.dist import all_reduce, get_world_size
from mmengine.hooks import Hook, LoggerHook

from sherl_mm.registry import HOOKS
from sherl_mm.utils.memory import (RSSPeakSampler, cuda_peak_bytes, process_peak_rss_bytes, reset_cuda_peak,
                                   to_gib, to_paper_gb)


@HOOKS.register_module()
class PeakMemoryHook(Hook):
    """Log the peak memory of every logging interval, and of the whole run.

    After each training iteration it writes ``train/peak_mem_gib`` to the
    message hub, so the figure appears in the train log line (``peak_mem_gib:
    ...``) and in ``vis_data/scalars.json``. The value is **the peak since
    the previous train log line**, in **GiB** (``2**30`` bytes):

    * CUDA: ``torch.cuda.max_memory_allocated()`` of this rank's device, reset
      after each log line. This is the allocator peak (weights, gradients,
      optimiser state, activations); it excludes the CUDA context and cached
      free blocks, so it reads lower than nvidia-smi. mmengine's own
      ``memory`` field (MiB) reads the same counter and resets it too, and
      so does every validation log line of mmengine's LogProcessor, so the
      hook keeps the whole-run maximum itself.
    * CPU, ``cpu_mode='maxrss'`` (default): the **process** peak resident
      memory (``ru_maxrss``) since the process started. The kernel cannot
      reset it, so it is not a per-interval figure: it only grows. It includes
      the interpreter, the libraries and the data loader of the main process.
    * CPU, ``cpu_mode='sampled'``: the maximum of the current RSS sampled every
      ``sample_interval`` seconds by a background thread, reset each
      interval; a spike shorter than the sampling period can be missed.

    Validation and test loops get their own figure, the peak over the whole
    loop, logged with the metrics as ``eval_peak_mem_gib`` (``val/`` or
    ``test/`` in the message hub): with ``tools/test.py`` this is the
    inference-memory figure. On CUDA the counter is reset when the loop
    starts and ends, so a train interval that contains a validation reports
    its training peak only (the part before validation is carried over).

    At the end of training it logs the whole-run peak (``peak_mem_run_gib``
    in the log and in scalars.json; it includes validation). With
    ``paper_units=True`` every figure is also given in the unit of the SHERL
    and UniPT papers' memory tables, "GB" = MiB/1000 = GiB x 1.024
    (:func:`sherl_mm.utils.memory.to_paper_gb`), as ``peak_mem_paper_gb``.

    Config::

        custom_hooks = [dict(type='PeakMemoryHook')]

    Args:
        interval: iterations between resets. ``None`` (default) follows the
            LoggerHook's interval, so each logged value covers exactly the
            iterations since the previous log line.
        cpu_mode: ``'maxrss'`` or ``'sampled'`` (see above).
        sample_interval: seconds between RSS samples in ``'sampled'`` mode.
        reduce_max: with several ranks, log the maximum over ranks (one
            ``all_reduce`` per log line) instead of this rank's figure.
        paper_units: also log ``peak_mem_paper_gb``.
    """

    priority = 'NORMAL'  # before LoggerHook (BELOW_NORMAL) reads the scalars

    def __init__(self, interval: int | None = None, cpu_mode: str = 'maxrss', sample_interval: float = 0.001,
                 reduce_max: bool = False, paper_units: bool = False) -> None:
        if cpu_mode not in ('maxrss', 'sampled'):
            raise ValueError(f"PeakMemoryHook: cpu_mode must be 'maxrss' or 'sampled', got {cpu_mode!r}")
        if interval is not None and interval < 1:
            raise ValueError(f'PeakMemoryHook: interval must be >= 1, got {interval}')
        self.interval = interval
        self.cpu_mode = cpu_mode
        self.sample_interval = sample_interval
        self.reduce_max = reduce_max
        self.paper_units = paper_units
        self.run_peak = 0
        self._logger_hook: LoggerHook | None = None
        self._sampler: RSSPeakSampler | None = None
        self._device: torch.device | None = None
        self._carry = 0
        self._eval_peak = 0
        self._training = False

    # -- helpers -----------------------------------------------------------
    @property
    def on_cuda(self) -> bool:
        return self._device is not None and self._device.type == 'cuda'

    @staticmethod
    def _model_device(runner) -> torch.device:
        model = runner.model
        for tensor in list(model.parameters())[:1] + list(model.buffers())[:1]:
            return tensor.device
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')

    def _source(self) -> str:
        if self.on_cuda:
            return 'torch.cuda.max_memory_allocated() since the previous log line'
        if self.cpu_mode == 'sampled':
            return (f'current RSS sampled every {self.sample_interval * 1000:g} ms, maximum since the previous '
                    f'log line')
        return 'process peak RSS since start (ru_maxrss; the kernel cannot reset it)'

    def _read(self) -> int:
        if self.on_cuda:
            return cuda_peak_bytes(self._device)
        if self.cpu_mode == 'sampled':
            return self._sampler.peak_bytes
        return process_peak_rss_bytes()

    def _reset(self) -> None:
        if self.on_cuda:
            reset_cuda_peak(self._device)
        elif self.cpu_mode == 'sampled':
            self._sampler.reset()

    def _boundary(self, runner, batch_idx: int) -> bool:
        """True when the LoggerHook (or ``interval``) ends an interval here."""
        if self.interval is not None:
            return self.every_n_train_iters(runner, self.interval) or self.is_last_train_iter(runner)
        logger_hook = self._logger_hook
        if logger_hook is None:
            return True
        if self.every_n_inner_iters(batch_idx, logger_hook.interval):
            return True
        dataloader = runner.train_dataloader
        try:
            return self.end_of_epoch(dataloader, batch_idx) and (
                not logger_hook.ignore_last or len(dataloader) <= logger_hook.interval)
        except TypeError:  # a dataloader without len()
            return False

    def _reduce(self, value: int) -> int:
        if not self.reduce_max or get_world_size() == 1:
            return value
        device = self._device if self.on_cuda else torch.device('cpu')
        tensor = torch.tensor([float(value)], dtype=torch.float64, device=device)
        all_reduce(tensor, op='max')
        return int(tensor.item())

    # -- hook points -------------------------------------------------------
    def before_run(self, runner) -> None:
        self._device = self._model_device(runner)
        self._logger_hook = next((h for h in runner.hooks if isinstance(h, LoggerHook)), None)
        if not self.on_cuda and self.cpu_mode == 'sampled' and self._sampler is None:
            self._sampler = RSSPeakSampler(self.sample_interval).start()
        self._carry = 0
        self._eval_peak = 0
        self._training = False

    def before_train(self, runner) -> None:
        self._training = True
        self._carry = 0
        self._reset()
        runner.logger.info(f'PeakMemoryHook: logging peak_mem_gib (GiB = 2**30 bytes) = {self._source()}')

    def after_train_iter(self, runner, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
        # _carry: what this interval reached before a validation phase reset
        # the counter.
        peak = max(self._carry, self._read())
        self.run_peak = max(self.run_peak, peak)
        boundary = self._boundary(runner, batch_idx)
        if boundary:
            peak = self._reduce(peak)
        runner.message_hub.update_scalar('train/peak_mem_gib', to_gib(peak))
        if self.paper_units:
            runner.message_hub.update_scalar('train/peak_mem_paper_gb', to_paper_gb(peak))
        if boundary:
            self._carry = 0
            self._reset()

    # Validation and test: the peak over the whole loop, logged with its
    # metrics as ``eval_peak_mem_gib`` (mmengine's LogProcessor resets the
    # CUDA counter at every val/test log line, so it is read after each
    # iteration, before the LoggerHook runs).
    def _before_eval(self) -> None:
        if self._training:
            self._carry = max(self._carry, self._read())
        self._reset()
        self._eval_peak = 0

    def _after_eval_iter(self) -> None:
        self._eval_peak = max(self._eval_peak, self._read())

    def _after_eval(self, runner, mode: str) -> None:
        self._after_eval_iter()
        peak = self._reduce(self._eval_peak)
        self.run_peak = max(self.run_peak, self._eval_peak)
        runner.message_hub.update_scalar(f'{mode}/eval_peak_mem_gib', to_gib(peak))
        if self.paper_units:
            runner.message_hub.update_scalar(f'{mode}/eval_peak_mem_paper_gb', to_paper_gb(peak))
        self._reset()

    def before_val_epoch(self, runner) -> None:
        self._before_eval()

    def before_test_epoch(self, runner) -> None:
        self._before_eval()

    def after_val_iter(self, runner, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
        self._after_eval_iter()

    def after_test_iter(self, runner, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
        self._after_eval_iter()

    def after_val_epoch(self, runner, metrics: dict | None = None) -> None:
        self._after_eval(runner, 'val')

    def after_test_epoch(self, runner, metrics: dict | None = None) -> None:
        self._after_eval(runner, 'test')

    def after_train(self, runner) -> None:
        self._training = False
        self.run_peak = max(self.run_peak, self._carry, self._read())
        peak = self._reduce(self.run_peak)
        scalars = {'peak_mem_run_gib': to_gib(peak)}
        message = f'PeakMemoryHook: whole-run peak memory {to_gib(peak):.4f} GiB'
        if self.paper_units:
            scalars['peak_mem_run_paper_gb'] = to_paper_gb(peak)
            message += f' ({to_paper_gb(peak):.4f} paper-"GB" = MiB/1000)'
        where = 'CUDA allocator peak' if self.on_cuda else \
            ('sampled RSS' if self.cpu_mode == 'sampled' else 'process peak RSS, ru_maxrss')
        runner.logger.info(f'{message} [{where}]')
        runner.message_hub.update_info('peak_mem_run_gib', to_gib(peak))
        runner.visualizer.add_scalars(scalars, step=runner.iter)

    def after_run(self, runner) -> None:
        if self._sampler is not None:
            self._sampler.stop()
            self._sampler = None
