"""diffusers folders (`config.json` + `diffusion_pytorch_model[.fp16].safetensors` or `.bin`,
or a pipeline folder holding them) -> our trees: the UNet, the VAE and the T2I-Adapter.

Keys map by one rule: list indices join their container (`resnets.1` -> `resnets_1`), the
top-level block containers join their child (`down_blocks.0.resnets.1` ->
`down_blocks_0_resnets_1`, `mid_block.attentions.0` -> `mid_block_attentions_0`), `to_out.0` ->
`to_out`; 4-D weights are conv kernels, 2-D weights linear kernels, norm weights scales.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from nd3d_jax.weights.io import (
    Target,
    WeightImportError,
    build_tree,
    conv_kernel,
    expected_shapes,
    linear_kernel,
    model_folder,
    read_config,
    read_weights,
)
from nd3d_jax.weights.orbax_io import is_converted, restore, to_arrays

_CONTAINER = re.compile(r"^(down_blocks_\d+|up_blocks_\d+|mid_block|time_embedding)$")
_OLD_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out"}
_ATTENTION = ("to_q", "to_k", "to_v", "to_out")


def _kernel(a: np.ndarray) -> np.ndarray:
    return conv_kernel(a) if a.ndim == 4 else linear_kernel(a) if a.ndim == 2 else a


def _attention_kernel(a: np.ndarray) -> np.ndarray:
    return linear_kernel(a.reshape(a.shape[0], a.shape[1]))  # old VAEs stored 1x1 convs


def diffusers_rename(key: str, prefix: str = "") -> Target:
    if prefix and key.startswith(prefix):
        key = key[len(prefix) :]
    *mods, leaf = key.split(".")
    path: list[str] = []
    for m in mods:
        if m.isdigit() and path:
            if path[-1] != "to_out":
                path[-1] = f"{path[-1]}_{m}"
        else:
            path.append(_OLD_ATTENTION.get(m, m))
    merged: list[str] = []
    for m in path:
        if merged and _CONTAINER.match(merged[-1]):
            merged[-1] = f"{merged[-1]}_{m}"
        else:
            merged.append(m)
    module = merged[-1] if merged else ""
    if leaf == "weight" and module in _ATTENTION:
        return Target((*merged, "kernel"), _attention_kernel)
    if leaf == "weight" and "norm" in module:
        return Target((*merged, "scale"))
    if leaf == "weight":
        return Target((*merged, "kernel"), _kernel)
    return Target((*merged, leaf))


_KINDS = {"UNet2DConditionModel": "unet", "AutoencoderKL": "vae", "T2IAdapter": "adapter"}


def _load(
    path: str,
    class_name: str,
    build: Callable,
    prefix: str = "",
    dtype=jnp.float32,
    host=False,
    variant: str | None = None,
):
    path = model_folder(path, _KINDS[class_name])
    if is_converted(path):
        return restore(path, class_name, build, dtype, host)
    hf = read_config(path)
    if hf.get("_class_name") != class_name:
        got = hf.get("_class_name") or hf.get("model_type")
        raise WeightImportError(
            f"{path}: holds a {got!r} checkpoint, expected a diffusers {class_name!r}"
        )
    try:
        module, dummy = build(hf, dtype)
    except ValueError as e:
        raise WeightImportError(f"{path}: {e}") from e
    expected = expected_shapes(module, *dummy)
    rename = lambda k: diffusers_rename(k, prefix)  # noqa: E731
    params = build_tree(read_weights(path, variant), rename, expected, source=path)
    return module, to_arrays(params, host)


def build_vae(hf: dict, dtype=jnp.float32):
    from nd3d_jax.models.vae import AutoencoderKL, VAEConfig

    c = VAEConfig.from_hf(hf)
    f = c.downsample_factor
    return AutoencoderKL(c, dtype), (jnp.zeros((1, f, f, c.in_channels)),)


def build_unet(hf: dict, dtype=jnp.float32):
    from nd3d_jax.models.unet import UNet, UNetConfig

    c = UNetConfig.from_hf(hf)
    f = 2 ** (len(c.block_out_channels) - 1)
    dummy = (
        jnp.zeros((1, f, f, c.in_channels)),
        jnp.zeros((1,), jnp.int32),
        jnp.zeros((1, 1, c.cross_attention_dim)),
    )
    return UNet(c, dtype), dummy


def build_t2i_adapter(hf: dict, dtype=jnp.float32):
    from nd3d_jax.models.t2i_adapter import T2IAdapter, T2IAdapterConfig

    c = T2IAdapterConfig.from_hf(hf)
    size = c.downscale_factor * 2 ** (len(c.channels) - 1)
    return T2IAdapter(c, dtype), (jnp.zeros((1, size, size, c.in_channels)),)


# Each loader takes the model's folder or a pipeline folder holding it (`unet/`, `vae/`, ...),
# weights in any layout `read_weights` reads (`variant`: e.g. "fp16"; default: the plain files,
# else the only variant); parameters come out float32, the module computes in `dtype`.
def load_vae(path: str, dtype=jnp.float32, host: bool = False, variant: str | None = None):
    """`(AutoencoderKL module, params)` from a diffusers `AutoencoderKL` folder."""
    return _load(path, "AutoencoderKL", build_vae, dtype=dtype, host=host, variant=variant)


def load_unet(path: str, dtype=jnp.float32, host: bool = False, variant: str | None = None):
    """`(UNet module, params)` from a diffusers `UNet2DConditionModel` folder."""
    return _load(path, "UNet2DConditionModel", build_unet, dtype=dtype, host=host, variant=variant)


def load_t2i_adapter(path: str, dtype=jnp.float32, host: bool = False, variant: str | None = None):
    """`(T2IAdapter module, params)` from a diffusers `T2IAdapter` folder (full adapter)."""
    return _load(path, "T2IAdapter", build_t2i_adapter, "adapter.", dtype, host, variant)
