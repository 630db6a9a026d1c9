"""LPIPS weights from the files users have -> `nd3d_jax.models.lpips.LPIPS` parameters.

An LPIPS folder holds two weight files (`.pth`/`.pt` read with torch, or `.safetensors`), any
names, told apart by their keys:

    backbone  torchvision's state dict: alexnet-owt-7be5be79.pth or vgg16-397923af.pth
              (`features.N.weight/bias`; `classifier.*` ignored). The `lpips` package's own
              `net.sliceK.N.*` keys are accepted too (a saved `lpips.LPIPS` state dict).
    linear    the `lpips` package's lpips/weights/v0.1/alex.pth or vgg.pth
              (`lin{k}.model.1.weight`, (1, C, 1, 1); `lin{k}.model.0.weight` without dropout)

A single file holding both (a `torch.save(lpips.LPIPS(...).state_dict())`) works as well. The
net (alex or vgg) follows from `features.0.weight`: 11x11 (AlexNet) or 3x3 (VGG-16).

    features.N.weight (out, in, kh, kw) -> features_N/kernel (kh, kw, in, out)
    features.N.bias                     -> features_N/bias
    lin{k}.model.{0,1}.weight (1, C, 1, 1) -> lin{k}/kernel (1, 1, C, 1)

`python -m nd3d_jax.weights.convert LPIPS_FOLDER OUT` writes the orbax layout (kind "lpips",
`config.json` = {"model_type": "lpips", "net": ...}); `load_lpips` reads either folder.
"""

from __future__ import annotations

import json
import os
import re
import tempfile

import jax.numpy as jnp
import numpy as np

from nd3d_jax.models.lpips import LPIPS, NETS
from nd3d_jax.weights.io import (
    WEIGHT_FILES,
    Target,
    WeightImportError,
    build_tree,
    conv_kernel,
    expected_shapes,
    read_file,
)
from nd3d_jax.weights.orbax_io import MARKER, is_converted, restore, to_arrays, write

KIND = "lpips"
WEIGHT_EXTENSIONS = (".pth", ".pt", ".safetensors")
_BACKBONE = re.compile(r"^(?:features|net\.slice\d)\.(?P<n>\d+)\.(?P<leaf>weight|bias)$")
_LINEAR = re.compile(r"^lin(?P<k>\d+)\.model\.[01]\.weight$")
# classifier: torchvision's head; scaling_layer: lpips' constants; lins.k: lpips' ModuleList
# alias of lin{k} in a saved lpips.LPIPS state dict.
_IGNORED = re.compile(r"^(?:classifier\.|scaling_layer\.|lins\.\d+\.)")


def _conv(w: np.ndarray) -> np.ndarray:
    # Only 4-D arrays can be transposed; anything else is reported as mis-shaped by build_tree.
    return conv_kernel(w) if w.ndim == 4 else w


def lpips_rename(key: str) -> Target | None:
    """Where one backbone or linear-head key goes in our tree; None for ignored keys."""
    if _IGNORED.match(key):
        return None
    m = _BACKBONE.match(key)
    if m:
        leaf = "kernel" if m["leaf"] == "weight" else "bias"
        return Target((f"features_{m['n']}", leaf), _conv if leaf == "kernel" else np.asarray)
    m = _LINEAR.match(key)
    if m:
        return Target((f"lin{m['k']}", "kernel"), _conv)
    return Target(("<unexpected>", key))


def read_lpips_state(folder: str) -> tuple[str, dict[str, np.ndarray]]:
    """(net, merged state dict) of an LPIPS folder, checking that both parts are present."""
    if not os.path.isdir(folder):
        raise WeightImportError(f"LPIPS weights folder not found: {folder!r}")
    files = sorted(n for n in os.listdir(folder) if n.endswith(WEIGHT_EXTENSIONS))
    if not files:
        raise WeightImportError(
            f"{folder}: no LPIPS weight files; expected the torchvision backbone "
            "(alexnet-owt-7be5be79.pth or vgg16-397923af.pth) and lpips' alex.pth or vgg.pth"
        )
    state: dict[str, np.ndarray] = {}
    for name in files:
        part = read_file(os.path.join(folder, name))
        twice = sorted(set(part) & set(state))
        if twice:
            raise WeightImportError(f"{folder}/{name}: keys also in another file: {twice[:4]}")
        state.update(part)
    has_backbone = any(_BACKBONE.match(k) for k in state)
    has_linear = any(_LINEAR.match(k) for k in state)
    if not (has_backbone and has_linear):
        lacking = "backbone (features.N.* keys)" if not has_backbone else "linear heads (lin*)"
        raise WeightImportError(
            f"{folder}: no LPIPS {lacking} in {', '.join(files)}; the folder needs the "
            "torchvision backbone .pth and lpips' weights/v0.1/{alex,vgg}.pth"
        )
    first = state.get("features.0.weight", state.get("net.slice1.0.weight"))
    if first is None:
        raise WeightImportError(f"{folder}: no features.0.weight (the first backbone conv)")
    kernel = first.shape[-1] if first.ndim == 4 else None
    net = {11: "alex", 3: "vgg"}.get(kernel)
    if net is None:
        raise WeightImportError(
            f"{folder}: features.0.weight {first.shape} is neither "
            "AlexNet's (64, 3, 11, 11) nor VGG-16's (64, 3, 3, 3)"
        )
    return net, state


def build_lpips(config: dict, dtype=jnp.float32):
    """(LPIPS, dummy init inputs) from a config dict {"net": "alex" | "vgg"}; float32 only."""
    net = config.get("net")
    if net not in NETS:
        raise WeightImportError(f"LPIPS config names net {net!r}, expected one of {sorted(NETS)}")
    x = np.zeros((1, 64, 64, 3), np.float32)
    return LPIPS(net), (x, x)


def load_lpips(folder: str, dtype=jnp.float32, host: bool = False) -> tuple[LPIPS, dict]:
    """(module, params) from an LPIPS folder (see the module docstring) or a converted one.
    The metric always computes in float32 (`dtype` is accepted for the `load_*` signature)."""
    if is_converted(folder):
        return restore(folder, KIND, build_lpips, dtype, host)
    net, state = read_lpips_state(folder)
    module, dummy = build_lpips({"net": net})
    expected = expected_shapes(module, *dummy)
    params = build_tree(state, lpips_rename, expected, source=folder)
    return module, to_arrays(params, host)


def is_lpips_folder(folder: str) -> bool:
    """A folder of weight files without config.json, none named like a Hugging Face checkpoint
    (what `convert` treats as LPIPS)."""
    return (
        os.path.isdir(folder)
        and not os.path.isfile(os.path.join(folder, "config.json"))
        and any(n.endswith(WEIGHT_EXTENSIONS) for n in os.listdir(folder))
        and not any(n in WEIGHT_FILES for n in os.listdir(folder))
    )


def convert_lpips(src: str, out: str, dtype=jnp.float32) -> str:
    """Imports the LPIPS folder `src` (checked key by key) and writes the orbax layout."""
    module, params = load_lpips(src, host=True)
    with tempfile.TemporaryDirectory() as tmp:  # `write` copies the source's config.json
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump({"model_type": KIND, "net": module.net}, f)
        write(params, tmp, out, KIND, dtype)
    marker = os.path.join(out, MARKER)
    with open(marker) as f:
        meta = json.load(f)
    meta["source"] = os.path.abspath(src)
    with open(marker, "w") as f:
        json.dump(meta, f)
    return f"{KIND} ({module.net})"
