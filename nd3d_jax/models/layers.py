"""Small layer factories shared by the Linen models: every parameter gets logical axis names.

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
