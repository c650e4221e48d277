"""Train from a cache of a model's frozen routes (beyond the paper).

With a deterministic training pipeline the frozen parts of a PETL model give
the same outputs every epoch: a frozen stack (an image backbone, a text
encoder: its whole output) and SHERL's early route (the input stage and the
layers before MTSA). The cache stores them on the first epoch and serves them
afterwards, so later epochs run only the trainable part.

* :mod:`.store`: :class:`FeatureCache`, the on-disk per-sample store;
* :mod:`.fingerprint`: what a cache is keyed by (weights, route, pipeline);
* :mod:`.pipeline`: the data side (deterministic pipeline, sample keys);
* :mod:`.mixin`: :class:`FeatureCacheMixin`, what a cacheable tuner mixes in.

The Runner hook that turns it on in training is
:class:`sherl_mm.engine.hooks.FrozenFeatureCacheHook`. See docs/feature_cache.md.
"""
from .fingerprint import TensorDigests, describe_difference, json_digest, tensor_digest
from .mixin import FeatureCacheMixin, cacheable_modules
from .pipeline import RANDOM_TRANSFORMS, batch_sample_keys, check_deterministic_pipeline, pipeline_fingerprint
from .store import FORMAT, MANIFEST, FeatureCache

__all__ = ['FORMAT', 'MANIFEST', 'RANDOM_TRANSFORMS', 'FeatureCache', 'FeatureCacheMixin', 'TensorDigests',
           'batch_sample_keys', 'cacheable_modules', 'check_deterministic_pipeline', 'describe_difference',
           'json_digest', 'pipeline_fingerprint', 'tensor_digest']
