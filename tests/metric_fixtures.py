"""Tiny random metric models in the layouts users have: LPIPS folders (torchvision backbone and
lpips linear-head keys, as .safetensors, so no torch is needed)."""

from __future__ import annotations

import os

import jax
import numpy as np
from safetensors.numpy import save_file

from nd3d_jax.models.lpips import LPIPS


def write_lpips_folder(folder: str, net: str, seed: int = 0) -> str:
    """A random LPIPS folder for `net` ("alex" or "vgg"); returns `folder`."""
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32)
    shapes = jax.eval_shape(LPIPS(net).init, jax.random.key(seed), x, x)["params"]
    rng = np.random.default_rng(seed)
    backbone, lin = {}, {}
    for name, p in shapes.items():
        hwio = p["kernel"].shape  # He-initialised, so activations keep their scale
        k = rng.normal(0, np.sqrt(2 / np.prod(hwio[:3])), hwio).astype(np.float32)
        w = np.ascontiguousarray(np.transpose(k, (3, 2, 0, 1)))
        if name.startswith("lin"):
            lin[f"{name}.model.1.weight"] = np.abs(w)  # lpips' heads are non-negative
        else:
            i = name.split("_")[1]
            backbone[f"features.{i}.weight"] = w
            backbone[f"features.{i}.bias"] = rng.normal(0, 0.01, p["bias"].shape).astype(np.float32)
    os.makedirs(folder, exist_ok=True)
    save_file(backbone, os.path.join(folder, f"{net}_backbone.safetensors"))
    save_file(lin, os.path.join(folder, f"{net}.safetensors"))
    return folder
