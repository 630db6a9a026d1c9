"""The Stable-Diffusion-style conditional 2D UNet (diffusers `UNet2DConditionModel`), NHWC.

M3 of docs/design.md: it denoises the latent K-view grid, cross-attending to f_fusion, with the
T2I-Adapter's features added on the down path (eq 13). Module names follow diffusers' keys
(`down_blocks_1/attentions_0/transformer_blocks_0/attn2/to_k`, ...), so
`nd3d_jax.weights.diffusers` maps a `save_pretrained` folder one to one.

Adapter residuals are added where diffusers adds `down_intrablock_additional_residuals`: after
the last resnet/attention pair of a cross-attention down block (before its downsampler), after a
plain down block, and after the mid block when one is left with its shape (the XL adapters).
`remat` wraps every resnet and transformer block in `nn.remat`; `dtype` is the compute dtype
(bfloat16 for speed) while parameters stay float32.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from nd3d_jax.models.layers import (
    Downsample,
    ResnetBlock,
    Upsample,
    conv,
    dense,
    group_norm,
    layer_norm,
)


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """Defaults: Stable Diffusion 1.5's UNet (cross-attention dim 768)."""

    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    up_block_types: tuple[str, ...] = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    layers_per_block: int = 2
    attention_head_dim: int | tuple[int, ...] = 8  # diffusers: the number of heads (sic)
    num_attention_heads: int | tuple[int, ...] | None = None
    cross_attention_dim: int = 768
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    use_linear_projection: bool = False
    transformer_layers_per_block: int = 1
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    remat: bool = False

    @classmethod
    def from_hf(cls, hf: dict) -> UNetConfig:
        unsupported = {
            "mid_block_type": "UNetMidBlock2DCrossAttn",
            "act_fn": "silu",
            "resnet_time_scale_shift": "default",
            "time_embedding_type": "positional",
            "class_embed_type": None,
            "addition_embed_type": None,
            "center_input_sample": False,
            "only_cross_attention": False,
            "dual_cross_attention": False,
        }
        for key, want in unsupported.items():
            if hf.get(key, want) != want:
                raise ValueError(f"UNet2DConditionModel with {key}={hf[key]!r} is not supported")
        if not isinstance(hf.get("transformer_layers_per_block", 1), int):
            raise ValueError("per-block transformer_layers_per_block is not supported")
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in hf.items() if k in names}
        c = cls(**kw)
        for t in c.down_block_types + c.up_block_types:
            if t not in ("CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"):
                raise ValueError(f"unsupported UNet block type {t!r}")
        return c

    def heads(self) -> tuple[int, ...]:
        h = self.num_attention_heads or self.attention_head_dim
        n = len(self.block_out_channels)
        return tuple(h) if isinstance(h, tuple) else (h,) * n


def n_levels(c: UNetConfig) -> int:
    return len(c.block_out_channels)


def timestep_embedding(t: jax.Array, dim: int, flip_sin_to_cos: bool, shift: float) -> jax.Array:
    """Sinusoidal embedding of (B,) timesteps, as diffusers' `get_timestep_embedding`."""
    half = dim // 2
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / (half - shift))
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], -1)
    if flip_sin_to_cos:
        emb = jnp.concatenate([emb[:, half:], emb[:, :half]], -1)
    return jnp.pad(emb, ((0, 0), (0, dim % 2)))


def attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """softmax(q k^T / sqrt(d)) v over (B, N, heads, d). On GPU `jax.nn.dot_product_attention`:
    cuDNN's fused flash kernel for 16-bit inputs (its default, XLA's, materialises the N x N
    logits), XLA's where cuDNN does not apply; elsewhere two matmuls around a float32 softmax,
    which XLA:CPU runs 2x faster than dot_product_attention's generic path (measured)."""
    if jax.default_backend() == "gpu":
        if q.dtype in (jnp.bfloat16, jnp.float16):
            try:
                return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
            except (ValueError, NotImplementedError, RuntimeError):
                pass  # shapes or a cuDNN version the fused kernel does not take
        return jax.nn.dot_product_attention(q, k, v)
    qt, kt, vt = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))  # (B, heads, N, d)
    logits = jnp.matmul(qt, jnp.swapaxes(kt, -1, -2)).astype(jnp.float32) * q.shape[-1] ** -0.5
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.swapaxes(jnp.matmul(weights, vt), 1, 2)


