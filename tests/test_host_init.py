"""`nd3d_jax.host_init`: jax.nn.initializers read as distributions and drawn with numpy.

Each initializer's Spec is checked against its scale worked out by hand (the fans of the shape),
and our numpy draw against the initializer's own jax draw of the same shape: mean, standard
deviation and range (the truncation at 2 standard deviations, the uniform bounds).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nd3d_jax import host_init

inits = jax.nn.initializers
T = host_init.TRUNCATED_STD
# (initializer, shape, its Spec by hand)
CASES = [
    # lecun_normal on a conv kernel: fan_in = 3 * 3 * 24
    (inits.lecun_normal(), (3, 3, 24, 40),
     host_init.Spec("truncated_normal", (1 / 216) ** 0.5 / T)),
    # he normal by fan_out (ResNet's convs): fan_out = 3 * 3 * 40
    (inits.variance_scaling(2.0, "fan_out", "normal"), (3, 3, 24, 40),
     host_init.Spec("normal", (2 / 360) ** 0.5)),
    # fan_avg over explicit axes (Shap-E's renderer): fan_in 24 * 6, fan_out 40 * 6
    (inits.variance_scaling(1.0, "fan_avg", "normal", in_axis=2, out_axis=1), (6, 40, 24),
     host_init.Spec("normal", (1 / 192) ** 0.5)),
    # glorot_uniform: U(-s, s), s = sqrt(3 * 1 / ((96 + 160) / 2))
    (inits.glorot_uniform(), (96, 160), host_init.Spec("uniform", 1.0, low=-(3 / 128) ** 0.5,
                                                     high=(3 / 128) ** 0.5)),
    (inits.normal(0.02), (160, 96), host_init.Spec("normal", 0.02)),
    (inits.uniform(0.5), (160, 96), host_init.Spec("uniform", 1.0, low=0.0, high=0.5)),
    (inits.truncated_normal(0.1), (160, 96), host_init.Spec("truncated_normal", 0.1)),
    (nn.with_logical_partitioning(inits.lecun_normal(), ("embed", "mlp")), (240, 64),
     host_init.Spec("truncated_normal", (1 / 240) ** 0.5 / T)),
    (nn.initializers.zeros_init(), (64,), host_init.Spec("constant", shift=0.0)),
    (nn.initializers.ones_init(), (64,), host_init.Spec("constant", shift=1.0)),
    (inits.constant(2.6592), (), host_init.Spec("constant", shift=2.6592)),
]  # fmt: skip


def test_specs_are_the_initializers_distributions():
    draws = jax.jit(
        lambda k: [
            nn.unbox(init(jax.random.fold_in(k, i), shape, jnp.float32))
            for i, (init, shape, _) in enumerate(CASES)
        ]  # fmt: skip
    )(jax.random.key(0))
    for i, ((init, shape, want), theirs) in enumerate(zip(CASES, draws, strict=True)):
        spec = host_init.spec_of(init, shape, jnp.float32)
        assert spec.family == want.family and spec.low == pytest.approx(want.low)
        assert spec.high == pytest.approx(want.high)
        assert spec.scale == pytest.approx(want.scale) and spec.shift == want.shift
        ours = spec.draw(np.random.default_rng(i), shape, np.float32)
        theirs = np.asarray(theirs)
        assert ours.shape == theirs.shape == shape and ours.dtype == np.float32
        if spec.family == "constant":
            np.testing.assert_array_equal(ours, theirs)
            continue
        n = math.prod(shape)
        for x in (ours, theirs):  # both against the distribution's own moments
            std = {"normal": spec.scale, "truncated_normal": spec.scale * T,
                   "uniform": (spec.high - spec.low) / 12**0.5}[spec.family]  # fmt: skip
            mean = (spec.high + spec.low) / 2 if spec.family == "uniform" else 0.0
            assert abs(x.mean() - mean) < 5 * std / n**0.5
            assert abs(x.std() / std - 1) < 5 / (2 * n) ** 0.5
        if spec.family == "truncated_normal":  # cut at 2 standard deviations (before scaling)
            for x in (ours, theirs):
                assert 1.9 * spec.scale < np.abs(x).max() < 2 * spec.scale
        if spec.family == "uniform":
            for x in (ours, theirs):
                assert spec.low <= x.min() < spec.low + 0.01 * (spec.high - spec.low)
                assert spec.high - 0.01 * (spec.high - spec.low) < x.max() < spec.high


def test_other_initializers_are_left_to_the_caller():
    assert host_init.spec_of(inits.orthogonal(), (8, 8), jnp.float32) is None
    assert host_init.spec_of(inits.lecun_normal(), (8, 8), jnp.int32) is None
    assert (
        host_init.spec_of(lambda key, shape, dtype: jnp.eye(shape[0]), (8, 8), jnp.float32) is None
    )
    f32, rec = jnp.float32, host_init.Record
    records = [rec(("a", "kernel"), inits.lecun_normal(), ((4, 8), f32), {}),
               rec(("a", "q"), inits.orthogonal(), ((8, 8), f32), {}),
               rec(("b", "kernel"), inits.lecun_normal(), ((8,), f32), {})]  # fmt: skip
    abstract = {"a": {"kernel": jax.ShapeDtypeStruct((4, 8), f32),
                      "q": jax.ShapeDtypeStruct((8, 8), f32)},
                "b": {"kernel": jax.ShapeDtypeStruct((3, 8), f32)},  # scanned: one axis more
                "c": {"w": jax.ShapeDtypeStruct((2,), f32)}}  # never recorded  # fmt: skip
    found = host_init.plan(records, abstract)
    assert list(found.specs) == [("a", "kernel")]
    assert sorted(found.other) == [("a", "q"), ("b", "kernel"), ("c", "w")]


def test_each_leaf_has_its_own_stream_of_the_seed():
    spec = host_init.Spec("normal", 1.0)

    def draw(seed, path):
        return spec.draw(host_init.leaf_rng(seed, path), (1000,), np.float32)

    a = draw(0, ("unet", "conv_in", "kernel"))
    np.testing.assert_array_equal(a, draw(0, ("unet", "conv_in", "kernel")))
    for other in (draw(1, ("unet", "conv_in", "kernel")), draw(0, ("unet", "conv_out", "kernel"))):
        assert abs(np.corrcoef(a, other)[0, 1]) < 0.15  # independent streams
