"""Checks run by the tools before the Runner is built, so that bad input
gives one clear message naming the file, the key and the value, not an
mmengine stack trace.

* :func:`validate_config`: every ``type`` in the config is registered (with
  the key path, the config file that sets it and close registered names),
  data roots and annotation files exist, and ``load_from``/``--resume``
  checkpoints exist.
* :func:`check_checkpoint_compat`: a checkpoint given to ``tools/test.py``
  belongs to the model the config builds (run by
  :class:`~sherl_mm.engine.hooks.CheckpointCompatHook`).
"""
import difflib
import os
import os.path as osp
import re
from importlib import import_module
from typing import Iterable, List, Optional

from mmengine import registry as mmengine_registry
from mmengine.config import Config
from mmengine.registry import Registry

__all__ = ['UserInputError', 'validate_config', 'check_checkpoint_compat', 'config_files']


class UserInputError(Exception):
    """Bad input (config, data path, checkpoint) found by sherl_mm's checks.
    The tools print its message without a traceback and exit with status 2."""


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def _display(path) -> str:
    path = str(path)
    try:
        rel = osp.relpath(path)
    except ValueError:
        return path
    return rel if not rel.startswith('..') else path


def _fmt_path(path: tuple) -> str:
    out = ''
    for p in path:
        out += f'[{p}]' if isinstance(p, int) else (f'.{p}' if out else str(p))
    return out


def config_files(filename: Optional[str]) -> List[str]:
    """The config file and all its ``_base_`` files, the file itself first."""
    out: List[str] = []

    def visit(f):
        if f is None or f in out or not osp.isfile(f):
            return
        out.append(f)
        try:
            bases = Config._get_base_files(f)
        except Exception:
            return
        for b in bases:
            try:
                path, _ = Config._get_cfg_path(b, f)
            except Exception:
                continue
            visit(osp.abspath(path))

    visit(osp.abspath(filename) if filename else None)
    return out


def _origin(cfg, value, cfg_options: Optional[dict]) -> str:
    """Where a literal value is set: 'file:line' or '--cfg-options k=v'."""
    if cfg_options:
        for k, v in cfg_options.items():
            if v == value or (isinstance(v, (list, tuple)) and value in v):
                return f'--cfg-options {k}={v}'
    pattern = re.compile(r'''(['"])''' + re.escape(str(value)) + r'\1')
    for f in config_files(cfg.filename):
        try:
            with open(f, encoding='utf-8') as fh:
                for lineno, line in enumerate(fh, 1):
                    if pattern.search(line):
                        return f'{_display(f)}:{lineno}'
        except OSError:
            continue
    return ''


# --------------------------------------------------------------------------
# registry lookups
# --------------------------------------------------------------------------
def _scope_registries(scope: str) -> dict:
    """name -> registry used for building under ``scope`` (as the Runner
    does with switch_scope_and_registry), for every mmengine root registry
    and every root registry the scope's package defines."""
    out = {}
    for name in dir(mmengine_registry):
        root = getattr(mmengine_registry, name)
        if isinstance(root, Registry) and root.parent is None:
            child = root._search_child(scope) if scope else None
            out[name] = child or root
    try:
        own = import_module(f'{scope}.registry')
    except ImportError:
        own = None
    if own is not None:
        for name in dir(own):
            reg = getattr(own, name)
            if isinstance(reg, Registry) and reg.parent is None and name not in out:
                out[name] = reg
    return out


def _get(reg: Registry, key: str):
    try:
        return reg.get(key)
    except Exception:
        return None


def _names(reg: Registry) -> set:
    names = set()
    while reg is not None:
        names.update(reg.module_dict.keys())
        reg = reg.parent
    return names


_DATALOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')


