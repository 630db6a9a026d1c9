import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nd3d_jax.models.sdf_mlp import SDFMLP, geometric_init, sdf_mlp_param_count

# By hand: (67+1)*1024 + 2*(1024+1)*1024 + (1024+1)*256 + 1024*256 (projection, no bias)
#          + (256+1)*1 + (256+1)*3
PAPER_PARAM_COUNT = 69_632 + 2_099_200 + 262_400 + 262_144 + 257 + 771


def _init(module, key=0):
    variables = jax.jit(module.init)(jax.random.key(key), jnp.zeros((1, 67)))
    return nn.unbox(variables["params"]), variables["params"]


def test_layer_shapes_and_parameter_count():
    params, boxed = _init(SDFMLP())
    shapes = jax.tree.map(lambda x: x.shape, params)
    assert shapes == {
        "dense_1": {"kernel": (67, 1024), "bias": (1024,)},
        "dense_2": {"kernel": (1024, 1024), "bias": (1024,)},
        "dense_3": {"kernel": (1024, 1024), "bias": (1024,)},
        "dense_4": {"kernel": (1024, 256), "bias": (256,)},
        "projection_3_4": {"kernel": (1024, 256)},
        "sdf_head": {"kernel": (256, 1), "bias": (1,)},
        "displacement_head": {"kernel": (256, 3), "bias": (3,)},
    }
    total = sum(x.size for x in jax.tree.leaves(params))
    assert total == PAPER_PARAM_COUNT == sdf_mlp_param_count() == 2_694_404
    # Every parameter carries logical axis names for sharding.
    specs = nn.get_partition_spec(boxed)
    assert specs["dense_2"]["kernel"] == jax.sharding.PartitionSpec("mlp_in", "mlp")


def test_forward_matches_the_equations_by_hand():
    module = SDFMLP(hidden_dim=32, out_hidden_dim=8)
    params, _ = _init(module, key=1)
    # Non-zero biases so every term is exercised.
    params = jax.tree.map(lambda x: x + 0.1 * jnp.sin(jnp.arange(x.size).reshape(x.shape)), params)
    v = np.asarray(jax.random.normal(jax.random.key(2), (5, 67)))
    p = jax.tree.map(np.asarray, params)

    def dense(name, x):
        return x @ p[name]["kernel"] + p[name].get("bias", 0.0)

    lrelu = lambda x: np.where(x > 0, x, 0.2 * x)  # noqa: E731
    h1 = lrelu(dense("dense_1", v))
    h2 = lrelu(dense("dense_2", h1))
    h3 = lrelu(dense("dense_3", h2)) + h2
    h4 = np.maximum(dense("dense_4", h3), 0) + h3 @ p["projection_3_4"]["kernel"]
    sdf, disp = module.apply({"params": params}, v)
    np.testing.assert_allclose(sdf, dense("sdf_head", h4), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(disp, dense("displacement_head", h4), rtol=1e-5, atol=1e-5)
    assert sdf.shape == (5, 1) and disp.shape == (5, 3)


def test_batch_dims_and_bad_input():
    module = SDFMLP(hidden_dim=16, out_hidden_dim=8)
    params, _ = _init(module)
    sdf, disp = module.apply({"params": params}, jnp.ones((2, 3, 67)))
    assert sdf.shape == (2, 3, 1) and disp.shape == (2, 3, 3)
    with pytest.raises(ValueError, match="67"):
        module.apply({"params": params}, jnp.ones((4, 66)))


@pytest.mark.parametrize("hidden", [(1024, 256), (128, 32)])
def test_geometric_init_is_a_sphere_sdf(hidden):
    module = SDFMLP(hidden_dim=hidden[0], out_hidden_dim=hidden[1])
    params, _ = _init(module)
    center, radius = jnp.array([0.1, -0.2, 0.05]), 0.4
    params = jax.jit(lambda p: geometric_init(module, p, jax.random.key(3), center, radius))(params)
    x = jax.random.uniform(jax.random.key(4), (2000, 3), minval=-1, maxval=1)
    feats = jax.random.normal(jax.random.key(5), (2000, 64))  # ignored at init
    sdf, disp = jax.jit(module.apply)({"params": params}, jnp.concatenate([x, feats], -1))
    true = jnp.linalg.norm(x - center, axis=-1) - radius
    rel = jnp.abs(sdf[:, 0] - true) / (jnp.linalg.norm(x - center, axis=-1) + 1e-3)
    # |x - c| g(direction) with g ~ 1; narrower networks fluctuate more across directions.
    assert float(jnp.mean(rel)) < (0.08 if hidden[0] == 1024 else 0.3)
    assert float(jnp.max(jnp.abs(disp))) == 0.0
    assert float(jnp.mean(jnp.sign(sdf[:, 0]) == jnp.sign(true))) > 0.95
