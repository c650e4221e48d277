"""On-disk store of a frozen route's outputs, keyed by sample (beyond the paper).

Layout of a cache directory::

    shard_000000.safetensors   one per written batch: per-sample rows '<entry>'
                               (B, ...) and batch-independent tensors 'shared/<entry>'
    manifest.json              written last and atomically (temp file + rename):
                               fingerprint, entry kinds, static values, shard -> keys

Only the shards listed in the manifest belong to the cache; a shard file on
disk that the manifest does not list was written after the last commit (an
interrupted run) and is removed when the cache is opened. A directory with
shard files but no manifest is an interrupted first build and is refused.

A cache whose fingerprint (:mod:`~sherl_mm.feature_cache.fingerprint`)
differs from the model's is refused with an error naming what differs, or
its files are removed and it is rebuilt with ``rebuild_stale=True``.
See docs/feature_cache.md.
"""
from __future__ import annotations

import json
import os
import os.path as osp
import warnings
from typing import Any, Mapping, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from .fingerprint import describe_difference, json_digest

FORMAT = 1
MANIFEST = 'manifest.json'
SHARD_PREFIX = 'shard_'
SHARD_SUFFIX = '.safetensors'
SHARED = 'shared/'
#: context values stored in the manifest itself; they must be equal for every batch
STATIC_TYPES = (type(None), bool, int, float, str)


