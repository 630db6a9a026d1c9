"""Converted weight folders: our parameter tree as an orbax checkpoint beside its source config.

    OUT/params/             orbax StandardCheckpointer tree (float32 or bfloat16)
    OUT/config.json         the source folder's config, which rebuilds the module
    OUT/tokenizer files     copied when the source had them (OUT also serves as tokenizer folder)
    OUT/nd3d_weights.json   MARKER: {"kind", "source", "dtype"}

The `load_*` functions read such a folder with `restore` (their own `build` rebuilds the module);
`python -m nd3d_jax.weights.convert` writes one with `write`. This module knows no model family.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from nd3d_jax.weights.io import WeightImportError, expected_shapes, read_config

MARKER = "nd3d_weights.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
)

# build(hf_config, dtype) -> (module, dummy init args)
Build = Callable[[dict, jnp.dtype], tuple]


def is_converted(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MARKER))


def write(params, src: str, out: str, kind: str, dtype=jnp.float32) -> None:
    """Saves `params` (cast to `dtype`) under `out/params`, with `src`'s config and tokenizer
    files and the MARKER naming `kind`. Refuses an `out` that already holds `params/`."""
    import orbax.checkpoint as ocp

    params = jax.tree.map(lambda a: a.astype(dtype), params)
    out = os.path.abspath(out)
    if os.path.exists(os.path.join(out, "params")):
        raise FileExistsError(f"{out}/params exists; choose another OUT folder")
    os.makedirs(out, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(out, "params"), params)
    shutil.copy(os.path.join(src, "config.json"), os.path.join(out, "config.json"))
    for name in TOKENIZER_FILES:
        if os.path.isfile(os.path.join(src, name)):
            shutil.copy(os.path.join(src, name), os.path.join(out, name))
    with open(os.path.join(out, MARKER), "w") as f:
        json.dump({"kind": kind, "source": os.path.abspath(src), "dtype": jnp.dtype(dtype).name}, f)


def restore(path: str, kind: str, build: Build, dtype=jnp.float32, host: bool = False):
    """`(module, float32 params)` from a converted folder holding `kind`; `build` makes the
    module (compute `dtype`) and its dummy init inputs from the folder's `config.json`.
    `host`: numpy arrays (nothing placed on a device)."""
    import orbax.checkpoint as ocp

    with open(os.path.join(path, MARKER)) as f:
        meta = json.load(f)
    if meta["kind"] != kind:
        raise WeightImportError(f"{path}: holds a converted {meta['kind']!r}, expected {kind!r}")
    module, dummy = build(read_config(path), dtype)
    saved = jnp.dtype(meta["dtype"])
    abstract = jax.tree.map(
        (lambda s: np.zeros(s.shape, saved))
        if host
        else (lambda s: jax.ShapeDtypeStruct(s.shape, saved)),
        expected_shapes(module, *dummy),
    )
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(os.path.join(os.path.abspath(path), "params"), abstract)
    return module, to_arrays(params, host)


def to_arrays(params, host: bool):
    """float32 numpy arrays on the host (`host`), else jax arrays on the default device."""
    if host:
        return jax.tree.map(lambda a: np.asarray(a, np.float32), params)
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
