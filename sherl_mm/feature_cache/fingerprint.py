"""What a feature cache is keyed by, as digests.

A cache is valid for one model and one data pipeline. Its fingerprint is one
digest of its parts (see :class:`~sherl_mm.feature_cache.FeatureCache`):

* ``weights``: ``{name: digest}`` of the frozen tensors the cached route reads;
* ``route``: what decides which states are stored (the tuner says);
* ``upstream``: one digest of the model's other frozen parameters, which may
  feed the route's inputs (input projections, other stacks);
* ``pipeline``: a string naming the data pipeline (the hook digests the
  training dataset's config);
* ``format``: the cache's file format version.

:func:`describe_difference` says which parts differ between two caches.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable, Mapping

import torch
from torch import Tensor, nn


def json_digest(value: Any) -> str:
    """blake2b of ``value`` as sorted-key JSON (anything JSON can't hold as its ``str``)."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def tensor_digest(tensor: Tensor) -> str:
    """blake2b of a tensor's dtype, shape and raw bytes (any dtype, any device)."""
    data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    h = hashlib.blake2b(digest_size=16)
    h.update(f'{tensor.dtype}{tuple(tensor.shape)}'.encode())
    h.update(data.tobytes())
    return h.hexdigest()


class TensorDigests:
    """Digests of a model's tensors, each computed once.

    A model's frozen weights can be hundreds of MB and every cache of the
    model reads some of them (its own route) and digests the rest (upstream);
    one instance, used while the caches are opened, hashes each tensor once.
    Tensors are known by identity, so use an instance only while the weights
    do not change.
    """

    def __init__(self) -> None:
        self._known: dict[int, str] = {}

    def __call__(self, tensor: Tensor) -> str:
        if id(tensor) not in self._known:
            self._known[id(tensor)] = tensor_digest(tensor)
        return self._known[id(tensor)]

    def of_module(self, module: nn.Module, exclude: Iterable[nn.Module] = ()) -> dict[str, str]:
        """``{name: digest}`` of every parameter and buffer of ``module`` except
        those owned by a module of ``exclude`` (compared by identity, so that a
        stack whose ``layers`` is a view of a wrapped model excludes them too)."""
        skip = {id(t) for m in exclude for t in list(m.parameters()) + list(m.buffers())}
        tensors = dict(module.named_parameters())
        tensors.update(module.named_buffers())
        return {name: self(t) for name, t in sorted(tensors.items()) if id(t) not in skip}

    def outside(self, model: nn.Module, inner: nn.Module) -> str:
        """One digest of the frozen parameters of ``model`` that are not
        ``inner``'s: what may feed ``inner``'s inputs."""
        own = {id(p) for p in inner.parameters()}
        frozen = [(name, self(p)) for name, p in model.named_parameters() if not p.requires_grad and id(p) not in own]
        return json_digest(frozen)


def describe_difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """One line per fingerprint part that differs between a cache's parts
    (``old``) and this model's (``new``)."""
    lines = []
    if old.get('pipeline') != new.get('pipeline'):
        lines.append(f"pipeline fingerprint: cache {old.get('pipeline')!r}, now {new.get('pipeline')!r}")
    if old.get('route') != new.get('route'):
        lines.append(f"cached route: cache {old.get('route')}, now {new.get('route')}")
    old_w, new_w = old.get('weights', {}), new.get('weights', {})
    if old_w != new_w:
        changed = sorted(k for k in set(old_w) & set(new_w) if old_w[k] != new_w[k])
        missing, extra = sorted(set(old_w) - set(new_w)), sorted(set(new_w) - set(old_w))
        detail = [f'{len(changed)} tensor(s) with other values (e.g. {changed[:3]})'] if changed else []
        detail += [f'tensors only in the cache: {missing[:3]}'] if missing else []
        detail += [f'tensors only in this model: {extra[:3]}'] if extra else []
        lines.append('frozen weights the cached route reads: ' + '; '.join(detail))
    if old.get('upstream') != new.get('upstream'):
        lines.append('frozen weights computed before this stack (projections, other stacks) differ')
    if old.get('format') != new.get('format'):
        lines.append(f"cache format: cache {old.get('format')}, now {new.get('format')}")
    return '\n  '.join(lines) or 'fingerprint parts are equal but the fingerprint differs'


__all__ = ['TensorDigests', 'describe_difference', 'json_digest', 'tensor_digest']
