"""Tests run on CPU with 8 simulated devices, so sharded code paths are exercised.

Compile time dominates the suite on a 2-core CPU, so (through the environment, for the
trainer's subprocess tests too):
- XLA's CPU backend compiles at optimisation level 0: a 3-4x faster compile (the init of a
  model is one threefry program per parameter), and tiny test shapes run no slower overall;
- compiled programs go to a persistent cache shared by every test process, so the same tiny
  model is compiled once per run, not once per test (`ND3D_TEST_CACHE`, default
  ~/.cache/nd3d_jax/xla-tests).
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
).strip()
_CACHE = os.environ.get("ND3D_TEST_CACHE", os.path.expanduser("~/.cache/nd3d_jax/xla-tests"))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

pytest_plugins = ["data_fixtures", "generate_fixtures", "hf_fixtures", "shap_e_fixtures"]

# The longest files first (measured on 2 cores, empty cache): xdist's loadfile scheduler hands
# files to its two workers in collection order (`--no-loadscope-reorder` in the Makefile; its
# default order is by test count), so the trainer's ~13 minutes start at once instead of last.
SLOW_FIRST = (
    "test_train.py",
    "test_sharded_init.py",
    "test_benchmark.py",
    "test_generate.py",
    "test_evaluate.py",
    "test_app.py",
    "test_readme.py",
    "test_model_inputs.py",
    "test_unet.py",
    "test_neurodiff3d_model.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable within files
