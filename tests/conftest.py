"""Tests run on CPU with 8 simulated devices, so sharded code paths are exercised."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

pytest_plugins = ["data_fixtures", "hf_fixtures"]
