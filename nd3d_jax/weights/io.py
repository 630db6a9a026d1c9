"""Reading Hugging Face / diffusers checkpoint folders into our parameter trees.

A folder holds `config.json` and either one safetensors file or a sharded set named by an index
(`*.safetensors.index.json`). Each model family supplies `rename(hf_key) -> Target | None`
(None: a key we deliberately ignore, such as BatchNorm's `num_batches_tracked`); `build_tree`
applies it, checks every array against the shapes our module expects, and raises one
`WeightImportError` naming every missing, unexpected and mis-shaped key.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping

import jax
import numpy as np
from flax import traverse_util
from safetensors.numpy import load_file

from nd3d_jax.errors import UserError

WEIGHT_FILES = ("model.safetensors", "diffusion_pytorch_model.safetensors")
_SHOWN = 8  # keys listed per kind of problem in an error message


class WeightImportError(UserError):
    """A checkpoint folder that cannot become our parameter tree (a `UserError`, so commands
    report it as one line; still a `ValueError`)."""


@dataclasses.dataclass(frozen=True)
class Target:
    """Where one checkpoint array goes: a path in our tree and a layout change."""

    path: tuple[str, ...]
    transform: Callable[[np.ndarray], np.ndarray] = lambda a: a


# Torch -> Flax layout changes.
def linear_kernel(w: np.ndarray) -> np.ndarray:
    """nn.Linear weight (out, in) -> Dense kernel (in, out)."""
    return w.T


def conv_kernel(w: np.ndarray) -> np.ndarray:
    """nn.Conv2d weight (out, in, kh, kw) -> Conv kernel (kh, kw, in, out)."""
    return np.transpose(w, (2, 3, 1, 0))


def read_config(folder: str) -> dict:
    """`folder/config.json` as a dict, with errors that name the folder."""
    if not os.path.isdir(folder):
        raise WeightImportError(f"weights folder not found: {folder!r}")
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise WeightImportError(f"{folder}: no config.json (expected a Hugging Face folder)")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise WeightImportError(f"{path}: not valid JSON ({e})") from e


def read_safetensors(folder: str) -> dict[str, np.ndarray]:
    """Every array of the folder's safetensors checkpoint (single file or sharded)."""
    if not os.path.isdir(folder):
        raise WeightImportError(f"weights folder not found: {folder!r}")
    names = sorted(os.listdir(folder))
    for single in WEIGHT_FILES:
        if single in names:
            return _load(os.path.join(folder, single))
    indexes = [n for n in names if n.endswith(".safetensors.index.json")]
    if indexes:
        with open(os.path.join(folder, indexes[0])) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        state = {}
        for shard in shards:
            path = os.path.join(folder, shard)
            if not os.path.isfile(path):
                raise WeightImportError(f"{folder}: shard {shard} named in {indexes[0]} is missing")
            state.update(_load(path))
        return state
    torch_files = [n for n in names if n.endswith((".bin", ".pt", ".pth", ".ckpt"))]
    hint = (
        f"; found {', '.join(torch_files)}: re-save it with `save_pretrained(..., "
        "safe_serialization=True)`"
        if torch_files
        else ""
    )
    raise WeightImportError(
        f"{folder}: no safetensors weights ({' or '.join(WEIGHT_FILES)} or a sharded index){hint}"
    )


def _load(path: str) -> dict[str, np.ndarray]:
    try:
        return load_file(path)
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise WeightImportError(f"{path}: unreadable safetensors file ({e})") from e


def build_tree(
    state: Mapping[str, np.ndarray],
    rename: Callable[[str], Target | None],
    expected: Mapping,
    *,
    source: str,
    dtype=np.float32,
) -> dict:
    """Our nested parameter tree from a checkpoint, checked against `expected`.

    `expected` is the tree of `jax.ShapeDtypeStruct`s of our module (from `jax.eval_shape` of its
    init, unboxed). Every expected leaf must be produced exactly once with its shape.
    """
    want = traverse_util.flatten_dict(expected)
    got: dict[tuple[str, ...], np.ndarray] = {}
    unexpected, misshaped = [], []
    for key in sorted(state):
        target = rename(key)
        if target is None:
            continue
        if target.path not in want:
            unexpected.append(key)
            continue
        array = np.asarray(target.transform(np.asarray(state[key])))
        if array.shape != tuple(want[target.path].shape):
            misshaped.append(
                f"{key} {tuple(state[key].shape)} -> {'/'.join(target.path)}: "
                f"{array.shape} != expected {tuple(want[target.path].shape)}"
            )
            continue
        got[target.path] = array.astype(dtype)
    missing = ["/".join(p) for p in want if p not in got]
    if unexpected or missing or misshaped:
        lines = [f"{source}: checkpoint does not match the model"]
        for title, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("mis-shaped", misshaped),
        ):
            if items:
                more = f" (+{len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
                lines.append(f"  {len(items)} {title}: {', '.join(items[:_SHOWN])}{more}")
        raise WeightImportError("\n".join(lines))
    return traverse_util.unflatten_dict(got)


def expected_shapes(module, *init_args, **init_kwargs) -> dict:
    """The unboxed `params` shape tree of `module.init(key, *init_args)`, without computing."""
    from flax import linen as nn

    variables = jax.eval_shape(
        lambda: module.init(jax.random.PRNGKey(0), *init_args, **init_kwargs)
    )
    return nn.unbox(variables)["params"]
