"""A tiny tuned model and dataset for tests of tools/analysis/benchmark_tuners.py."""
