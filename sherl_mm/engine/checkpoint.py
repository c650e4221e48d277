"""Checkpoint I/O fixes for mmengine 0.10.7 on torch >= 2.6.

* Loading: torch >= 2.6 defaults ``torch.load`` to ``weights_only=True``, but
  mmengine checkpoints pickle ``HistoryBuffer`` objects, numpy scalars and
  dtypes, so ``resume=True`` dies with ``UnpicklingError``. The loaders mmengine
  uses for local files (and for the URL schemes that end in a local
  ``torch.load``) are re-registered here with ``weights_only=False``.
  Only load checkpoints you trust: like every pickle, they can run code.
* Saving: mmengine writes a checkpoint in place, so a run killed while saving
  leaves a truncated file. :func:`atomic_save_checkpoint` writes to a
  temporary file in the same folder, fsyncs it and ``os.replace``-s it onto
  the target, so the target is either the old file, the new one, or absent.

:func:`install_checkpoint_fixes` applies both; it is idempotent and runs when
``sherl_mm.engine`` is imported.
"""
import logging
import os
import os.path as osp
import sys
import tempfile

import torch
from mmengine.fileio import LocalBackend, get_file_backend
from mmengine.logging import print_log
from mmengine.dist import get_dist_info
from mmengine.runner import checkpoint as _ckpt

__all__ = ['atomic_save_checkpoint', 'atomic_write_text', 'install_checkpoint_fixes', 'torch_load']

_ORIG_SAVE = _ckpt.save_checkpoint
_installed = False


def torch_load(f, map_location=None):
    """``torch.load`` of a full (pickled) mmengine checkpoint."""
    return torch.load(f, map_location=map_location, weights_only=False)


# --------------------------------------------------------------------------
# loaders
# --------------------------------------------------------------------------
def load_from_local(filename, map_location=None):
    """mmengine's local loader, with ``weights_only=False``."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return torch_load(filename, map_location=map_location)


def _load_url(url, map_location=None, model_dir=None, progress=False):
    return torch.hub.load_state_dict_from_url(
        url, model_dir=model_dir, map_location=map_location, progress=progress, weights_only=False)


def load_from_http(filename, map_location=None, model_dir=None, progress=os.isatty(0)):
    """mmengine's http(s) loader (rank 0 downloads first), ``weights_only=False``."""
    rank, world_size = get_dist_info()
    checkpoint = None
    if rank == 0:
        checkpoint = _load_url(filename, map_location, model_dir, progress)
    if world_size > 1:
        torch.distributed.barrier()
        if rank > 0:
            checkpoint = _load_url(filename, map_location, model_dir, progress)
    return checkpoint


def load_from_torchvision(filename, map_location=None):
    model_name = filename.split('://', 1)[1]
    return load_from_http(_ckpt.get_torchvision_models()[model_name], map_location=map_location)


def load_from_openmmlab(filename, map_location=None):
    prefix, model_name = filename.split('://', 1)
    deprecated = _ckpt.get_deprecated_model_names()
    if model_name in deprecated:
        print_log(f'{prefix}://{model_name} is deprecated in favor of {prefix}://{deprecated[model_name]}',
                  logger='current', level=logging.WARNING)
        model_name = deprecated[model_name]
    model_url = _ckpt.get_external_models()[model_name]
    if model_url.startswith(('http://', 'https://')):
        return load_from_http(model_url, map_location=map_location)
    return load_from_local(osp.join(_ckpt._get_mmengine_home(), model_url), map_location)


def load_from_mmcls(filename, map_location=None):
    checkpoint = load_from_http(_ckpt.get_mmcls_models()[filename[8:]], map_location=map_location)
    return _ckpt._process_mmcls_checkpoint(checkpoint)


# --------------------------------------------------------------------------
# atomic writes
# --------------------------------------------------------------------------
def _fsync_dir(dirname):
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


def _atomic_write(filename, write):
    """Call ``write(fileobj)`` on a temp file beside ``filename``, then
    ``os.replace`` it onto ``filename``. On any error the temp file is removed
    and ``filename`` is left as it was."""
    filename = osp.abspath(osp.expanduser(filename))
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


def atomic_write_text(filename, text):
    """Write ``text`` to ``filename`` atomically (e.g. ``last_checkpoint``)."""
    _atomic_write(filename, lambda f: f.write(text.encode('utf-8')))


def _is_local(filename, file_client_args, backend_args):
    if file_client_args is not None or '://' in str(filename):
        return False
    try:
        return isinstance(get_file_backend(filename, backend_args=backend_args), LocalBackend)
    except Exception:  # unknown backend spec: let mmengine decide
        return False


def atomic_save_checkpoint(checkpoint, filename, file_client_args=None, backend_args=None):
    """Drop-in for :func:`mmengine.runner.checkpoint.save_checkpoint` that
    writes local files atomically (temp file + fsync + ``os.replace``). Other
    backends (pavi, petrel, ...) go to mmengine's implementation."""
    if not _is_local(filename, file_client_args, backend_args):
        return _ORIG_SAVE(checkpoint, filename, file_client_args=file_client_args, backend_args=backend_args)
    _atomic_write(filename, lambda f: torch.save(checkpoint, f))


# --------------------------------------------------------------------------
def install_checkpoint_fixes():
    """Re-register mmengine's checkpoint loaders with ``weights_only=False``
    and route mmengine's ``save_checkpoint`` through the atomic writer."""
    global _installed
    if _installed:
        return
    register = _ckpt.CheckpointLoader.register_scheme
    register(prefixes='', loader=load_from_local, force=True)
    register(prefixes=('http://', 'https://'), loader=load_from_http, force=True)
    register(prefixes=('modelzoo://', 'torchvision://'), loader=load_from_torchvision, force=True)
    register(prefixes=('open-mmlab://', 'openmmlab://'), loader=load_from_openmmlab, force=True)
    register(prefixes='mmcls://', loader=load_from_mmcls, force=True)

    # Every mmengine module that imported save_checkpoint by name (the Runner,
    # mmengine.runner, the strategies) gets the atomic version; modules
    # imported later read it from mmengine.runner.checkpoint.
    _ckpt.save_checkpoint = atomic_save_checkpoint
    for name, module in list(sys.modules.items()):
        if (name == 'mmengine' or name.startswith('mmengine.')) and module is not None and \
                getattr(module, 'save_checkpoint', None) is _ORIG_SAVE:
            module.save_checkpoint = atomic_save_checkpoint
    _installed = True

