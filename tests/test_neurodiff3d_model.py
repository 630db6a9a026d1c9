"""The composite NeuroDiff3D module: one init, eq 8 in one place, the edges' normalisation."""

from __future__ import annotations

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nd3d_jax.config_cli import load_config
from nd3d_jax.models.neurodiff3d import CLIP_MEAN, CLIP_STD, clip_pixels, example_batch
from nd3d_jax.stages import get_stage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _host_params(stage, seed: int, mesh_shape=(1, 1)):
    """The trainer's random init (`host_init`: nothing compiles) on a (data, fsdp) mesh."""
    from nd3d_jax import sharding, train_state

    mesh = sharding.make_mesh(*mesh_shape, devices=jax.devices()[: np.prod(mesh_shape)])
    abstract, shardings, *_ = train_state.abstract_state(stage, stage.config, mesh,
                                                         sharding.DEFAULT_RULES)  # fmt: skip
    return train_state.random_init(stage, abstract["params"], shardings["params"], set(), seed)


@pytest.fixture(scope="module")
def tiny():
    c = load_config(os.path.join(ROOT, "configs/demo.py:variant=tiny"))
    c.model.texture_noise_scale = 0.5
    stage = get_stage(c)
    return stage, _host_params(stage, 0)


def _batch(stage, seed=0):
    c = stage.model_config
    b = example_batch(c, batch=2)
    rng = np.random.default_rng(seed)
    b["image"] = jnp.asarray(rng.integers(0, 256, b["image"].shape), jnp.uint8)
    b["views"] = jnp.asarray(rng.integers(0, 256, b["views"].shape), jnp.uint8)
    b["input_ids"] = jnp.asarray(rng.integers(0, 300, b["input_ids"].shape), jnp.int32)
    b["semantic_ids"] = b["input_ids"][:, : c.semantic_length]
    return b


def test_one_init_covers_every_submodule(tiny):
    stage, params = tiny
    assert set(params) == {"conditioning", "adapter", "unet"}  # pixel space: no VAE
    assert {"clip", "semantic_encoder", "texture_encoder", "mesh_conv"} <= set(
        params["conditioning"]
    )
    # another seed changes the random leaves
    other = _host_params(stage, 1)
    unet_a, unet_b = params["unet"]["conv_in"]["kernel"], other["unet"]["conv_in"]["kernel"]
    assert not np.allclose(unet_a, unet_b)


def test_eq8_noise_enters_once_through_the_noise_stream(tiny):
    stage, params = tiny
    b = _batch(stage)
    g = stage.model_config.grid_size
    normals = jnp.zeros((2, g, g, 3))
    t_hat = jnp.full((2, g, g, 3), 0.5)

    def context(train, noise_key):
        return stage.model.apply(
            {"params": params}, b, normals, t_hat, train, method="context",
            rngs={"noise": noise_key, "dropout": jax.random.PRNGKey(9)},
        )  # fmt: skip

    _, _, clean = context(False, jax.random.PRNGKey(1))
    _, _, noisy = context(True, jax.random.PRNGKey(1))
    _, _, again = context(True, jax.random.PRNGKey(1))
    np.testing.assert_array_equal(clean[..., 3:], 0.0)  # T = T_hat = 0.5 -> 0 in [-1, 1]
    eps = (np.asarray(noisy[..., 3:]) + 1.0) / 2.0 - 0.5  # the T channels of the adapter input
    assert abs(eps.std() - 0.5) < 0.02 and abs(eps.mean()) < 0.02  # scale 0.5, N(0, I)
    np.testing.assert_array_equal(noisy, again)  # deterministic in the key
    np.testing.assert_array_equal(noisy[..., :3], clean[..., :3])  # N untouched


def test_inputs_are_normalised_once_at_the_edge():
    image = np.random.default_rng(0).integers(0, 256, (1, 8, 8, 3)).astype(np.uint8)
    out = np.asarray(clip_pixels(jnp.asarray(image), 8))
    want = (image / 255.0 - CLIP_MEAN) / CLIP_STD
    np.testing.assert_allclose(out, want, atol=1e-5)


def test_loss_is_finite_and_masked_views_do_not_count(tiny):
    stage, params = tiny
    b = _batch(stage)
    b["view_mask"] = jnp.asarray([[1.0, 0.0, 0.0, 0.0]] * 2)
    loss, aux = stage.loss(params, b, jax.random.PRNGKey(0))
    assert np.isfinite(loss) and aux["view_fraction"] == 0.25
    mask = stage.model.apply({"params": params}, b["view_mask"], method="latent_view_mask")
    h = stage.model_config.latent_size // 2
    np.testing.assert_array_equal(mask[:, :h, :h], 1.0)  # slot 0: the photo
    assert float(mask.sum()) == 2 * h * h  # nothing else counts


def test_host_init_draws_each_leaf_from_its_flax_initializer_on_any_mesh(tiny):
    """The trainer's init (`host_init`, no compile) beside Flax's jitted `init` on a sample of
    leaves (each distinct distribution's largest leaf): constants equal, random leaves with the
    spread their initializer gives them; the same values on 1 device and sharded over a 2 x 4
    (data, fsdp) mesh, each device holding only its shard."""
    from nd3d_jax import host_init

    stage, params = tiny
    abstract = nn.unbox(stage.abstract_params())
    found = host_init.plan(stage.initializers(), abstract)
    assert not found.other and len(found.specs) == len(jax.tree.leaves(abstract))
    sharded = _host_params(stage, 0, (2, 4))
    jax.tree.map(np.testing.assert_array_equal, params, sharded)
    split = 0
    for x in jax.tree.leaves(sharded):
        assert all(d.data.shape == x.sharding.shard_shape(x.shape) for d in x.addressable_shards)
        split += "fsdp" in str(x.sharding.spec)
    assert split > 50

    sizes = {p: x.size for p, x in host_init._leaves(abstract).items()}
    sample = {}
    for path in sorted(found.specs, key=lambda p: -sizes[p]):
        sample.setdefault(found.specs[path], path)
    sample = list(sample.values())
    assert len(sample) > 12
    flax = jax.jit(lambda k: [_get(nn.unbox(stage.init(k)), p) for p in sample])(
        jax.random.PRNGKey(0)
    )
    ours = host_init._leaves(params)
    checked = 0
    for path, y in zip(sample, flax, strict=True):
        spec, x, y = found.specs[path], np.asarray(ours[path]), np.asarray(y)
        assert x.shape == y.shape and x.dtype == y.dtype
        if spec.family == "constant":
            np.testing.assert_array_equal(x, y)
        elif x.size >= 500:  # spread: the initializer's standard deviation (5 sigma)
            std = spec.scale * (host_init.TRUNCATED_STD if spec.family == "truncated_normal" else 1)
            for z in (x, y):
                assert abs(z.std() / std - 1) < 5 / (2 * z.size) ** 0.5, path
            checked += 1
    assert checked > 8


def _get(tree, path):
    for p in path:
        tree = tree[p]
    return tree