def _expected_registry(path: tuple) -> Optional[str]:
    """The registry a ``type`` at ``path`` is built from, where it is certain."""
    top, rest = path[0], path[1:]
    keys = [p for p in rest if isinstance(p, str)]
    if top == 'model':
        return 'MODELS' if not rest else None
    if top in _DATALOADERS:
        if 'pipeline' in keys:
            return 'TRANSFORMS'
        if keys and keys[-1] in ('sampler', 'batch_sampler') and len(keys) == 1:
            return 'DATA_SAMPLERS'
        if keys and keys[-1] == 'collate_fn':
            return 'FUNCTIONS'
        if keys and keys[-1] in ('dataset', 'datasets'):
            return 'DATASETS'
        return None
    if top == 'optim_wrapper':
        return {(): 'OPTIM_WRAPPERS', ('optimizer',): 'OPTIMIZERS'}.get(tuple(keys))
    if top == 'param_scheduler':
        return 'PARAM_SCHEDULERS' if not keys else None
    if top in ('default_hooks', 'custom_hooks'):
        return 'HOOKS' if len(rest) == 1 else None
    if top in ('val_evaluator', 'test_evaluator'):
        return 'METRICS' if not keys or keys == ['metrics'] else None
    if top == 'visualizer':
        return {(): 'VISUALIZERS', ('vis_backends',): 'VISBACKENDS'}.get(tuple(keys))
    if top == 'vis_backends':
        return 'VISBACKENDS'
    if top == 'log_processor' and not rest:
        return 'LOG_PROCESSORS'
    if top in ('train_cfg', 'val_cfg', 'test_cfg') and not rest:
        return 'LOOPS'
    if top == 'model_wrapper_cfg' and not rest:
        return 'MODEL_WRAPPERS'
    return None


def _walk_types(node, path=()):
    if isinstance(node, dict):
        t = node.get('type')
        if isinstance(t, str) and path:
            yield path, t
        for k, v in node.items():
            if k != 'type':
                yield from _walk_types(v, path + (k,))
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from _walk_types(v, path + (i,))


_ORDER = ('MODELS', 'TASK_UTILS', 'WEIGHT_INITIALIZERS')


def _check_types(cfg, cfg_options) -> List[str]:
    scope = cfg.get('default_scope') or 'mmengine'
    regs = _scope_registries(scope)
    errors = []
    cache = {}
    for path, t in _walk_types(cfg.to_dict() if hasattr(cfg, 'to_dict') else dict(cfg)):
        expected = _expected_registry(path)
        order = ([expected] if expected in regs else []) + [n for n in _ORDER if n in regs and n != expected]
        order += [n for n in regs if n not in order]
        if t in cache:
            found = cache[t]
        else:
            found = any(_get(regs[n], t) is not None for n in order)
            cache[t] = found
        if found:
            continue
        if expected in regs:
            pool = _names(regs[expected])
            what = f'is not a registered {regs[expected].name} type'
        else:
            pool = set().union(*(_names(regs[n]) for n in order))
            what = 'is not registered in any registry'
        bare = t.split('.')[-1]
        close = difflib.get_close_matches(bare, pool, n=5, cutoff=0.6)
        close += sorted(n for n in pool if n.lower() == bare.lower() and n not in close)
        where = _origin(cfg, t, cfg_options)
        msg = f'{_fmt_path(path)}.type = {t!r} {what} (scope {scope!r})' + (f', set at {where}' if where else '') + '.'
        if close:
            msg += ' Did you mean: ' + ', '.join(repr(c) for c in close[:5]) + '?'
        msg += (' A class of your own must be registered (@MODELS.register_module() etc.) in a module '
                'listed in custom_imports=dict(imports=[...]).')
        errors.append(msg)
    return errors


# --------------------------------------------------------------------------
# data paths
# --------------------------------------------------------------------------
def _is_remote(p: str) -> bool:
    return '://' in p


def _check_dataset(ds, path, errors):
    if not isinstance(ds, dict):
        return
    key = _fmt_path(path)
    data_root = ds.get('data_root')
    root_ok = True
    if isinstance(data_root, str) and data_root and not _is_remote(data_root):
        if not osp.isdir(data_root):
            root_ok = False
            errors.append(
                f'{key}.data_root = {data_root!r}: no such directory ({osp.abspath(data_root)}; relative '
                f'paths are resolved from the current directory {os.getcwd()}). Put the data there, or '
                f'point the config at it with --cfg-options {key}.data_root=/path/to/data.')
    ann = ds.get('ann_file')
    if root_ok and isinstance(ann, str) and ann and not _is_remote(ann):
        full = ann if (osp.isabs(ann) or not data_root) else osp.join(data_root, ann)
        if not osp.exists(full):
            how = f' (data_root {data_root!r} + ann_file {ann!r})' if full != ann else ''
            errors.append(
                f'{key}.ann_file: annotation file {full!r}{how} does not exist ({osp.abspath(full)}). '
                f'Put it there, or set --cfg-options {key}.ann_file=... / {key}.data_root=...')
    if isinstance(ds.get('dataset'), dict):
        _check_dataset(ds['dataset'], path + ('dataset',), errors)
    if isinstance(ds.get('datasets'), (list, tuple)):
        for i, d in enumerate(ds['datasets']):
            _check_dataset(d, path + ('datasets', i), errors)


