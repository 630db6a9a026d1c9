"""The Stable-Diffusion image VAE (diffusers `AutoencoderKL`) in Linen, NHWC.

The M4 decoder half and the frozen encoder of the latent grid (docs/design.md). Module names follow
diffusers' keys (`encoder/down_blocks_0/resnets_1/conv2`, ...) so `nd3d_jax.weights.vae` maps a
`save_pretrained` folder one to one.

    encode(x)  -> (mean, logvar) of the latent Gaussian (B, H/f, W/f, latent_channels)
    decode(z)  -> image (B, H, W, out_channels)
The `scaling_factor` of the config multiplies latents before the UNet; callers apply it.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from nd3d_jax.models.layers import Downsample, ResnetBlock, Upsample, conv, dense, group_norm


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """Defaults: diffusers' AutoencoderKL of Stable Diffusion 1.x (factor 8, 4 latents)."""

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    mid_block_add_attention: bool = True

    @classmethod
    def from_hf(cls, hf: dict) -> VAEConfig:
        for key, want in (
            ("act_fn", "silu"),
            ("use_quant_conv", True),
            ("use_post_quant_conv", True),
        ):
            if hf.get(key, want) != want:
                raise ValueError(f"AutoencoderKL with {key}={hf[key]!r} is not supported")
        for blocks in ("down_block_types", "up_block_types"):
            kinds = set(hf.get(blocks) or [])
            if kinds - {"DownEncoderBlock2D", "UpDecoderBlock2D"}:
                raise ValueError(f"unsupported {blocks}: {sorted(kinds)}")
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in hf.items() if k in names}
        if "block_out_channels" in kw:
            kw["block_out_channels"] = tuple(kw["block_out_channels"])
        return cls(**kw)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


class AttentionBlock(nn.Module):
    """Single-head self-attention over all pixels with a GroupNorm in front, residual."""

    groups: int = 32
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, hgt, wid, c = x.shape
        h = group_norm(self.groups, "group_norm", self.dtype)(x).reshape(b, hgt * wid, c)
        q, k, v = (
            dense(c, ("embed", "heads"), name=n, dtype=self.dtype)(h)
            for n in ("to_q", "to_k", "to_v")
        )
        logits = jnp.einsum("bqc,bkc->bqk", q, k).astype(jnp.float32) / jnp.sqrt(c)
        h = jnp.einsum("bqk,bkc->bqc", jax.nn.softmax(logits, -1).astype(self.dtype), v)
        h = dense(c, ("heads", "embed"), name="to_out", dtype=self.dtype)(h)
        return x + h.reshape(b, hgt, wid, c)


def mid_block(x, width: int, groups: int, attention: bool, dtype):
    """resnet, (attention), resnet; called inside a compact module (names `mid_block_*`)."""
    x = ResnetBlock(width, groups, dtype=dtype, name="mid_block_resnets_0")(x)
    if attention:
        x = AttentionBlock(groups, dtype, name="mid_block_attentions_0")(x)
    return ResnetBlock(width, groups, dtype=dtype, name="mid_block_resnets_1")(x)


class Encoder(nn.Module):
    config: VAEConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        c, g = self.config, self.config.norm_num_groups
        x = conv(c.block_out_channels[0], 3, "conv_in", dtype=self.dtype)(x)
        for i, width in enumerate(c.block_out_channels):
            block = f"down_blocks_{i}"
            for j in range(c.layers_per_block):
                x = ResnetBlock(width, g, dtype=self.dtype, name=f"{block}_resnets_{j}")(x)
            if i < len(c.block_out_channels) - 1:
                x = Downsample(width, 0, self.dtype, name=f"{block}_downsamplers_0")(x)
        x = mid_block(x, c.block_out_channels[-1], g, c.mid_block_add_attention, self.dtype)
        x = nn.silu(group_norm(g, "conv_norm_out", self.dtype)(x))
        return conv(2 * c.latent_channels, 3, "conv_out", dtype=self.dtype)(x)


class Decoder(nn.Module):
    config: VAEConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, z):
        c, g = self.config, self.config.norm_num_groups
        widths = tuple(reversed(c.block_out_channels))
        x = conv(widths[0], 3, "conv_in", dtype=self.dtype)(z)
        x = mid_block(x, widths[0], g, c.mid_block_add_attention, self.dtype)
        for i, width in enumerate(widths):
            block = f"up_blocks_{i}"
            for j in range(c.layers_per_block + 1):
                x = ResnetBlock(width, g, dtype=self.dtype, name=f"{block}_resnets_{j}")(x)
            if i < len(widths) - 1:
                x = Upsample(width, self.dtype, name=f"{block}_upsamplers_0")(x)
        x = nn.silu(group_norm(g, "conv_norm_out", self.dtype)(x))
        return conv(c.out_channels, 3, "conv_out", dtype=self.dtype)(x)


class AutoencoderKL(nn.Module):
    config: VAEConfig = VAEConfig()
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        c = self.config
        self.encoder = Encoder(c, self.dtype)
        self.decoder = Decoder(c, self.dtype)
        self.quant_conv = conv(2 * c.latent_channels, 1, "quant_conv", dtype=self.dtype)
        self.post_quant_conv = conv(c.latent_channels, 1, "post_quant_conv", dtype=self.dtype)

    def __call__(self, x):
        mean, _ = self.encode(x)
        return self.decode(mean)

    def encode(self, x) -> tuple[jax.Array, jax.Array]:
        """(mean, logvar) of the latent distribution; logvar clipped to [-30, 20] as diffusers."""
        c = self.config
        f = c.downsample_factor
        if x.ndim != 4 or x.shape[-1] != c.in_channels or x.shape[1] % f or x.shape[2] % f:
            raise ValueError(
                f"VAE.encode wants NHWC images (batch, H, W, {c.in_channels}) with H and W "
                f"divisible by {f}, got {tuple(x.shape)}"
            )
        moments = self.quant_conv(self.encoder(x))
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def decode(self, z) -> jax.Array:
        if z.ndim != 4 or z.shape[-1] != self.config.latent_channels:
            raise ValueError(
                f"VAE.decode wants NHWC latents (batch, h, w, {self.config.latent_channels}), "
                f"got {tuple(z.shape)}"
            )
        return self.decoder(self.post_quant_conv(z))


def sample_latent(key: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """z = mean + exp(logvar / 2) eps: a draw from the encoder's diagonal Gaussian."""
    return mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)
