"""Reading Hugging Face / diffusers checkpoint folders into our parameter trees.

A folder holds `config.json` and the weights as the Hub serves them (`read_weights`): one
safetensors file or a sharded set named by an index (`*.safetensors.index.json`), a dtype
variant of either (`*.fp16.safetensors`, `*.safetensors.index.fp16.json`), or a PyTorch pickle
(`pytorch_model.bin`, `*.pt`, read with torch when it is installed). A diffusers pipeline folder
(`model_index.json`) stands for its sub-folder of the wanted class (`model_folder`). Each model
family supplies `rename(hf_key) -> Target | None`
(None: a key we deliberately ignore, such as BatchNorm's `num_batches_tracked`); `build_tree`
applies it, checks every array against the shapes our module expects, and raises one
`WeightImportError` naming every missing, unexpected and mis-shaped key.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Mapping

import jax
import numpy as np
from flax import traverse_util
from safetensors.numpy import load_file

from nd3d_jax.errors import UserError

WEIGHT_FILES = ("model.safetensors", "diffusion_pytorch_model.safetensors")
_SHOWN = 8  # keys listed per kind of problem in an error message

# Weight file names as transformers / diffusers `save_pretrained` writes them, with an optional
# dtype variant (`variant="fp16"`): model[.fp16].safetensors, diffusion_pytorch_model[.fp16].bin,
# sharded sets named by model.safetensors.index[.fp16].json; any other *.pt / *.pth file too.
_SINGLE = re.compile(
    r"^(?P<base>model|diffusion_pytorch_model|pytorch_model)(?:\.(?P<variant>\w+))?"
    r"\.(?P<fmt>safetensors|bin)$"
)
_INDEX = re.compile(
    r"^(?P<base>model|diffusion_pytorch_model|pytorch_model)\.(?P<fmt>safetensors|bin)"
    r"\.index(?:\.(?P<variant>\w+))?\.json$"
)
_TORCH_SUFFIXES = (".bin", ".pt", ".pth")
# preference when a folder holds the same variant in several formats (as diffusers prefers)
_FORMAT_ORDER = ("safetensors", "safetensors-index", "bin", "bin-index", "pt")
TORCH_FIX = (
    "install torch to read it (`pip install torch`), or convert the folder once where torch is "
    "installed: `python -m nd3d_jax.weights.convert SRC OUT`"
)

# What each loader reads, by the class names diffusers' `model_index.json` gives its components
# (a pipeline folder given where a model folder is expected resolves to that sub-folder).
CLASSES = {
    "unet": ("UNet2DConditionModel",),
    "vae": ("AutoencoderKL",),
    "adapter": ("T2IAdapter",),
    "clip": ("CLIPModel",),
    "resnet": ("ResNetModel", "ResNetForImageClassification"),
    "tokenizer": ("CLIPTokenizer", "CLIPTokenizerFast"),
    "shap_e_prior": ("PriorTransformer",),
    "shap_e_renderer": ("ShapERenderer",),
    "clip_text": ("CLIPTextModelWithProjection",),
    "clip_vision": ("CLIPVisionModel", "CLIPVisionModelWithProjection"),
}
PIPELINE_INDEX = "model_index.json"


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


def pipeline_components(folder: str) -> dict[str, str]:
    """{sub-folder: class name} of a diffusers pipeline folder's `model_index.json`."""
    path = os.path.join(folder, PIPELINE_INDEX)
    try:
        with open(path) as f:
            index = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise WeightImportError(f"{path}: not a readable pipeline index ({e})") from e
    if not isinstance(index, dict):
        raise WeightImportError(f"{path}: not a pipeline index (a JSON object)")
    return {
        name: entry[1]
        for name, entry in index.items()
        if not name.startswith("_") and isinstance(entry, list) and len(entry) == 2 and entry[1]
    }


def model_folder(path: str, kind: str) -> str:
    """The folder holding the `kind` model (a `CLASSES` key): `path` itself, or, for a diffusers
    pipeline folder (`model_index.json`, no config.json), its one sub-folder of that class."""
    if not os.path.isdir(path):
        raise WeightImportError(f"weights folder not found: {path!r}")
    has_index = os.path.isfile(os.path.join(path, PIPELINE_INDEX))
    if not has_index or os.path.isfile(os.path.join(path, "config.json")):
        return path
    components = pipeline_components(path)
    names = [n for n, cls in components.items() if cls in CLASSES[kind]]
    names = [n for n in names if os.path.isdir(os.path.join(path, n))]
    if len(names) == 1:
        return os.path.join(path, names[0])
    held = ", ".join(f"{n}/ ({c})" for n, c in sorted(components.items())) or "nothing"
    want = " or ".join(CLASSES[kind])
    if not names:
        raise WeightImportError(f"{path}: a pipeline folder without a {want} (it holds {held})")
    raise WeightImportError(
        f"{path}: a pipeline folder with {len(names)} {want} folders ({', '.join(names)}); "
        "name the sub-folder"
    )


