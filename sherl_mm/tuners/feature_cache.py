"""On-disk cache of a model's frozen routes, keyed by sample (beyond the paper).

A frozen stack (an image backbone, a text encoder) and SHERL's early route
(input stage and frozen early layers, under ``torch.no_grad``) compute the
same outputs every epoch when the data pipeline is deterministic (no random
augmentation) and the frozen layers run in eval mode (no dropout). The cache
stores them on the first epoch and serves them afterwards, so later epochs
run only the trainable part (for SHERL: MTSA, the late layers and the head).

Layout of a cache directory::

    shard_000000.safetensors   one per written batch: per-sample rows '<entry>'
                               (B, ...) and batch-independent tensors 'shared/<entry>'
    manifest.json              written last and atomically (temp file + rename):
                               fingerprint, entry kinds, static values, shard -> keys

Only the shards listed in the manifest belong to the cache; a shard file on
disk that the manifest does not list was written after the last commit (an
interrupted run) and is removed when the cache is opened. A directory with
shard files but no manifest is an interrupted first build and is refused.

The fingerprint hashes the frozen tensors the route reads, the route itself
(for SHERL: insertion points and selected sets), a string naming the data
pipeline (the hook hashes the training dataset's config) and a digest of the
frozen weights computed before the route; a cache whose fingerprint differs
is refused with an error naming what differs, or its files are removed and
it is rebuilt with ``rebuild_stale=True``.

:class:`FeatureCacheMixin` is what a tuner needs to serve a frozen route
from such a cache; :class:`~sherl_mm.tuners.BaseTuner` mixes it in, and the
tuners whose route has a frozen part say which (``cache_route``): a frozen
stack its whole output, SHERL its early route.
"""
from __future__ import annotations

import hashlib
import json
import os
import os.path as osp
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

FORMAT = 1
MANIFEST = 'manifest.json'
SHARD_PREFIX = 'shard_'
SHARD_SUFFIX = '.safetensors'
SHARED = 'shared/'
#: context values stored in the manifest itself; they must be equal for every batch
STATIC_TYPES = (type(None), bool, int, float, str)


def tensor_digest(tensor: Tensor) -> str:
    """blake2b of a tensor's dtype, shape and raw bytes (any dtype, any device)."""
    data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    h = hashlib.blake2b(digest_size=16)
    h.update(f'{tensor.dtype}{tuple(tensor.shape)}'.encode())
    h.update(data.tobytes())
    return h.hexdigest()


def weight_digests(module: nn.Module, exclude: Iterable[nn.Module] = ()) -> dict[str, str]:
    """``{name: digest}`` of every parameter and buffer of ``module`` except
    those owned by a module of ``exclude`` (compared by identity, so that a
    stack whose ``layers`` is a view of a wrapped model excludes them too)."""
    skip = {id(t) for m in exclude for t in list(m.parameters()) + list(m.buffers())}
    tensors = dict(module.named_parameters())
    tensors.update(module.named_buffers())
    return {name: tensor_digest(t) for name, t in sorted(tensors.items()) if id(t) not in skip}


def fingerprint_of(parts: Mapping[str, Any]) -> str:
    return hashlib.blake2b(json.dumps(parts, sort_keys=True).encode(), digest_size=16).hexdigest()


def _describe_difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """One line per fingerprint part that differs between two manifests' parts."""
    lines = []
    if old.get('pipeline') != new.get('pipeline'):
        lines.append(f"pipeline fingerprint: cache {old.get('pipeline')!r}, now {new.get('pipeline')!r}")
    if old.get('route') != new.get('route'):
        lines.append(f"SHERL route: cache {old.get('route')}, now {new.get('route')}")
    old_w, new_w = old.get('weights', {}), new.get('weights', {})
    if old_w != new_w:
        changed = sorted(k for k in set(old_w) & set(new_w) if old_w[k] != new_w[k])
        missing, extra = sorted(set(old_w) - set(new_w)), sorted(set(new_w) - set(old_w))
        detail = [f'{len(changed)} tensor(s) with other values (e.g. {changed[:3]})'] if changed else []
        detail += [f'tensors only in the cache: {missing[:3]}'] if missing else []
        detail += [f'tensors only in this model: {extra[:3]}'] if extra else []
        lines.append('frozen early-route weights: ' + '; '.join(detail))
    if old.get('upstream') != new.get('upstream'):
        lines.append('frozen weights computed before this stack (projections, other stacks) differ')
    if old.get('format') != new.get('format'):
        lines.append(f"cache format: cache {old.get('format')}, now {new.get('format')}")
    return '\n  '.join(lines) or 'fingerprint parts are equal but the fingerprint differs'


