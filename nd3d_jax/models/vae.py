"""The Stable-Diffusion image VAE (diffusers `AutoencoderKL`) in Linen, NHWC.

The M4 decoder half and the frozen encoder of the latent grid (DESIGN.md). Module names follow
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

from nd3d_jax.models.layers import dense

CONV_AXES = ("conv_h", "conv_w", "conv_in", "conv_out")


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


def conv(features: int, kernel: int, name: str, stride: int = 1, padding=None, dtype=jnp.float32):
    pad = kernel // 2 if padding is None else padding
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)) if isinstance(pad, int) else pad,
        dtype=dtype,
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), CONV_AXES),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("conv_out",)),
        name=name,
    )


def group_norm(groups: int, name: str, dtype=jnp.float32, eps: float = 1e-6) -> nn.GroupNorm:
    return nn.GroupNorm(
        num_groups=groups,
        epsilon=eps,
        dtype=dtype,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("conv_out",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("conv_out",)),
        name=name,
    )


class ResnetBlock(nn.Module):
    """norm -> silu -> conv3x3 -> norm -> silu -> conv3x3, plus a 1x1 shortcut on width change."""

    features: int
    groups: int = 32
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = nn.silu(group_norm(self.groups, "norm1", self.dtype)(x))
        h = conv(self.features, 3, "conv1", dtype=self.dtype)(h)
        h = nn.silu(group_norm(self.groups, "norm2", self.dtype)(h))
        h = conv(self.features, 3, "conv2", dtype=self.dtype)(h)
        if x.shape[-1] != self.features:
            x = conv(self.features, 1, "conv_shortcut", dtype=self.dtype)(x)
        return x + h


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


class Downsample(nn.Module):
    """diffusers' `downsamplers.0.conv`: 3x3 stride 2; padding 1 (UNet) or, with `padding=0`,
    the VAE's asymmetric (0, 1) zero pad first."""

    features: int
    padding: int = 1
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        if self.padding == 0:
            x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return conv(self.features, 3, "conv", 2, self.padding, self.dtype)(x)


class Upsample(nn.Module):
    """diffusers' `upsamplers.0.conv`: nearest-neighbour 2x, then a 3x3 conv."""

    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return conv(self.features, 3, "conv", dtype=self.dtype)(x)


def mid_block(x, width: int, groups: int, attention: bool, dtype):
    """resnet, (attention), resnet; called inside a compact module (names `mid_block_*`)."""
    x = ResnetBlock(width, groups, dtype, name="mid_block_resnets_0")(x)
    if attention:
        x = AttentionBlock(groups, dtype, name="mid_block_attentions_0")(x)
    return ResnetBlock(width, groups, dtype, name="mid_block_resnets_1")(x)


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
                x = ResnetBlock(width, g, self.dtype, name=f"{block}_resnets_{j}")(x)
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
                x = ResnetBlock(width, g, self.dtype, name=f"{block}_resnets_{j}")(x)
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