class Attention(nn.Module):
    """Multi-head attention; keys and values from `context` (cross) or `x` (self)."""

    heads: int
    head_dim: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, context=None):
        context = x if context is None else context
        inner = self.heads * self.head_dim
        b, n, d = x.shape

        def proj(name, src):
            y = dense(inner, ("embed", "heads"), name=name, use_bias=False, dtype=self.dtype)(src)
            return y.reshape(b, -1, self.heads, self.head_dim)

        q, k, v = proj("to_q", x), proj("to_k", context), proj("to_v", context)
        out = attention(q, k, v)
        return dense(d, ("heads", "embed"), name="to_out", dtype=self.dtype)(
            out.reshape(b, n, inner)
        )


class GEGLU(nn.Module):
    """(h, gate) = proj(x); h * gelu(gate) (exact GELU, as diffusers)."""

    inner: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = dense(2 * self.inner, ("embed", "mlp"), name="proj", dtype=self.dtype)(x)
        h, gate = jnp.split(h, 2, axis=-1)
        return h * jax.nn.gelu(gate, approximate=False)


class FeedForward(nn.Module):
    """diffusers' `ff.net.0` (GEGLU) and `ff.net.2` (linear back to the width)."""

    dim: int
    mult: int = 4
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = GEGLU(self.dim * self.mult, self.dtype, name="net_0")(x)
        return dense(self.dim, ("mlp", "embed"), name="net_2", dtype=self.dtype)(h)


class TransformerBlock(nn.Module):
    dim: int
    heads: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, context):
        hd = self.dim // self.heads
        x = x + Attention(self.heads, hd, self.dtype, name="attn1")(
            layer_norm(name="norm1", dtype=self.dtype)(x)
        )
        x = x + Attention(self.heads, hd, self.dtype, name="attn2")(
            layer_norm(name="norm2", dtype=self.dtype)(x), context
        )
        return x + FeedForward(self.dim, dtype=self.dtype, name="ff")(
            layer_norm(name="norm3", dtype=self.dtype)(x)
        )


class Transformer2D(nn.Module):
    """GroupNorm, proj_in, transformer blocks over the H*W tokens, proj_out, residual."""

    features: int
    heads: int
    groups: int = 32
    depth: int = 1
    linear_projection: bool = False
    remat: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, context):
        b, hgt, wid, c = x.shape
        h = group_norm(self.groups, "norm", self.dtype)(x)
        if self.linear_projection:
            h = dense(c, ("embed", "embed_out"), name="proj_in", dtype=self.dtype)(
                h.reshape(b, hgt * wid, c)
            )
        else:
            h = conv(c, 1, "proj_in", dtype=self.dtype)(h).reshape(b, hgt * wid, c)
        block = nn.remat(TransformerBlock) if self.remat else TransformerBlock
        for i in range(self.depth):
            h = block(c, self.heads, self.dtype, name=f"transformer_blocks_{i}")(h, context)
        if self.linear_projection:
            h = dense(c, ("embed", "embed_out"), name="proj_out", dtype=self.dtype)(h)
            h = h.reshape(b, hgt, wid, c)
        else:
            h = conv(c, 1, "proj_out", dtype=self.dtype)(h.reshape(b, hgt, wid, c))
        return x + h


