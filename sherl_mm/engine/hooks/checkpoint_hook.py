"""The checkpoint hook of sherl_mm's default runtime (see docs/engine.md)."""
import os.path as osp
import random
from typing import Optional

import numpy as np
import torch
from mmengine.dist import get_dist_info, is_main_process
from mmengine.hooks import CheckpointHook

from sherl_mm.registry import HOOKS

from ..checkpoint import ATOMIC_BACKEND, atomic_write_text, is_local_path

__all__ = ['AtomicCheckpointHook', 'get_rng_state', 'set_rng_state']


def get_rng_state() -> dict:
    """The Python, numpy, torch (and, once initialised, CUDA) RNG states."""
    state = dict(python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`get_rng_state` returned (CUDA only on the same
    number of devices)."""
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'])
    cuda = state.get('cuda')
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


class _DeferredRemoval:
    """Wraps a file backend so that ``remove``/``rmtree`` are recorded, not
    done; used to delete an old best checkpoint only after the new one is
    safely written."""

    def __init__(self, backend):
        self._backend = backend
        self.pending = []

    def remove(self, path):
        self.pending.append(('remove', path))

    def rmtree(self, path):
        self.pending.append(('rmtree', path))

    def __getattr__(self, name):
        return getattr(self._backend, name)


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """:class:`mmengine.hooks.CheckpointHook` that never leaves a run without
    a loadable checkpoint, and makes resumed runs match uninterrupted ones.

    * Checkpoints are written through the ``'atomic_local'`` storage backend
      (:class:`~sherl_mm.engine.checkpoint.AtomicLocalBackend`: temp file,
      fsync, rename), selected by default when ``backend_args`` and
      ``file_client_args`` are not given and ``out_dir`` is a local path;
      ``last_checkpoint`` is written atomically too.
    * Old checkpoints (``max_keep_ckpts``) and the previous best checkpoint
      are deleted only *after* the new one is written; mmengine deletes first,
      so a crash while saving with ``max_keep_ckpts=1`` loses everything.
    * ``resume_rng=True`` (default) stores the Python/numpy/torch(/CUDA) RNG
      state in ``meta['rng_state']`` and restores it when the run is resumed,
      and keeps validation from advancing the training RNG stream (a val
      dataloader draws a seed from the global generator), so that
      ``--resume`` after epoch N ends with bit-identical weights to an
      uninterrupted run, dropout included. Under DDP with
      ``randomness.diff_rank_seed=True`` the RNG is not restored (only rank 0's
      state is in the checkpoint).

    All other arguments are those of ``CheckpointHook``, by keyword.
    """

    def __init__(self, interval: int = -1, *, resume_rng: bool = True, out_dir: Optional[str] = None,
                 backend_args: Optional[dict] = None, file_client_args: Optional[dict] = None, **kwargs) -> None:
        if backend_args is None and file_client_args is None and is_local_path(out_dir):
            backend_args = dict(backend=ATOMIC_BACKEND)
        super().__init__(interval, out_dir=out_dir, backend_args=backend_args, file_client_args=file_client_args,
                         **kwargs)
        self.resume_rng = resume_rng
        self._rng_to_restore = None
        self._rng_before_val = None

    # ------------------------------------------------------------------ RNG
    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if self.resume_rng:
            checkpoint.setdefault('meta', {})['rng_state'] = get_rng_state()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if not (self.resume_rng and getattr(runner, '_resume', False)):
            return
        state = checkpoint.get('meta', {}).get('rng_state')
        if state is None:
            return
        _, world_size = get_dist_info()
        if world_size > 1 and runner._randomness_cfg.get('diff_rank_seed', False):
            runner.logger.info('Not restoring the RNG state: diff_rank_seed=True and the checkpoint '
                               'holds rank 0\'s state only.')
            return
        # applied in before_train: Runner.resume may reseed after loading
        self._rng_to_restore = state

    def before_train(self, runner) -> None:
        super().before_train(runner)
        if self._rng_to_restore is not None:
            set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None
            runner.logger.info('Restored the random number generator state saved in the checkpoint.')

    def before_val(self, runner) -> None:
        if self.resume_rng:
            self._rng_before_val = get_rng_state()

    def after_val(self, runner) -> None:
        if self._rng_before_val is not None:
            set_rng_state(self._rng_before_val)
            self._rng_before_val = None

    # --------------------------------------------------------------- saving
    def _save_checkpoint_with_step(self, runner, step, meta):
        # Same bookkeeping as CheckpointHook, but the outdated checkpoint is
        # removed after the new one and `last_checkpoint` are written.
        outdated = None
        if self.max_keep_ckpts > 0:
            if not (len(self.keep_ckpt_ids) > 0 and self.keep_ckpt_ids[-1] == step):
                if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                    outdated = self.keep_ckpt_ids.popleft()
                self.keep_ckpt_ids.append(step)
                runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))

        ckpt_filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, ckpt_filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)

        runner.save_checkpoint(
            self.out_dir,
            ckpt_filename,
            self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=self.by_epoch,
            backend_args=self.backend_args,
            **self.args)

        if not is_main_process():
            return
        atomic_write_text(osp.join(runner.work_dir, 'last_checkpoint'), self.last_ckpt)

        if outdated is not None and outdated != step:
            self._remove(self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(outdated)))

    def _save_best_checkpoint(self, runner, metrics) -> None:
        backend = self.file_backend
        deferred = _DeferredRemoval(backend)
        self.file_backend = deferred
        try:
            super()._save_best_checkpoint(runner, metrics)
        finally:
            self.file_backend = backend
        if is_main_process():
            keep = {str(p) for p in [getattr(self, 'best_ckpt_path', None),
                                     *getattr(self, 'best_ckpt_path_dict', {}).values()] if p}
            for _, path in deferred.pending:
                if str(path) not in keep:
                    self._remove(path)

    def _remove(self, path) -> None:
        if self.file_backend.isfile(path):
            self.file_backend.remove(path)
        elif self.file_backend.isdir(path):  # deepspeed checkpoints are folders
            self.file_backend.rmtree(path)
