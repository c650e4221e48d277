"""Checkpoint files: atomic writes, and trusted loading for the tools.

Writing
    mmengine's ``save_checkpoint`` serialises a checkpoint and hands the bytes
    to a storage backend chosen by ``backend_args``. :class:`AtomicLocalBackend`,
    registered with mmengine as ``'atomic_local'``, writes them to a temporary
    file in the target's folder, fsyncs it, renames it onto the target and
    fsyncs the folder, so the target is always the old file or the new one,
    never a truncated mix. Any Runner uses it when its checkpoint hook has
    ``backend_args=dict(backend='atomic_local')``;
    :class:`~sherl_mm.engine.hooks.AtomicCheckpointHook` selects it by default.
    Nothing of mmengine is patched: the backend is reached through mmengine's
    own ``backend_args`` lookup.

Loading
    torch >= 2.6 loads with ``weights_only=True`` by default, and mmengine
    0.10.7's local loader does not override it, but mmengine checkpoints hold
    ``HistoryBuffer`` objects, numpy scalars and dtypes (and the RNG state that
    :class:`~sherl_mm.engine.hooks.AtomicCheckpointHook` saves), so resuming
    fails with ``UnpicklingError``. :func:`trust_local_checkpoints` registers
    :func:`load_trusted_local` as mmengine's loader for local files through
    ``CheckpointLoader.register_scheme`` (mmengine's extension point for
    loaders; no function in another module is rebound). Only the tools' set-up
    (:func:`sherl_mm.engine.setup_runtime`, called by ``tools/train.py`` and
    ``tools/test.py``) calls it: there the user names the checkpoint, which
    their own runs wrote. Importing sherl_mm or building a model leaves
    mmengine's loaders as they are. An allow-list of classes
    (``torch.serialization.add_safe_globals``) was not chosen because what a
    checkpoint holds is open-ended: any hook may put objects in ``meta`` or the
    message hub. Unpickling can run code: load only checkpoints you trust.
    See docs/engine.md.
"""
import logging
import os
import os.path as osp
import tempfile
from typing import Any, Callable, Optional, Union

import torch
from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend, register_backend
from mmengine.logging import print_log
from mmengine.runner.checkpoint import CheckpointLoader

__all__ = ['ATOMIC_BACKEND', 'AtomicLocalBackend', 'atomic_write_bytes', 'atomic_write_text', 'is_local_path',
           'load_trusted_local', 'trust_local_checkpoints']

#: the name of :class:`AtomicLocalBackend` in mmengine's storage backends
ATOMIC_BACKEND = 'atomic_local'


def _fsync_dir(dirname: str) -> None:
    # makes the rename itself durable; not every file system allows it
    try:
        fd = os.open(dirname, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(filename: Union[str, os.PathLike], write: Callable[[Any], None]) -> None:
    """Call ``write(fileobj)`` on a temporary file beside ``filename``, fsync
    it, ``os.replace`` it onto ``filename`` and fsync the folder. On any error
    the temporary file is removed and ``filename`` is left as it was."""
    filename = osp.abspath(osp.expanduser(os.fspath(filename)))
    dirname = osp.dirname(filename)
    os.makedirs(dirname, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{osp.basename(filename)}.', suffix='.tmp', dir=dirname)
    try:
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; match open()
        os.replace(tmp, filename)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(dirname)


def atomic_write_bytes(filename: Union[str, os.PathLike], data: bytes) -> None:
    """Write ``data`` to ``filename`` atomically (see the module docstring)."""
    _atomic_write(filename, lambda f: f.write(data))


def atomic_write_text(filename: Union[str, os.PathLike], text: str, encoding: str = 'utf-8') -> None:
    """Write ``text`` to ``filename`` atomically (e.g. ``last_checkpoint``)."""
    atomic_write_bytes(filename, text.encode(encoding))


@register_backend(ATOMIC_BACKEND)
class AtomicLocalBackend(LocalBackend):
    """mmengine's local storage backend whose ``put`` / ``put_text`` write
    atomically (temporary file, fsync, rename, fsync of the folder). Reads,
    listings and removals are ``LocalBackend``'s.

    Config (any checkpoint hook)::

        default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=1,
                                             backend_args=dict(backend='atomic_local')))
    """

    def put(self, obj: bytes, filepath: Union[str, os.PathLike]) -> None:
        atomic_write_bytes(filepath, obj)

    def put_text(self, obj: str, filepath: Union[str, os.PathLike], encoding: str = 'utf-8') -> None:
        atomic_write_text(filepath, obj, encoding)


def is_local_path(path: Optional[Union[str, os.PathLike]]) -> bool:
    """True for a file-system path (no ``scheme://`` prefix); ``None``
    stands for the Runner's ``work_dir``, which is always local."""
    return path is None or '://' not in os.fspath(path)


def load_trusted_local(filename: str, map_location: Any = None) -> Any:
    """mmengine's local checkpoint loader with ``weights_only=False`` (full
    unpickling: ``HistoryBuffer``, numpy objects, RNG states)."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return torch.load(filename, map_location=map_location, weights_only=False)


def trust_local_checkpoints() -> bool:
    """Make mmengine load local checkpoint files with :func:`load_trusted_local`
    for the rest of the process, and log it the first time. Other schemes
    (``http://``, ``open-mmlab://`` ...) keep mmengine's loaders. Returns
    whether this call switched it on."""
    if CheckpointLoader._get_checkpoint_loader('checkpoint.pth') is load_trusted_local:
        return False
    CheckpointLoader.register_scheme(prefixes='', loader=load_trusted_local, force=True)
    if is_main_process():
        print_log('Local checkpoints are loaded with torch.load(weights_only=False): mmengine checkpoints hold '
                  'Python objects (HistoryBuffer, numpy values, RNG states). Load only checkpoints you trust.',
                  logger='current', level=logging.INFO)
    return True
