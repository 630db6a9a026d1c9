"""Hugging Face `CLIPModel` folders -> our `CLIPModel` parameters, and the CLIP tokenizer.

Checkpoint keys map one to one: `text_model.encoder.layers.3.mlp.fc1.weight` ->
`text_model/encoder/layers_3/fc1/kernel` (transposed). `position_ids` buffers are ignored.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from nd3d_jax.models.clip import CLIPConfig, CLIPModel
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

_LINEAR = re.compile(r"(q_proj|k_proj|v_proj|out_proj|fc1|fc2|text_projection|visual_projection)$")
_NORM = re.compile(r"(layer_norm\d?|final_layer_norm|pre_layrnorm|post_layernorm)$")


def clip_rename(key: str) -> Target | None:
    if key.endswith("position_ids"):
        return None
    parts = key.replace(".mlp.", ".").split(".")
    path = []
    for i, p in enumerate(parts):
        if p.isdigit() and path and path[-1] == "layers":
            path[-1] = f"layers_{p}"
        elif i < len(parts) - 1 or len(parts) == 1:
            path.append(p)
    module, leaf = (path[-1] if path else ""), parts[-1]
    if len(parts) == 1:  # logit_scale
        return Target(tuple(path))
    if module == "embeddings" and leaf == "class_embedding":
        return Target((*path, "class_embedding"))
    if leaf == "weight" and _LINEAR.search(module):
        return Target((*path, "kernel"), linear_kernel)
    if leaf == "weight" and module == "patch_embedding":
        return Target((*path, "kernel"), conv_kernel)
    if leaf == "weight" and module.endswith("_embedding"):
        return Target((*path, "embedding"))
    if _NORM.search(module):
        return Target((*path, {"weight": "scale"}.get(leaf, leaf)))
    return Target((*path, leaf))  # anything else: reported as unexpected by build_tree


def clip_dummy_inputs(config: CLIPConfig):
    v = config.vision
    return (
        jnp.zeros((1, 4), jnp.int32),
        jnp.ones((1, 4), jnp.int32),
        jnp.zeros((1, v.image_size, v.image_size, v.num_channels), jnp.float32),
    )


def build_clip(hf: dict, dtype=jnp.float32):
    """(CLIPModel, dummy init inputs) from a config.json dict."""
    module = CLIPModel(CLIPConfig.from_hf(hf), dtype=dtype)
    return module, clip_dummy_inputs(module.config)


def check_model_type(hf: dict, folder: str, want: str) -> None:
    got = hf.get("model_type")
    if got != want:
        archs = ", ".join(hf.get("architectures") or [])
        raise WeightImportError(
            f"{folder}: holds a {got!r} checkpoint{f' ({archs})' if archs else ''}, "
            f"expected {want!r}"
        )


def load_clip(
    path: str, dtype=jnp.float32, host: bool = False, variant: str | None = None
) -> tuple[CLIPModel, dict]:
    """`(module, params)` from a `CLIPModel.save_pretrained` folder (any weight layout of
    `read_weights`, `variant` as there) or a converted checkpoint (`host`: numpy arrays, for
    placing straight into shardings)."""
    path = model_folder(path, "clip")
    if is_converted(path):
        return restore(path, "clip", build_clip, dtype, host)
    hf = read_config(path)
    check_model_type(hf, path, "clip")
    module, dummy = build_clip(hf, dtype)
    expected = expected_shapes(module, *dummy)
    params = build_tree(read_weights(path, variant), clip_rename, expected, source=path)
    return module, to_arrays(params, host)


class CLIPTokenizer:
    """transformers' CLIP tokenizer from a local folder, padded to a fixed length.

    Texts longer than `max_length` tokens are truncated (the end-of-text token kept), with one
    warning per tokenizer naming the first such text.
    """

    def __init__(self, path: str, max_length: int = 77):
        from transformers import CLIPTokenizer as HFTokenizer

        if not os.path.isdir(path):
            raise WeightImportError(f"tokenizer folder not found: {path!r}")
        path = model_folder(path, "tokenizer")  # a pipeline folder: its tokenizer/
        try:
            self.hf = HFTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, TypeError) as e:
            raise WeightImportError(f"{path}: no usable CLIP tokenizer files ({e})") from e
        self.max_length = max_length
        self._warned = False

    def __call__(self, texts: str | Sequence[str], max_length: int | None = None) -> dict:
        texts = [texts] if isinstance(texts, str) else list(texts)
        n = max_length or self.max_length
        if not self._warned:
            lengths = [len(ids) for ids in self.hf(texts)["input_ids"]]
            long = [t for t, k in zip(texts, lengths, strict=True) if k > n]
            if long:
                self._warned = True
                logging.warning(
                    "%d text(s) longer than %d tokens are truncated (warned once), e.g. %r",
                    len(long),
                    n,
                    long[0][:80],
                )
        out = self.hf(texts, padding="max_length", max_length=n, truncation=True)
        return {
            "input_ids": np.asarray(out["input_ids"], np.int32),
            "attention_mask": np.asarray(out["attention_mask"], np.int32),
        }
