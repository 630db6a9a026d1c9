"""Hugging Face ResNet checkpoints (`ResNetModel`, `ResNetForImageClassification`) -> `ResNet`.

The texture encoder of the paper (section "Preprocessing of multimodal prior information") is a
pre-trained ResNet-18, e.g. a `save_pretrained` folder of `microsoft/resnet-18`. Key mapping:

    [resnet.]embedder.embedder.{convolution,normalization}.*      -> embedder/...
    [resnet.]encoder.stages.i.layers.j.layer.k.*                  -> stages_i/layers_j/layer_k/...
    [resnet.]encoder.stages.i.layers.j.shortcut.*                 -> stages_i/layers_j/shortcut/...
    convolution.weight (out, in, kh, kw)  -> convolution/kernel (kh, kw, in, out)
    normalization.{weight,bias,running_mean,running_var} -> normalization/{scale,bias,mean,var}

`num_batches_tracked` and the classification head (`classifier.*`) are ignored.
"""

from __future__ import annotations

import re

import jax.numpy as jnp
import numpy as np

from nd3d_jax.models.resnet import ResNet, ResNetConfig
from nd3d_jax.weights.io import (
    Target,
    WeightImportError,
    build_tree,
    conv_kernel,
    expected_shapes,
    model_folder,
    read_config,
    read_weights,
)
from nd3d_jax.weights.orbax_io import is_converted, restore, to_arrays

_BN = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}
_MODULE = re.compile(
    r"^(?:embedder\.embedder"
    r"|encoder\.stages\.(?P<i>\d+)\.layers\.(?P<j>\d+)\.(?:layer\.(?P<k>\d+)|(?P<sc>shortcut)))"
    r"\.(?P<rest>.+)$"
)


def _conv(w: np.ndarray) -> np.ndarray:
    # Only 4-D arrays can be transposed; anything else is reported as mis-shaped by build_tree.
    return conv_kernel(w) if w.ndim == 4 else w


def resnet_rename(hf_key: str) -> Target | None:
    """Where one HF key goes in our tree; None for keys deliberately ignored."""
    key = hf_key.removeprefix("resnet.")
    if key.startswith("classifier.") or key.endswith(".num_batches_tracked"):
        return None
    m = _MODULE.match(key)
    if m is None:
        return Target(("<unexpected>", hf_key))
    if m["i"] is None:
        module: tuple[str, ...] = ("embedder",)
    else:
        last = "shortcut" if m["sc"] else f"layer_{m['k']}"
        module = (f"stages_{m['i']}", f"layers_{m['j']}", last)
    rest = m["rest"]
    if rest == "convolution.weight":
        return Target((*module, "convolution", "kernel"), _conv)
    sub, _, leaf = rest.partition(".")
    if sub == "normalization" and leaf in _BN:
        return Target((*module, "normalization", _BN[leaf]))
    return Target(("<unexpected>", hf_key))


def build_resnet(hf: dict, dtype=jnp.float32):
    """(ResNet, dummy init inputs) from a config.json dict; parameters stay float32."""
    cfg = ResNetConfig.from_hf(hf)
    module = ResNet(cfg, dtype=dtype, param_dtype=jnp.float32)
    return module, (np.zeros((1, 64, 64, cfg.num_channels), np.float32),)


def load_resnet(
    path: str, dtype=jnp.float32, host: bool = False, variant: str | None = None
) -> tuple[ResNet, dict]:
    """(module, params) from a `save_pretrained` ResNet folder (config.json + weights in any
    layout of `read_weights`, `variant` as there).

    `dtype` is the compute dtype of the module; parameters are kept in float32 so BN statistics
    and kernels lose nothing (BN is folded in float32 at run time anyway). A folder written by
    `python -m nd3d_jax.weights.convert` loads too.
    """
    path = model_folder(path, "resnet")
    if is_converted(path):
        return restore(path, "resnet", build_resnet, dtype, host)
    config = read_config(path)
    model_type = config.get("model_type")
    if model_type != "resnet":
        raise WeightImportError(f"{path}: holds a {model_type!r} checkpoint, expected 'resnet'")
    try:
        module, dummy = build_resnet(config, dtype)
    except ValueError as e:
        raise WeightImportError(f"{path}: unsupported ResNet config: {e}") from e
    expected = expected_shapes(module, *dummy)
    state = read_weights(path, variant)
    params = build_tree(state, resnet_rename, expected, source=path)
    return module, to_arrays(params, host)
