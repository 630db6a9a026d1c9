import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


def test_eight_simulated_devices_and_a_sharded_computation():
    assert jax.device_count() == 8
    mesh = jax.make_mesh((4, 2), ("data", "fsdp"))
    x = np.arange(64 * 6, dtype=np.float32).reshape(64, 6)
    xs = jax.device_put(x, NamedSharding(mesh, P(("data", "fsdp"))))
    assert len(xs.addressable_shards) == 8 and xs.addressable_shards[0].data.shape == (8, 6)
    total = jax.jit(lambda a: jnp.sum(a * a, axis=0), out_shardings=NamedSharding(mesh, P()))(xs)
    np.testing.assert_allclose(total, np.sum(x * x, axis=0), rtol=1e-6)