class FeatureCache:
    """Per-sample store of the outputs of a frozen route.

    Args:
        directory: the cache directory (created if missing). Use one
            directory per cached stack and per process.
        parts: what the fingerprint is made of (see
            :mod:`~sherl_mm.feature_cache.fingerprint`): ``weights``
            ({name: digest}), ``route`` (JSON-able), ``upstream`` (str) and
            ``pipeline`` (str).
        rebuild_stale: delete a cache whose fingerprint differs, or an
            interrupted first build, and start a new one instead of raising.

    A batch is written as ``features`` (the route's stored states, each
    ``(B, ...)``) and ``context`` (the stack's context dict). Context tensors
    whose first dimension is the batch size are stored per sample; other
    tensors are stored once and must be equal in every batch; ``None`` /
    bool / int / float / str values go into the manifest and must be equal
    in every batch too. Anything else cannot be cached and raises.
    """

    def __init__(self, directory: str, parts: Mapping[str, Any], rebuild_stale: bool = False) -> None:
        self.directory = osp.abspath(directory)
        self.parts = dict(parts, format=FORMAT)
        self.fingerprint = json_digest(self.parts)
        # entry name -> {'kind': 'sample' | 'shared' | 'static', 'value': ... (static only)}
        self.entries: dict[str, dict] = {}
        self.shards: dict[str, list[str]] = {}
        self.index: dict[str, tuple[str, int]] = {}
        self.shared: dict[str, Tensor] = {}
        self.dirty = False
        self._handles: dict[str, Any] = {}
        os.makedirs(self.directory, exist_ok=True)
        self._open(rebuild_stale)

    # ------------------------------------------------------------------ opening
    def _shard_files(self) -> list[str]:
        return sorted(f for f in os.listdir(self.directory) if f.startswith(SHARD_PREFIX))

    def _open(self, rebuild_stale: bool) -> None:
        path = osp.join(self.directory, MANIFEST)
        if not osp.isfile(path):
            if self._shard_files():
                if not rebuild_stale:
                    raise RuntimeError(
                        f'feature cache {self.directory}: {len(self._shard_files())} shard file(s) but no '
                        f'{MANIFEST}: an earlier build was interrupted before its first commit. Delete the '
                        f'directory or pass rebuild_stale=True to rebuild it')
                self._clear()
            return
        with open(path) as f:
            manifest = json.load(f)
        if manifest.get('fingerprint') != self.fingerprint:
            if not rebuild_stale:
                raise RuntimeError(
                    f'feature cache {self.directory} was built for another model or data pipeline:\n  '
                    f"{describe_difference(manifest.get('parts', {}), self.parts)}\nDelete the directory, "
                    f'point feature_cache.dir elsewhere, or pass rebuild_stale=True to rebuild it')
            self._clear()
            return
        self.entries = manifest['entries']
        self.shards = {name: list(keys) for name, keys in manifest['shards'].items()}
        self.index = {key: (name, row) for name, keys in self.shards.items() for row, key in enumerate(keys)}
        orphans = [f for f in self._shard_files() if f not in self.shards]
        if orphans:
            warnings.warn(f'feature cache {self.directory}: removing {len(orphans)} shard file(s) written after '
                          f'the last commit (interrupted run); their samples are recomputed when seen')
            for name in orphans:
                os.remove(osp.join(self.directory, name))
        if self.shards:
            first = self._handle(next(iter(self.shards)))
            self.shared = {k[len(SHARED):]: first.get_tensor(k) for k in first.keys() if k.startswith(SHARED)}

    def _clear(self) -> None:
        """Remove the cache's own files (shards, manifest), not the directory:
        it may be one the user also keeps other files in."""
        self.close()
        for name in self._shard_files() + [MANIFEST]:
            path = osp.join(self.directory, name)
            if osp.exists(path):
                os.remove(path)

    def _handle(self, shard: str) -> Any:
        if shard not in self._handles:
            self._handles[shard] = safe_open(osp.join(self.directory, shard), framework='pt')
        return self._handles[shard]

    def close(self) -> None:
        self._handles.clear()

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def has_all(self, keys: Sequence[str]) -> bool:
        return all(k in self.index for k in keys)

    def load(self, keys: Sequence[str], device: torch.device | str = 'cpu') -> tuple[dict[str, Tensor], dict]:
        """``(features, context)`` of the samples ``keys``, batched in that order.

        Every sample's rows must have the same shape (inputs padded to a fixed
        length); otherwise raises, since the rows cannot be stacked.
        """
        batch: dict[str, Tensor] = {}
        for name, spec in self.entries.items():
            if spec['kind'] != 'sample':
                continue
            rows = []
            for key in keys:
                shard, row = self.index[key]
                rows.append(self._handle(shard).get_slice(name)[row:row + 1])
            shapes = {tuple(r.shape[1:]) for r in rows}
            if len(shapes) > 1:
                raise ValueError(f'feature cache {self.directory}: entry {name!r} has per-sample shapes '
                                 f'{sorted(shapes)} in one batch; cached samples must have a fixed shape '
                                 f'(pad inputs to a fixed length in the data pipeline)')
            batch[name] = torch.cat(rows).to(device, non_blocking=True)
        features: dict[str, Tensor] = {}
        context: dict[str, Any] = {}
        for name, spec in self.entries.items():
            group, _, entry = name.partition('/')
            if spec['kind'] == 'sample':
                value = batch[name]
            elif spec['kind'] == 'shared':
                value = self.shared[name].to(device)
            else:
                value = spec['value']
            (features if group == 'feat' else context)[entry] = value
        return features, context

    # ------------------------------------------------------------------ writing
    def _classify(self, name: str, value: Any, batch_size: int) -> tuple[str, Any]:
        if isinstance(value, Tensor):
            return ('sample' if value.dim() >= 1 and value.shape[0] == batch_size else 'shared'), value
        if isinstance(value, STATIC_TYPES):
            return 'static', value
        raise TypeError(f'feature cache {self.directory}: context entry {name.partition("/")[2]!r} is a '
                        f'{type(value).__name__}, which cannot be cached; the cache stores tensors (per sample '
                        f'when their first dimension is the batch size, else shared by all batches) and '
                        f'None/bool/int/float/str values')

    def write(self, keys: Sequence[str], features: Mapping[str, Tensor], context: Mapping[str, Any]) -> None:
        """Store the batch rows of the samples in ``keys`` not cached yet.

        ``features`` / ``context`` are one batch of ``len(keys)`` samples. The
        shard becomes part of the cache on disk at the next :meth:`commit`.
        """
        batch_size = len(keys)
        items = {f'feat/{k}': v for k, v in features.items()}
        items.update({f'ctx/{k}': v for k, v in context.items()})
        if self.entries and set(items) != set(self.entries):
            raise ValueError(f'feature cache {self.directory}: this batch has entries {sorted(items)}, '
                             f'earlier batches {sorted(self.entries)}; the cached route must be the same for '
                             f'every batch')
        rows = [i for i, k in enumerate(keys) if k not in self.index and k not in keys[:i]]
        if not rows:
            return
        take = torch.tensor(rows)
        tensors: dict[str, Tensor] = {}
        for name, value in items.items():
            kind, value = self._classify(name, value, batch_size)
            known = self.entries.get(name)
            if known is not None and known['kind'] != kind:
                raise ValueError(f'feature cache {self.directory}: entry {name!r} was {known["kind"]} in earlier '
                                 f'batches and is {kind} in this one (batch size {batch_size}); a context tensor '
                                 f'is per sample when its first dimension is the batch size')
            if kind == 'sample':
                tensors[name] = value.detach().index_select(0, take.to(value.device)).cpu().contiguous()
            elif kind == 'shared':
                value = value.detach().cpu().contiguous()
                if name in self.shared and not torch.equal(self.shared[name], value):
                    raise ValueError(f'feature cache {self.directory}: shared context tensor {name!r} differs '
                                     f'between batches; it cannot be cached once for all samples')
                self.shared.setdefault(name, value)
                tensors[SHARED + name] = value
            elif known is not None and known['value'] != value:
                raise ValueError(f'feature cache {self.directory}: context value {name!r} is {value!r} in this '
                                 f'batch and {known["value"]!r} in earlier ones; it cannot be cached')
            self.entries.setdefault(name, {'kind': kind, **({'value': value} if kind == 'static' else {})})
        shard = f'{SHARD_PREFIX}{len(self.shards):06d}{SHARD_SUFFIX}'
        while osp.exists(osp.join(self.directory, shard)):     # numbers freed by removed orphans stay taken
            shard = f'{SHARD_PREFIX}{int(shard[len(SHARD_PREFIX):-len(SHARD_SUFFIX)]) + 1:06d}{SHARD_SUFFIX}'
        tmp = osp.join(self.directory, f'.{shard}.tmp')
        save_file(tensors, tmp)
        os.replace(tmp, osp.join(self.directory, shard))
        new_keys = [keys[i] for i in rows]
        self.shards[shard] = new_keys
        self.index.update((key, (shard, row)) for row, key in enumerate(new_keys))
        self.dirty = True

    def commit(self) -> None:
        """Write the manifest (atomically) so that the shards written so far
        are part of the cache for later runs; a no-op when nothing is new."""
        if not self.dirty:
            return
        path = osp.join(self.directory, MANIFEST)
        if osp.isfile(path):
            with open(path) as f:
                on_disk = json.load(f).get('fingerprint')
            if on_disk != self.fingerprint:
                raise RuntimeError(f'feature cache {self.directory}: the manifest on disk was written by another '
                                   f'model or pipeline (fingerprint {on_disk}, this one {self.fingerprint}); two '
                                   f'stacks or processes share this directory, give each its own')
        manifest = dict(format=FORMAT, fingerprint=self.fingerprint, parts=self.parts, entries=self.entries,
                        shards=self.shards)
        tmp = f'{path}.tmp'
        with open(tmp, 'w') as f:
            json.dump(manifest, f)
        os.replace(tmp, path)
        self.dirty = False


__all__ = ['FORMAT', 'FeatureCache', 'MANIFEST']
