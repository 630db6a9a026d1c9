"""The T2I-Adapter (diffusers `T2IAdapter`, full adapter), NHWC.

Eq 13: the conditions (normal maps N and texture maps T of the refined mesh, rendered in the
same K-view grid as the latent) are stacked on the channel axis; the adapter turns them into one
feature map per UNet down level, which the UNet adds on its down path.

    pixel-unshuffle (8) -> conv_in -> body_0 ... body_{n-1}
    body_i: [avg-pool 2 (i > 0)] [1x1 conv on width change] num_res_blocks x (3x3, relu, 1x1, +)
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from nd3d_jax.models.layers import conv


@dataclasses.dataclass(frozen=True)
class T2IAdapterConfig:
    """Defaults: TencentARC's SD 1.x adapters (RGB condition, 4 levels)."""

    in_channels: int = 3
    channels: tuple[int, ...] = (320, 640, 1280, 1280)
    num_res_blocks: int = 2
    downscale_factor: int = 8

    @classmethod
    def from_hf(cls, hf: dict) -> T2IAdapterConfig:
        if hf.get("adapter_type", "full_adapter") != "full_adapter":
            raise ValueError(f"adapter_type {hf['adapter_type']!r} is not supported (full_adapter)")
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in hf.items() if k in names}
        return cls(**kw)


def pixel_unshuffle(x: jax.Array, r: int) -> jax.Array:
    """(B, H, W, C) -> (B, H/r, W/r, C r r), channel order c r^2 + i r + j as torch's."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // r, r, w // r, r, c)
    return x.transpose(0, 1, 3, 5, 2, 4).reshape(b, h // r, w // r, c * r * r)


def avg_pool_ceil(x: jax.Array) -> jax.Array:
    """2x2 average pooling, stride 2, ceil mode (partial windows average their valid pixels)."""
    b, h, w, c = x.shape
    ph, pw = h % 2, w % 2
    pad = ((0, 0), (0, ph), (0, pw), (0, 0))
    total = jnp.pad(x, pad).reshape(b, (h + ph) // 2, 2, (w + pw) // 2, 2, c).sum((2, 4))
    ones = jnp.pad(jnp.ones((1, h, w, 1), x.dtype), pad)
    count = ones.reshape(1, (h + ph) // 2, 2, (w + pw) // 2, 2, 1).sum((2, 4))
    return total / count


class AdapterResnetBlock(nn.Module):
    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = nn.relu(conv(self.features, 3, "block1", dtype=self.dtype)(x))
        return x + conv(self.features, 1, "block2", dtype=self.dtype)(h)


class AdapterBlock(nn.Module):
    features: int
    num_res_blocks: int
    down: bool
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        if self.down:
            x = avg_pool_ceil(x)
        if x.shape[-1] != self.features:
            x = conv(self.features, 1, "in_conv", dtype=self.dtype)(x)
        for i in range(self.num_res_blocks):
            x = AdapterResnetBlock(self.features, self.dtype, name=f"resnets_{i}")(x)
        return x


class T2IAdapter(nn.Module):
    config: T2IAdapterConfig = T2IAdapterConfig()
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, conditions: jax.Array) -> list[jax.Array]:
        """(B, H, W, in_channels) condition maps -> per-level features, finest first."""
        c = self.config
        f = c.downscale_factor
        if conditions.ndim != 4 or conditions.shape[-1] != c.in_channels:
            raise ValueError(
                f"T2IAdapter wants NHWC conditions (batch, H, W, {c.in_channels}), "
                f"got {tuple(conditions.shape)}"
            )
        if conditions.shape[1] % f or conditions.shape[2] % f:
            raise ValueError(f"condition size {conditions.shape[1:3]} is not divisible by {f}")
        x = pixel_unshuffle(conditions.astype(self.dtype), f)
        x = conv(c.channels[0], 3, "conv_in", dtype=self.dtype)(x)
        features = []
        for i, width in enumerate(c.channels):
            x = AdapterBlock(width, c.num_res_blocks, i > 0, self.dtype, name=f"body_{i}")(x)
            features.append(x)
        return features
