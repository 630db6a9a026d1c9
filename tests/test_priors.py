"""Prior dimensions, semantic gating, texture noise (eq 8) and the fusion of eq 10-12 by hand."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from nd3d_jax.models.priors import PriorAlignment, SemanticGating, fuse, texture_noise


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_fusion_by_hand():
    """Eq 10-12 on a 2-token text, 3-token image example, computed in float64 numpy."""
    f_text = np.array([[[1.0, 0.0, 2.0, -1.0], [0.5, 1.0, 0.0, 0.0]]])
    f_img = np.array([[[0.0, 1.0, 1.0, 0.0], [2.0, 0.0, 0.0, 1.0], [1.0, 1.0, -1.0, 0.5]]])
    prior = np.array([[0.3, -0.2, 0.1, 0.4]])
    out = fuse(*(jnp.asarray(a, jnp.float32) for a in (f_text, f_img, prior)))
    d = 4
    a_ti = _softmax(f_text[0] @ f_img[0].T / np.sqrt(d))
    f_img_attn = a_ti @ f_img[0]
    a_tp = _softmax(f_text[0] @ f_img_attn.T / np.sqrt(d))
    prior_term = a_tp @ np.repeat(prior, 2, axis=0)
    want = 0.5 * f_text[0] + 0.3 * f_img_attn + 0.2 * prior_term
    np.testing.assert_allclose(np.asarray(out["A_ti"][0]), a_ti, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out["A_tp"][0]), a_tp, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out["f_img_attn"][0]), f_img_attn, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out["f_fusion"][0]), want, atol=1e-6)
    # rows of A_tp sum to one, so the prior term is f_prior_align itself: eq 12 as printed
    np.testing.assert_allclose(want, 0.5 * f_text[0] + 0.3 * f_img_attn + 0.2 * prior, atol=1e-12)


def test_fusion_masks_padded_text_and_uses_configured_weights():
    rng = np.random.default_rng(0)
    f_text = jnp.asarray(rng.normal(size=(2, 5, 8)), jnp.float32)
    f_img = jnp.asarray(rng.normal(size=(2, 3, 8)), jnp.float32)
    prior = jnp.asarray(rng.normal(size=(2, 8)), jnp.float32)
    mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    out = fuse(f_text, f_img, prior, mask, weights=(1.0, 0.0, 0.0))
    np.testing.assert_allclose(out["f_fusion"], f_text, atol=1e-6)
    assert float(jnp.abs(out["A_tp"][0, :, 3:]).max()) == 0.0
    # padded key positions do not change the valid ones
    garbage = f_text.at[0, 3:].set(100.0)
    out2 = fuse(garbage, f_img, prior, mask)
    np.testing.assert_allclose(
        out2["A_tp"][0, :3, :3], fuse(f_text, f_img, prior, mask)["A_tp"][0, :3, :3], atol=1e-6
    )


def test_gating_and_alignment_dimensions():
    s = jnp.asarray(np.random.default_rng(1).normal(size=(3, 256)), jnp.float32)
    gating = SemanticGating()
    p = nn.unbox(gating.init(jax.random.PRNGKey(0), s))["params"]
    assert p["w_g"]["kernel"].shape == (256, 128) and p["w_g"]["bias"].shape == (128,)
    f_sem = gating.apply({"params": p}, s)
    want = 1 / (
        1 + np.exp(-(np.asarray(s) @ np.asarray(p["w_g"]["kernel"]) + np.asarray(p["w_g"]["bias"])))
    )
    np.testing.assert_allclose(f_sem, want, atol=1e-6)
    align = PriorAlignment()
    parts = [jnp.ones((3, 128))] * 3
    pa = nn.unbox(align.init(jax.random.PRNGKey(1), *parts))["params"]
    assert pa["fc"]["kernel"].shape == (384, 512)
    assert align.apply({"params": pa}, *parts).shape == (3, 512)


def test_texture_noise_eq8():
    t_hat = jnp.full((4, 64, 64, 3), 0.5)
    t = texture_noise(jax.random.PRNGKey(0), t_hat, 0.1)
    eps = np.asarray(t - t_hat) / 0.1
    assert abs(eps.mean()) < 0.02 and abs(eps.std() - 1) < 0.02
    np.testing.assert_array_equal(texture_noise(jax.random.PRNGKey(0), t_hat, 0.0), t_hat)
