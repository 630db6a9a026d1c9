"""Prior preprocessing and fusion: eq 8 texture noise, f_tex, semantic gating, prior alignment,
and the text-image-prior cross-attention fusion of eq 10-12.

Paper sections "Preprocessing of multimodal prior information" and "Multimodal information
fusion and processing". Widths: f_struc, f_tex, f_sem 128 each; concat 384 -> FC -> 512.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from nd3d_jax.models.layers import dense
from nd3d_jax.models.resnet import ResNet, ResNetConfig

F_TEX_DIM = 128  # "compressed to a 128D vector via a 1-layer fully connected layer"
F_SEM_DIM = 128  # W_g is 128 x 256
PRIOR_ALIGN_DIM = 512  # "input = 384, output = 512"
FUSION_WEIGHTS = (0.5, 0.3, 0.2)  # eq 12: text, image attention, prior


def texture_noise(key: jax.Array, t_hat: jax.Array, scale: float) -> jax.Array:
    """Eq 8: T(x) = T_hat(x) + eps, eps ~ N(0, I), here scaled by `scale` (0 disables it)."""
    return t_hat + scale * jax.random.normal(key, t_hat.shape, t_hat.dtype)


class TextureEncoder(nn.Module):
    """f_tex: a 256x256x3 texture map -> ResNet-18 pooled 512-D -> FC -> 128-D."""

    resnet: ResNetConfig = ResNetConfig()
    features: int = F_TEX_DIM
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, texture_map: jax.Array) -> jax.Array:
        pooled = ResNet(self.resnet, dtype=self.dtype, name="resnet")(texture_map)
        return dense(self.features, ("embed", "prior"), name="fc", dtype=self.dtype)(pooled)


class SemanticGating(nn.Module):
    """f_sem = sigmoid(W_g S + b_g), W_g 128 x 256, b_g 128."""

    features: int = F_SEM_DIM
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, s: jax.Array) -> jax.Array:
        return jax.nn.sigmoid(dense(self.features, ("prior_in", "prior"), name="w_g")(s))


class PriorAlignment(nn.Module):
    """f_prior_align = FC(concat(f_struc, f_tex, f_sem)): 384 -> 512."""

    features: int = PRIOR_ALIGN_DIM
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, f_struc, f_tex, f_sem) -> jax.Array:
        f_prior = jnp.concatenate([f_struc, f_tex, f_sem], axis=-1)
        return dense(self.features, ("prior", "embed"), name="fc", dtype=self.dtype)(f_prior)


def fuse(
    f_text: jax.Array,
    f_img: jax.Array,
    f_prior_align: jax.Array,
    text_mask: jax.Array | None = None,
    weights: tuple[float, float, float] = FUSION_WEIGHTS,
) -> dict[str, jax.Array]:
    """Eq 10-12 over token sequences.

    f_text (B, Lt, D) queries; f_img (B, Li, D); f_prior_align (B, D) broadcast to Lt prior
    tokens, the values of eq 11 (each row of A_tp sums to 1, so the prior term equals
    f_prior_align and eq 12 holds as printed). `text_mask` (B, Lt) keeps padded text positions
    out of A_tp's keys. The scale is sqrt(D) (the paper's sqrt(512) at D = 512).

        A_ti = softmax(f_text f_img^T / sqrt(D))             (10)   f_img_attn = A_ti f_img
        A_tp = softmax(f_text f_img_attn^T / sqrt(D))        (11)   prior = A_tp f_prior_tokens
        f_fusion = w_t f_text + w_i f_img_attn + w_p prior   (12)
    """
    d = f_text.shape[-1]
    if f_img.shape[-1] != d or f_prior_align.shape[-1] != d:
        raise ValueError(
            f"fusion needs one width: f_text {f_text.shape}, f_img {f_img.shape}, "
            f"f_prior_align {f_prior_align.shape}"
        )
    f32 = jnp.float32
    scale = 1.0 / jnp.sqrt(jnp.asarray(d, f32))
    a_ti = jax.nn.softmax(jnp.einsum("btd,bid->bti", f_text, f_img).astype(f32) * scale, axis=-1)
    f_img_attn = jnp.einsum("bti,bid->btd", a_ti.astype(f_img.dtype), f_img)
    logits = jnp.einsum("btd,bsd->bts", f_text, f_img_attn).astype(f32) * scale
    if text_mask is not None:
        logits = jnp.where(text_mask[:, None, :].astype(bool), logits, jnp.finfo(f32).min)
    a_tp = jax.nn.softmax(logits, axis=-1)
    prior_tokens = jnp.broadcast_to(f_prior_align[:, None, :], f_text.shape)
    prior = jnp.einsum("bts,bsd->btd", a_tp.astype(prior_tokens.dtype), prior_tokens)
    w_t, w_i, w_p = weights
    f_fusion = w_t * f_text + w_i * f_img_attn + w_p * prior
    return {"f_fusion": f_fusion, "f_img_attn": f_img_attn, "A_ti": a_ti, "A_tp": a_tp}
