"""Inputs for the benchmark tools (tooling, not library).

``tools/analysis/benchmark_tuners.py`` measures a model without its data
set from a synthetic batch (``benchmark = dict(batch='synthetic')`` in the
config); :mod:`.synthetic` makes that batch for each model type. Nothing in
the library imports this package. ``docs/benchmarks.md`` describes the
benchmark and its measured tables.
"""
from .synthetic import SYNTHETIC_BATCHES, register_synthetic_batch, synthetic_batch

__all__ = ['SYNTHETIC_BATCHES', 'register_synthetic_batch', 'synthetic_batch']