def read_config(folder: str) -> dict:
    """`folder/config.json` as a dict, with errors that name the folder."""
    if not os.path.isdir(folder):
        raise WeightImportError(f"weights folder not found: {folder!r}")
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        hint = (
            " (a pipeline folder: give its model's sub-folder)"
            if os.path.isfile(os.path.join(folder, PIPELINE_INDEX))
            else " (expected a Hugging Face folder)"
        )
        raise WeightImportError(f"{folder}: no config.json{hint}")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise WeightImportError(f"{path}: not valid JSON ({e})") from e


def weight_files(folder: str) -> dict[str | None, tuple[str, str]]:
    """{variant (None: plain): (format, file name)} of the checkpoints in `folder`, one per
    variant (safetensors before .bin, single files before sharded sets)."""
    found: dict[str | None, list[tuple[str, str]]] = {}
    for name in sorted(os.listdir(folder)):
        m = _SINGLE.match(name) or _INDEX.match(name)
        if m is not None:
            fmt = m["fmt"] + ("-index" if name.endswith(".json") else "")
            found.setdefault(m["variant"], []).append((fmt, name))
        elif name.endswith((".pt", ".pth")):
            found.setdefault(None, []).append(("pt", name))
    return {v: min(c, key=lambda fc: _FORMAT_ORDER.index(fc[0])) for v, c in found.items()}


def read_weights(folder: str, variant: str | None = None) -> dict[str, np.ndarray]:
    """Every array of the folder's checkpoint as stored (float16 / bfloat16 stay so; `build_tree`
    casts): safetensors or a torch pickle, single or sharded, plain or the dtype `variant`
    (`None`: the plain files, else the only variant there is)."""
    if not os.path.isdir(folder):
        raise WeightImportError(f"weights folder not found: {folder!r}")
    files = weight_files(folder)
    variant = variant or None
    if not files:
        raise WeightImportError(
            f"{folder}: no weight files ({' or '.join(WEIGHT_FILES)}, a sharded index, a dtype "
            "variant such as diffusion_pytorch_model.fp16.safetensors, or pytorch_model.bin)"
        )
    named = ", ".join(sorted(v or "plain" for v in files))
    if variant is None and None not in files:
        if len(files) > 1:
            raise WeightImportError(
                f"{folder}: holds the weight variants {named} and no plain weights; choose one "
                "(variant=...; in a config, the folder's `variant` key)"
            )
        variant = next(iter(files))
    if variant not in files:
        raise WeightImportError(f"{folder}: no {variant!r} weight variant (it holds: {named})")
    fmt, name = files[variant]
    if not fmt.endswith("-index"):
        return read_file(os.path.join(folder, name))
    with open(os.path.join(folder, name)) as f:
        try:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as e:
            raise WeightImportError(f"{folder}/{name}: not a shard index ({e})") from e
    state = {}
    for shard in shards:
        path = os.path.join(folder, shard)
        if not os.path.isfile(path):
            raise WeightImportError(f"{folder}: shard {shard} named in {name} is missing")
        state.update(read_file(path))
    return state


def read_file(path: str) -> dict[str, np.ndarray]:
    """One weight file's arrays: safetensors, or a torch pickle (`torch.load(weights_only=True)`,
    which runs no code from the file) of a state dict."""
    if path.endswith(".safetensors"):
        try:
            return load_file(path)
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise WeightImportError(f"{path}: unreadable safetensors file ({e})") from e
    try:
        import torch
    except ImportError:
        raise WeightImportError(f"{path} is a PyTorch pickle: {TORCH_FIX}") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle / zip errors of a corrupt or non-tensor file
        raise WeightImportError(f"{path}: unreadable torch file ({e})") from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a training checkpoint around the state dict
    if not isinstance(state, dict):
        raise WeightImportError(f"{path}: holds a {type(state).__name__}, expected a state dict")
    out = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu()
            out[key] = (value.float() if value.dtype == torch.bfloat16 else value).numpy()
    return out


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