def _check_data(cfg, mode: str) -> List[str]:
    if mode == 'train':
        keys = ['train_dataloader'] + (['val_dataloader'] if cfg.get('val_cfg') else [])
    else:
        keys = [f'{mode}_dataloader']
    errors: List[str] = []
    for k in keys:
        dl = cfg.get(k)
        if isinstance(dl, dict):
            _check_dataset(dl.get('dataset'), (k, 'dataset'), errors)
    return errors


def _check_load_from(cfg) -> List[str]:
    load_from = cfg.get('load_from')
    if isinstance(load_from, str) and load_from and not _is_remote(load_from) \
            and not osp.isfile(osp.expanduser(load_from)):
        what = '--resume checkpoint' if cfg.get('resume') else 'load_from'
        return [f'{what} {load_from!r}: no such checkpoint file ({osp.abspath(load_from)}).']
    return []


def validate_config(cfg, mode: str = 'train', cfg_options: Optional[dict] = None) -> None:
    """Raise :class:`UserInputError` listing every problem found in ``cfg``
    for ``mode`` ('train', 'val' or 'test'). Set the environment variable
    ``SHERL_MM_NO_CONFIG_CHECK=1`` to skip the ``type`` check (e.g. for a
    config dict whose ``type`` is not a registry name)."""
    errors = _check_data(cfg, mode) + _check_load_from(cfg)
    if not os.environ.get('SHERL_MM_NO_CONFIG_CHECK'):
        errors = _check_types(cfg, cfg_options) + errors
    if errors:
        name = _display(cfg.filename) if cfg.filename else '<config>'
        raise UserInputError(f'invalid config {name}:\n' + '\n'.join(f'  - {e}' for e in errors))


# --------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------
def _strip(key: str) -> str:
    return key[len('module.'):] if key.startswith('module.') else key


def _list(keys: Iterable[str], n: int = 5) -> str:
    keys = sorted(keys)
    more = f', ... ({len(keys)} in all)' if len(keys) > n else ''
    return ', '.join(keys[:n]) + more


def check_checkpoint_compat(model, checkpoint, filename: str) -> None:
    """Raise :class:`UserInputError` if ``checkpoint`` (a loaded dict) is not
    a checkpoint of ``model``: tensors of different shapes, keys missing on
    both sides, or no key in common. Only one-sided differences (e.g. a
    checkpoint of the trainable part only) are let through, with a warning
    from mmengine's loader."""
    from mmengine.model import is_model_wrapper
    if is_model_wrapper(model):
        model = model.module
    if not isinstance(checkpoint, dict):
        raise UserInputError(f'checkpoint {filename!r} holds a {type(checkpoint).__name__}, not a state dict.')
    sd = checkpoint.get('state_dict', checkpoint)
    if not isinstance(sd, dict):
        raise UserInputError(f'checkpoint {filename!r} has no state_dict.')
    ckpt = {_strip(k): v for k, v in sd.items()}
    own = model.state_dict()
    missing = set(own) - set(ckpt)
    unexpected = set(ckpt) - set(own)
    shapes = {k for k in set(own) & set(ckpt)
              if hasattr(ckpt[k], 'shape') and tuple(ckpt[k].shape) != tuple(own[k].shape)}
    if not shapes and not (missing and unexpected) and (set(own) & set(ckpt) or not own):
        return
    lines = [f'checkpoint {_display(filename)!r} does not match the model built from the config '
             f'({type(model).__name__}, {len(own)} tensors; checkpoint: {len(ckpt)} tensors).']
    if shapes:
        lines.append('  shape mismatch: ' + ', '.join(
            f'{k} {tuple(ckpt[k].shape)} in checkpoint vs {tuple(own[k].shape)} in model'
            for k in sorted(shapes)[:5]) + (f', ... ({len(shapes)} in all)' if len(shapes) > 5 else ''))
    if missing:
        lines.append(f'  missing in checkpoint: {_list(missing)}')
    if unexpected:
        lines.append(f'  not in model: {_list(unexpected)}')
    lines.append('  Is it a checkpoint of another model or config?')
    raise UserInputError('\n'.join(lines))
