"""What a tuner needs to serve its frozen route from a feature cache."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar, Sequence

import torch
from mmengine.model import is_model_wrapper
from torch import Tensor, nn

from sherl_mm.utils.modules import eval_mode

from .fingerprint import TensorDigests
from .store import FeatureCache


class FeatureCacheMixin(ABC):
    """Serve the frozen part of a tuner's route from a :class:`FeatureCache`.

    A tuner class whose route starts with a frozen part declares itself
    cacheable by mixing this class in (``class FrozenStack(FeatureCacheMixin,
    BaseTuner)``), names that part in :attr:`cached_part`, implements
    :meth:`route_fingerprint` and calls :meth:`_cached_route` for the calls
    that carry sample keys (``sample_keys=`` in the call, or
    :attr:`sample_keys`, which ``FrozenFeatureCacheHook`` sets around each
    training iteration). Without keys, or before :meth:`enable_feature_cache`,
    the route runs as usual. A subclass that changes the route must not stay
    cacheable by inheritance: derive it from the non-cacheable base.
    """

    #: what the cache holds, for the fingerprint and messages ('frozen stack output', 'SHERL early route')
    cached_part: ClassVar[str]
    feature_cache: FeatureCache | None = None
    sample_keys: list[Any] | None = None

    @abstractmethod
    def route_fingerprint(self, digests: TensorDigests) -> tuple[dict[str, str], dict]:
        """``(weight digests, route)``: the frozen tensors the cached route
        reads (``digests.of_module(...)``) and what decides which states are
        stored (JSON-able)."""

    def enable_feature_cache(self, directory: str, pipeline: str, upstream: str = '', rebuild_stale: bool = False,
                             digests: TensorDigests | None = None) -> FeatureCache:
        """Open (or create) the cache of this tuner's frozen route.

        Args:
            directory: one directory per tuner and per process.
            pipeline: names the data pipeline that feeds the model (the hook
                digests the training dataset's config); another value refuses
                the cache.
            upstream: digest of the frozen weights computed before this tuner
                (e.g. the projections feeding a transformer stack), so that
                changing them also refuses the cache.
            rebuild_stale: rebuild a cache with another fingerprint instead of
                raising.
            digests: a :class:`TensorDigests` shared with other caches of the
                same model, so that each weight is hashed once.
        """
        if not isinstance(pipeline, str) or not pipeline:
            raise ValueError(f'{type(self).__name__}: enable_feature_cache needs a non-empty pipeline string naming '
                             f'the data pipeline (dataset, split, transforms); the cache is refused when it changes')
        weights, route = self.route_fingerprint(digests or TensorDigests())
        self.close_feature_cache()
        parts = dict(weights=weights, route=dict(route, cached=self.cached_part), pipeline=pipeline,
                     upstream=upstream)
        self.feature_cache = FeatureCache(directory, parts, rebuild_stale=rebuild_stale)
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
                             f'call enable_feature_cache(...) or add FrozenFeatureCacheHook to custom_hooks')
        return [str(k.item() if isinstance(k, Tensor) else k) for k in keys]

    def _cached_route(self, keys: list[str], inputs: Sequence[Any], compute: Callable[[], tuple[dict, dict]],
                      module: nn.Module, device: torch.device) -> tuple[dict[str, Tensor], dict]:
        """``(features, context)`` of the samples ``keys``: read when all are
        cached, else ``compute()`` and written. ``compute`` runs with
        ``module`` in eval mode (no dropout, fixed normalisation statistics)
        and without a graph, so that what is written equals what a later
        epoch reads."""
        cache = self.feature_cache
        if cache.has_all(keys):
            return cache.load(keys, device)
        if any(isinstance(t, Tensor) and t.requires_grad for t in inputs):
            raise ValueError(f'{type(self).__name__}: an input of the stack requires grad, so its {self.cached_part} '
                             f'depends on trainable parameters and cannot be cached; leave this stack out of the '
                             f'feature cache')
        with eval_mode(module), torch.no_grad():
            features, context = compute()
        cache.write(keys, features, context)
        return features, context


def cacheable_modules(model: nn.Module, stacks: Sequence[str] | None = None) -> dict[str, FeatureCacheMixin]:
    """``{module name: tuner}`` of every cacheable tuner in ``model``; with
    ``stacks``, those whose name is or ends with one of them (``'image'`` for
    ``stacks.image``)."""
    if is_model_wrapper(model):
        model = model.module
    found = {name: m for name, m in model.named_modules() if isinstance(m, FeatureCacheMixin)}
    if stacks is None:
        return found
    chosen = {}
    for wanted in stacks:
        matched = {n: m for n, m in found.items() if n == wanted or n.endswith('.' + wanted)}
        if not matched:
            raise ValueError(f'feature cache: stacks={list(stacks)!r}: {wanted!r} is not a cacheable stack of the '
                             f'model; cacheable: {sorted(found)} '
                             f'({", ".join(sorted({m.cached_part for m in found.values()})) or "none"})')
        chosen.update(matched)
    return chosen


__all__ = ['FeatureCacheMixin', 'cacheable_modules']
