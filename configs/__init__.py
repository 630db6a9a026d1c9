"""Experiment configs: `get_config(arg)` files for `--config=configs/FILE.py:key=value,...`.

`presets` holds every model size (tiny and paper) that configs, tests and benchmarks use.
"""
