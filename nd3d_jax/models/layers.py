"""Layers shared by the Linen models: every parameter gets logical axis names.

Factories (`dense`, `layer_norm`, `embed`, `conv`, `group_norm`) and the NHWC blocks that the
diffusers-style UNet and VAE have in common (`ResnetBlock`, `Downsample`, `Upsample`). Module and
parameter names follow diffusers' keys (`conv1`, `norm2`, `conv_shortcut`, `time_emb_proj`,
`downsamplers_0/conv`, ...), which `nd3d_jax.weights.diffusers` relies on.

Axis names used across the models (mapped to mesh axes by the config's rules): `embed` (model
width), `mlp` (MLP hidden), `heads` (attention heads x head dim), `vocab`, `position`, `proj`
(CLIP's joint embedding), `conv_h`/`conv_w`/`conv_in`/`conv_out` (conv kernels), `prior`
(the prior widths of the paper, 128/256/384).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

Axes = tuple[str, ...]
CONV_AXES = ("conv_h", "conv_w", "conv_in", "conv_out")


def dense(
    features: int,
    axes: tuple[str, str],
    *,
    name: str,
    use_bias: bool = True,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    kernel_init=None,
) -> nn.Dense:
    kernel_init = kernel_init or nn.initializers.lecun_normal()
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=nn.with_logical_partitioning(kernel_init, axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), axes[1:]),
        name=name,
    )


def layer_norm(
    axis: str = "embed", *, name: str, eps: float = 1e-5, dtype=jnp.float32, param_dtype=jnp.float32
) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=eps,
        dtype=dtype,
        param_dtype=param_dtype,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), (axis,)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axis,)),
        name=name,
    )


def embed(
    num: int,
    features: int,
    axes: tuple[str, str],
    *,
    name: str,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
) -> nn.Embed:
    return nn.Embed(
        num,
        features,
        dtype=dtype,
        param_dtype=param_dtype,
        embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), axes),
        name=name,
    )


def conv(
    features: int,
    kernel: int,
    name: str,
    stride: int = 1,
    padding=None,
    dtype=jnp.float32,
    *,
    use_bias: bool = True,
    param_dtype=jnp.float32,
    kernel_init=None,
) -> nn.Conv:
    """Square conv with torch's explicit padding (`kernel // 2` unless given; never "SAME")."""
    pad = kernel // 2 if padding is None else padding
    kernel_init = kernel_init or nn.initializers.lecun_normal()
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)) if isinstance(pad, int) else pad,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=nn.with_logical_partitioning(kernel_init, CONV_AXES),
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
    """diffusers' `ResnetBlock2D`: GroupNorm-SiLU-conv3x3, [+ time_emb_proj(silu(temb))],
    GroupNorm-SiLU-conv3x3, plus a 1x1 `conv_shortcut` on width change. Without `temb` (the VAE)
    the block has no `time_emb_proj`."""

    features: int
    groups: int = 32
    eps: float = 1e-6
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array | None = None) -> jax.Array:
        h = nn.silu(group_norm(self.groups, "norm1", self.dtype, self.eps)(x))
        h = conv(self.features, 3, "conv1", dtype=self.dtype)(h)
        if temb is not None:
            t = dense(self.features, ("embed", "conv_out"), name="time_emb_proj", dtype=self.dtype)
            h = h + t(nn.silu(temb))[:, None, None, :]
        h = nn.silu(group_norm(self.groups, "norm2", self.dtype, self.eps)(h))
        h = conv(self.features, 3, "conv2", dtype=self.dtype)(h)
        if x.shape[-1] != self.features:
            x = conv(self.features, 1, "conv_shortcut", dtype=self.dtype)(x)
        return x + h


class Downsample(nn.Module):
    """diffusers' `downsamplers.0.conv`: 3x3 stride 2; padding 1 (UNet) or, with `padding=0`,
    the VAE's asymmetric (0, 1) zero pad first."""

    features: int
    padding: int = 1
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.padding == 0:
            x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return conv(self.features, 3, "conv", 2, self.padding, self.dtype)(x)


class Upsample(nn.Module):
    """diffusers' `upsamplers.0.conv`: nearest-neighbour 2x, then a 3x3 conv."""

    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return conv(self.features, 3, "conv", dtype=self.dtype)(x)


def quick_gelu(x: jax.Array) -> jax.Array:
    """OpenAI CLIP's activation: x sigmoid(1.702 x)."""
    return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS = {
    "quick_gelu": quick_gelu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}; supported: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]
