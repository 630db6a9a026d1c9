"""diffusers `AutoencoderKL` folders -> our `AutoencoderKL` parameters."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np

from nd3d_jax.models.vae import AutoencoderKL, VAEConfig
from nd3d_jax.weights.io import (
    Target,
    WeightImportError,
    build_tree,
    conv_kernel,
    expected_shapes,
    linear_kernel,
    read_config,
    read_safetensors,
)

_OLD_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out"}
_ATTENTION = ("to_q", "to_k", "to_v", "to_out")


def _attention_kernel(w: np.ndarray) -> np.ndarray:
    return linear_kernel(w.reshape(w.shape[0], w.shape[1]))  # old checkpoints: 1x1 convs


def diffusers_rename(key: str) -> Target:
    """`encoder.down_blocks.0.resnets.1.conv1.weight` -> encoder/down_blocks_0_resnets_1/conv1/
    kernel; `...attentions.0.to_out.0.weight` -> .../attentions_0/to_out/kernel."""
    *mods, leaf = key.split(".")
    path: list[str] = []
    for m in mods:
        if m.isdigit():
            if path and path[-1] == "to_out":
                continue
            path[-1] = f"{path[-1]}_{m}"
        else:
            path.append(_OLD_ATTENTION.get(m, m))
    joined = "/".join(path)
    joined = re.sub(r"((?:down|up)_blocks_\d+)/(resnets_\d+)", r"\1_\2", joined)
    joined = re.sub(
        r"((?:down|up)_blocks_\d+)/((?:down|up)samplers_\d+)/conv", r"\1_\2_conv", joined
    )
    path = joined.split("/")
    module = path[-1] if path else ""
    if leaf == "weight" and module in _ATTENTION:
        return Target((*path, "kernel"), _attention_kernel)
    if leaf == "weight" and "norm" in module:
        return Target((*path, "scale"))
    if leaf == "weight":
        return Target((*path, "kernel"), conv_kernel)
    return Target((*path, leaf))


def load_vae(path: str, dtype=jnp.float32) -> tuple[AutoencoderKL, dict]:
    """`(module, params)` from a diffusers `AutoencoderKL.save_pretrained` folder."""
    hf = read_config(path)
    if hf.get("_class_name") != "AutoencoderKL":
        raise WeightImportError(
            f"{path}: holds a {hf.get('_class_name') or hf.get('model_type')!r} checkpoint, "
            "expected a diffusers 'AutoencoderKL'"
        )
    try:
        config = VAEConfig.from_hf(hf)
    except ValueError as e:
        raise WeightImportError(f"{path}: {e}") from e
    module = AutoencoderKL(config, dtype=dtype)
    f = config.downsample_factor
    expected = expected_shapes(module, jnp.zeros((1, f, f, config.in_channels)))
    params = build_tree(read_safetensors(path), diffusers_rename, expected, source=path)
    return module, jax.tree.map(jnp.asarray, params)
