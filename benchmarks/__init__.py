"""Benchmark suites of `python -m nd3d_jax.benchmark NAME` (outside the library packages)."""
