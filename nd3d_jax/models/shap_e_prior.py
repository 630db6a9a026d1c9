"""Shap-E's latent diffusion prior (P1) in Linen: diffusers' `PriorTransformer` as Shap-E
configures it, and the CLIP towers that condition it.

The transformer denoises 1024 latent tokens (the NeRSTF weights of one object, see
`shap_e_renderer`) in one sequence with its conditions:

    [condition tokens, time token, latent tokens]      (no attention mask, pre-LN blocks)

- text model: one condition token, `embedding_proj(CLIP text_embeds)`;
- image model: 256 tokens, `embedding_proj(LayerNorm(CLIP ViT-L/14 patch tokens))`.

The learned positional embedding covers the latent tokens only (diffusers pads it with zeros over
the condition and time tokens). `proj_to_clip_embeddings` predicts 2 x d channels of which the
sampler keeps the first d (the mean; Shap-E's second half, a variance, is unused), so only those
columns are computed. Module names follow the diffusers keys for `nd3d_jax.weights.shap_e`.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from nd3d_jax.models.clip import (
    CLIPTextConfig,
    CLIPTextTransformer,
    CLIPVisionConfig,
    CLIPVisionTransformer,
)
from nd3d_jax.models.layers import activation, dense, layer_norm
from nd3d_jax.models.unet import attention, timestep_embedding


@dataclasses.dataclass(frozen=True)
class PriorConfig:
    """diffusers' `PriorTransformer` config; defaults are `openai/shap-e`'s text prior."""

    num_attention_heads: int = 16
    attention_head_dim: int = 64
    num_layers: int = 24
    embedding_dim: int = 1024  # latent token width (d_latent)
    num_embeddings: int = 1024  # latent tokens
    additional_embeddings: int = 0
    time_embed_act_fn: str = "gelu"
    norm_in_type: str | None = "layer"
    embedding_proj_norm_type: str | None = None  # "layer" for the image prior
    time_embed_dim: int | None = 4096
    embedding_proj_dim: int | None = 768  # CLIP width: 768 text projection, 1024 ViT-L
    clip_embed_dim: int | None = 2048
    remat: bool = False

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @classmethod
    def from_hf(cls, hf: dict, remat: bool = False) -> PriorConfig:
        """From `prior/config.json`; refuses the unCLIP options Shap-E never uses."""
        fixed = {"encoder_hid_proj_type": None, "added_emb_type": None, "dropout": 0.0}
        for key, want in fixed.items():
            if hf.get(key, want) != want:
                raise ValueError(
                    f"PriorTransformer with {key}={hf[key]!r} is not a Shap-E prior "
                    f"(Shap-E has {key}={want!r})"
                )
        for key in ("norm_in_type", "embedding_proj_norm_type"):
            if hf.get(key) not in (None, "layer"):
                raise ValueError(f"PriorTransformer {key}={hf[key]!r} is not supported")
        activation(hf.get("time_embed_act_fn", "silu"))
        names = {f.name for f in dataclasses.fields(cls)} - {"remat"}
        kw = {k: hf[k] for k in names if k in hf}
        kw.setdefault("time_embed_act_fn", "silu")  # diffusers' default when unset
        for key in ("norm_in_type", "embedding_proj_norm_type", "time_embed_dim"):
            kw.setdefault(key, None)
        kw.setdefault("embedding_proj_dim", None)
        kw.setdefault("clip_embed_dim", None)
        return cls(**kw, remat=remat)


class PriorBlock(nn.Module):
    """diffusers' `BasicTransformerBlock` without cross-attention: pre-LN self-attention (with
    biases) and a GELU feed-forward (4x), each residual."""

    heads: int
    head_dim: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, n, d = x.shape
        inner = self.heads * self.head_dim
        h = layer_norm(name="norm1", dtype=self.dtype)(x)

        def proj(name):
            y = dense(inner, ("embed", "heads"), name=name, dtype=self.dtype)(h)
            return y.reshape(b, n, self.heads, self.head_dim)

        a = attention(proj("to_q"), proj("to_k"), proj("to_v")).reshape(b, n, inner)
        x = x + dense(d, ("heads", "embed"), name="to_out", dtype=self.dtype)(a)
        h = layer_norm(name="norm3", dtype=self.dtype)(x)
        h = dense(4 * d, ("embed", "mlp"), name="ff_proj", dtype=self.dtype)(h)
        h = jax.nn.gelu(h, approximate=False)
        return x + dense(d, ("mlp", "embed"), name="ff_out", dtype=self.dtype)(h)


class FirstColumns(nn.Module):
    """A Dense layer with `total` outputs of which only the first `features` are computed."""

    features: int
    total: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp")),
            (x.shape[-1], self.total),
        )
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(nn.initializers.zeros_init(), ("mlp",)),
            (self.total,),
        )
        k = kernel[:, : self.features].astype(self.dtype)
        return jnp.dot(x.astype(self.dtype), k) + bias[: self.features].astype(self.dtype)


class PriorTransformer(nn.Module):
    """`(latents (B, T, d), t (B,) float, proj_embedding (B, d_c) or (B, L, d_c)) -> (B, T, d)`,
    the predicted clean latents (Shap-E's prediction type is "sample")."""

    config: PriorConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, latents, t, proj_embedding):
        c = self.config
        inner, b = c.inner_dim, latents.shape[0]
        act = activation(c.time_embed_act_fn)

        temb = timestep_embedding(jnp.broadcast_to(t, (b,)), inner, True, 0).astype(self.dtype)
        t_dim = c.time_embed_dim or inner
        temb = dense(t_dim, ("embed", "mlp"), name="time_linear_1", dtype=self.dtype)(temb)
        temb = dense(inner, ("mlp", "embed"), name="time_linear_2", dtype=self.dtype)(act(temb))

        cond = proj_embedding.astype(self.dtype)
        if c.embedding_proj_norm_type == "layer":
            cond = layer_norm(name="embedding_proj_norm", dtype=self.dtype)(cond)
        cond = dense(inner, ("embed", "embed"), name="embedding_proj", dtype=self.dtype)(cond)
        if cond.ndim == 2:
            cond = cond[:, None]
        x = dense(inner, ("embed", "embed"), name="proj_in", dtype=self.dtype)(
            latents.astype(self.dtype)
        )
        x = jnp.concatenate([cond, temb[:, None].astype(self.dtype), x], axis=1)

        pos = self.param(
            "positional_embedding",
            nn.with_logical_partitioning(nn.initializers.zeros_init(), (None, "position", "embed")),
            (1, c.num_embeddings + c.additional_embeddings, inner),
        )
        n_cond = cond.shape[1] + 1
        if pos.shape[1] < x.shape[1]:  # zeros over the condition and time tokens (diffusers)
            pos = jnp.pad(pos, ((0, 0), (x.shape[1] - pos.shape[1], 0), (0, 0)))
        x = x + pos.astype(self.dtype)

        if c.norm_in_type == "layer":
            x = layer_norm(name="norm_in", dtype=self.dtype)(x)
        block = nn.remat(PriorBlock) if c.remat else PriorBlock
        for i in range(c.num_layers):
            x = block(c.num_attention_heads, c.attention_head_dim, self.dtype, name=f"blocks_{i}")(
                x
            )
        x = layer_norm(name="norm_out", dtype=self.dtype)(x[:, n_cond:])
        out = FirstColumns(
            c.embedding_dim,
            c.clip_embed_dim or c.embedding_dim,
            self.dtype,
            name="proj_to_clip_embeddings",
        )(x)
        return out.astype(jnp.float32)


class ShapETextEncoder(nn.Module):
    """transformers' `CLIPTextModelWithProjection` -> `text_embeds` (B, P)."""

    config: CLIPTextConfig
    projection_dim: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids: jax.Array) -> jax.Array:
        pooled = CLIPTextTransformer(self.config, self.dtype, name="text_model")(input_ids)[1]
        return dense(
            self.projection_dim,
            ("embed", "proj"),
            name="text_projection",
            use_bias=False,
            dtype=self.dtype,
        )(pooled)


class ShapEImageEncoder(nn.Module):
    """transformers' `CLIPVisionModel` -> `last_hidden_state[:, 1:]` (B, N, D): the patch
    tokens before the post-LayerNorm, as the img2img pipeline takes them."""

    config: CLIPVisionConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        return CLIPVisionTransformer(self.config, self.dtype, name="vision_model")(pixel_values)[0][
            :, 1:
        ]


def text_condition(text_embeds: jax.Array) -> jax.Array:
    """The text pipeline's conditioning: L2-normalised `text_embeds` times sqrt(P)."""
    e = text_embeds.astype(jnp.float32)
    e = e / jnp.linalg.norm(e, axis=-1, keepdims=True)
    return e * jnp.sqrt(jnp.float32(e.shape[-1]))