class UNet(nn.Module):
    config: UNetConfig = UNetConfig()
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, sample, timesteps, encoder_hidden_states, down_residuals=None):
        """sample (B, h, w, C) NHWC, timesteps (B,) or scalar, encoder_hidden_states (B, L, D),
        down_residuals: the T2I-Adapter's per-level features or None -> predicted noise."""
        c = self.config
        if sample.ndim != 4 or sample.shape[-1] != c.in_channels:
            raise ValueError(
                f"UNet sample must be NHWC (batch, h, w, {c.in_channels}), got {sample.shape}"
            )
        if encoder_hidden_states.shape[-1] != c.cross_attention_dim:
            raise ValueError(
                f"encoder_hidden_states width {encoder_hidden_states.shape[-1]} != "
                f"cross_attention_dim {c.cross_attention_dim}"
            )
        b = sample.shape[0]
        t = jnp.broadcast_to(jnp.asarray(timesteps), (b,))
        ctx = encoder_hidden_states.astype(self.dtype)
        resnet = nn.remat(ResnetBlock) if c.remat else ResnetBlock
        g, eps, heads = c.norm_num_groups, c.norm_eps, c.heads()
        ch0 = c.block_out_channels[0]

        emb = timestep_embedding(t, ch0, c.flip_sin_to_cos, c.freq_shift).astype(self.dtype)
        emb = dense(4 * ch0, ("embed", "mlp"), name="time_embedding_linear_1", dtype=self.dtype)(
            emb
        )
        emb = dense(4 * ch0, ("mlp", "embed"), name="time_embedding_linear_2", dtype=self.dtype)(
            nn.silu(emb)
        )

        def transformer(width, n_heads, name):
            return Transformer2D(
                width,
                n_heads,
                g,
                c.transformer_layers_per_block,
                c.use_linear_projection,
                c.remat,
                self.dtype,
                name=name,
            )

        residuals = list(down_residuals or [])
        if len(residuals) > len(c.block_out_channels) + 1:
            raise ValueError(f"{len(residuals)} adapter residuals for {n_levels(c)} UNet levels")

        def add_residual(x, level):
            r = residuals.pop(0)
            if r.shape != x.shape:
                raise ValueError(
                    f"adapter feature {level} has shape {r.shape}, the UNet's down path "
                    f"{x.shape} there (diffusers adds it after the level's last attention "
                    "block, or after a plain block's downsampler)"
                )
            return x + r.astype(self.dtype)

        x = conv(ch0, 3, "conv_in", dtype=self.dtype)(sample.astype(self.dtype))
        skips = [x]
        n = len(c.block_out_channels)
        for i, (kind, width) in enumerate(
            zip(c.down_block_types, c.block_out_channels, strict=True)
        ):
            blk = f"down_blocks_{i}"
            cross = kind.startswith("CrossAttn")
            for j in range(c.layers_per_block):
                x = resnet(width, g, eps, self.dtype, name=f"{blk}_resnets_{j}")(x, emb)
                if cross:
                    x = transformer(width, heads[i], f"{blk}_attentions_{j}")(x, ctx)
                if cross and j == c.layers_per_block - 1 and residuals:
                    x = add_residual(x, i)
                skips.append(x)
            if i < n - 1:
                x = Downsample(width, 1, self.dtype, name=f"{blk}_downsamplers_0")(x)
                skips.append(x)
            if not cross and residuals:
                x = add_residual(x, i)
                skips[-1] = x

        width = c.block_out_channels[-1]
        x = resnet(width, g, eps, self.dtype, name="mid_block_resnets_0")(x, emb)
        x = transformer(width, heads[-1], "mid_block_attentions_0")(x, ctx)
        x = resnet(width, g, eps, self.dtype, name="mid_block_resnets_1")(x, emb)
        if residuals and residuals[0].shape == x.shape:
            x = x + residuals.pop(0).astype(self.dtype)

        up_widths = tuple(reversed(c.block_out_channels))
        up_heads = tuple(reversed(heads))
        for i, (kind, width) in enumerate(zip(c.up_block_types, up_widths, strict=True)):
            blk = f"up_blocks_{i}"
            for j in range(c.layers_per_block + 1):
                x = jnp.concatenate([x, skips.pop()], axis=-1)
                x = resnet(width, g, eps, self.dtype, name=f"{blk}_resnets_{j}")(x, emb)
                if kind.startswith("CrossAttn"):
                    x = transformer(width, up_heads[i], f"{blk}_attentions_{j}")(x, ctx)
            if i < n - 1:
                x = Upsample(width, self.dtype, name=f"{blk}_upsamplers_0")(x)

        x = nn.silu(group_norm(g, "conv_norm_out", self.dtype, eps)(x))
        return conv(c.out_channels, 3, "conv_out", dtype=self.dtype)(x).astype(jnp.float32)