class EarlyRouteCache:
    """Per-sample store of the early route's outputs.

    Args:
        directory: the cache directory (created if missing). Use one
            directory per SHERL stack and per process.
        parts: what the fingerprint is made of: ``weights`` ({name: digest}),
            ``route`` (JSON-able) and ``pipeline`` (str); see
            :meth:`SHERL.feature_cache_parts`.
        rebuild_stale: delete a cache whose fingerprint differs, or an
            interrupted first build, and start a new one instead of raising.

    A batch is written as ``features`` (selected early states, each
    ``(B, ...)``) and ``context`` (the stack's context dict). Context tensors
    whose first dimension is the batch size are stored per sample; other
    tensors are stored once and must be equal in every batch; ``None`` /
    bool / int / float / str values go into the manifest and must be equal
    in every batch too. Anything else cannot be cached and raises.
    """

    def __init__(self, directory: str, parts: Mapping[str, Any], rebuild_stale: bool = False) -> None:
        self.directory = osp.abspath(directory)
        self.parts = dict(parts, format=FORMAT)
        self.fingerprint = fingerprint_of(self.parts)
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
                    f"{_describe_difference(manifest.get('parts', {}), self.parts)}\nDelete the directory, "
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


class FeatureCacheMixin:
    """Serve a tuner's frozen route from an :class:`EarlyRouteCache`.

    A tuner with ``cache_route`` set implements :meth:`_route_fingerprint`
    and calls :meth:`_cached_route` for the calls that carry sample keys
    (``sample_keys=`` in the call, or :attr:`sample_keys`, which
    :class:`~sherl_mm.hooks.EarlyRouteCacheHook` sets around each training
    iteration). Without keys, or before :meth:`enable_feature_cache`, the
    route runs as usual.
    """

    cache_route: str | None = None
    feature_cache: EarlyRouteCache | None = None
    sample_keys: list[str] | None = None

    def _route_fingerprint(self) -> tuple[dict[str, str], dict]:
        """``(weight digests, route)``: the frozen tensors the cached route
        reads and what decides which states are stored."""
        raise NotImplementedError

    def enable_feature_cache(self, directory: str, pipeline: str, upstream: str = '',
                             rebuild_stale: bool = False) -> EarlyRouteCache:
        """Open (or create) the cache of this tuner's frozen route.

        Args:
            directory: one directory per tuner and per process.
            pipeline: names the data pipeline that feeds the model (the hook
                hashes the training dataset's config); another value refuses
                the cache.
            upstream: digest of the frozen weights computed before this tuner
                (e.g. the projections feeding a transformer stack), so that
                changing them also refuses the cache.
            rebuild_stale: rebuild a cache with another fingerprint instead of
                raising.
        """
        if self.cache_route is None:
            raise ValueError(f'{type(self).__name__}: its route has no frozen part to cache (cache_route is None); '
                             f'the feature cache applies to frozen stacks and to SHERL\'s early route')
        if not isinstance(pipeline, str) or not pipeline:
            raise ValueError(f'{type(self).__name__}: enable_feature_cache needs a non-empty pipeline string naming '
                             f'the data pipeline (dataset, split, transforms); the cache is refused when it changes')
        weights, route = self._route_fingerprint()
        self.close_feature_cache()
        self.feature_cache = EarlyRouteCache(directory, dict(weights=weights, route=route, pipeline=pipeline,
                                                             upstream=upstream), rebuild_stale=rebuild_stale)
        return self.feature_cache

    def close_feature_cache(self) -> None:
        if self.feature_cache is not None:
            self.feature_cache.close()
        self.feature_cache = None
        self.sample_keys = None

    def _cache_keys(self, sample_keys: Sequence[Any] | None) -> list[str] | None:
        """The string keys of this call, or ``None`` when the cache is not used."""
        keys = sample_keys if sample_keys is not None else self.sample_keys
        if keys is None:
            return None
        if self.feature_cache is None:
            raise ValueError(f'{type(self).__name__}: sample keys were given but the feature cache is not enabled; '
                             f'call enable_feature_cache(...) or add EarlyRouteCacheHook to custom_hooks')
        return [str(k.item() if isinstance(k, Tensor) else k) for k in keys]

    @contextmanager
    def _frozen_eval(self, module: nn.Module) -> Iterator[None]:
        """Eval mode (no dropout) for the route that is written to the cache,
        so that it equals what a later epoch reads; every module's mode is
        restored after."""
        modes = [(m, m.training) for m in module.modules()]
        module.eval()
        try:
            yield
        finally:
            for m, mode in modes:
                m.training = mode

    def _cached_route(self, keys: list[str], inputs: Sequence[Any], compute: Callable[[], tuple[dict, dict]],
                      module: nn.Module, device: torch.device) -> tuple[dict[str, Tensor], dict]:
        """``(features, context)`` of the samples ``keys``: read when all are
        cached, else ``compute()`` (``module`` in eval mode, no graph) and written."""
        cache = self.feature_cache
        if cache.has_all(keys):
            return cache.load(keys, device)
        if any(isinstance(t, Tensor) and t.requires_grad for t in inputs):
            raise ValueError(f'{type(self).__name__}: an input of the stack requires grad, so its frozen route '
                             f'depends on trainable parameters and cannot be cached; leave this stack out of the '
                             f'feature cache')
        with self._frozen_eval(module), torch.no_grad():
            features, context = compute()
        cache.write(keys, features, context)
        return features, context


__all__ = ['EarlyRouteCache', 'FeatureCacheMixin', 'fingerprint_of', 'tensor_digest', 'weight_digests']
