"""Shap-E pipeline folders (`openai/shap-e`, `openai/shap-e-img2img` as `save_pretrained` writes
them) -> our Linen modules and parameter trees.

    model_index.json          ShapEPipeline (text) or ShapEImg2ImgPipeline (image)
    prior/                    PriorTransformer          -> models.shap_e_prior.PriorTransformer
    shap_e_renderer/          ShapERenderer             -> models.shap_e_renderer.ShapERenderer
    text_encoder/ | image_encoder/   CLIPTextModelWithProjection | CLIPVisionModel
    tokenizer/ | image_processor/, scheduler/            read by nd3d_jax.prior

Deliberately ignored keys: the prior's `clip_mean`/`clip_std` (unCLIP's latent scaling, unused
by Shap-E), the renderer's projected `mlp.{0-3}.weight` (overwritten by the latent projection at
every decode), and its rendering buffers (`void`, `volume`, `mesh_decoder` tables). Every other
key must map, with its shape, or the error lists all that do not.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from typing import NamedTuple

import jax.numpy as jnp

from nd3d_jax.models.clip import CLIPConfig
from nd3d_jax.models.shap_e_prior import (
    PriorConfig,
    PriorTransformer,
    ShapEImageEncoder,
    ShapETextEncoder,
)
from nd3d_jax.models.shap_e_renderer import RendererConfig, ShapERenderer, sanitize
from nd3d_jax.weights.clip import clip_rename
from nd3d_jax.weights.io import (
    Target,
    WeightImportError,
    build_tree,
    expected_shapes,
    linear_kernel,
    model_folder,
    read_config,
    read_weights,
)
from nd3d_jax.weights.orbax_io import is_converted, restore, to_arrays

PIPELINES = {"ShapEPipeline": "text", "ShapEImg2ImgPipeline": "image"}
ENCODER_FOLDER = {"text": "text_encoder", "image": "image_encoder"}
RENDERER_FOLDERS = ("shap_e_renderer", "renderer")

_BLOCK = re.compile(r"^transformer_blocks\.(\d+)\.(.+)\.(weight|bias)$")
_BLOCK_MODULES = {
    "norm1": "norm1",
    "norm3": "norm3",
    "attn1.to_q": "to_q",
    "attn1.to_k": "to_k",
    "attn1.to_v": "to_v",
    "attn1.to_out.0": "to_out",
    "ff.net.0.proj": "ff_proj",
    "ff.net.2": "ff_out",
}
_TOP = {
    "time_embedding.linear_1": "time_linear_1",
    "time_embedding.linear_2": "time_linear_2",
    "proj_in": "proj_in",
    "embedding_proj": "embedding_proj",
    "proj_to_clip_embeddings": "proj_to_clip_embeddings",
    "embedding_proj_norm": "embedding_proj_norm",
    "norm_in": "norm_in",
    "norm_out": "norm_out",
}


def _leaf(module: str, leaf: str, path: tuple[str, ...]) -> Target:
    norm = "norm" in module
    if leaf == "weight":
        return Target((*path, "scale")) if norm else Target((*path, "kernel"), linear_kernel)
    return Target((*path, "bias"))


def prior_rename(key: str) -> Target | None:
    if key in ("clip_mean", "clip_std"):
        return None
    if key == "positional_embedding":
        return Target(("positional_embedding",))
    m = _BLOCK.match(key)
    if m and m.group(2) in _BLOCK_MODULES:
        name = _BLOCK_MODULES[m.group(2)]
        return _leaf(name, m.group(3), (f"blocks_{m.group(1)}", name))
    module, _, leaf = key.rpartition(".")
    if module in _TOP:
        return _leaf(module, leaf, (_TOP[module],))
    return Target(("unexpected", key))  # reported by build_tree


def renderer_rename(config: RendererConfig):
    projected = {f"mlp.mlp.{i}.weight" for i in config.projected}
    shapes = dict(zip(map(sanitize, config.param_names), config.param_shapes, strict=True))

    def rename(key: str) -> Target | None:
        if key.split(".")[0] in ("void", "volume", "mesh_decoder") or key in projected:
            return None
        parts = key.split(".")
        if parts[:2] == ["params_proj", "projections"] and parts[2] in shapes:
            name, rest = parts[2], ".".join(parts[3:])
            shape = tuple(shapes[name])
            if rest == "proj.weight":
                return Target(("params_proj", name, "kernel"), lambda a: a.reshape(*shape, -1))
            if rest == "proj.bias":
                return Target(("params_proj", name, "bias"), lambda a: a.reshape(shape))
            if rest in ("norm.weight", "norm.bias"):
                leaf = "scale" if rest.endswith("weight") else "bias"
                return Target(("params_proj", name, "norm", leaf))
        if len(parts) == 4 and parts[:2] == ["mlp", "mlp"] and parts[2].isdigit():
            kind = "kernel" if parts[3] == "weight" else "bias"
            fn = linear_kernel if kind == "kernel" else (lambda a: a)
            return Target(("mlp", f"mlp_{parts[2]}_{kind}"), fn)
        return Target(("unexpected", key))

    return rename


# build(hf_config, dtype) -> (module, dummy init args), as orbax_io.restore expects
def build_prior(hf: dict, dtype=jnp.float32, remat: bool = False):
    c = PriorConfig.from_hf(hf, remat=remat)
    cond_dim = c.embedding_proj_dim or c.embedding_dim
    dummy = (
        jnp.zeros((1, c.num_embeddings, c.embedding_dim)),
        jnp.zeros((1,)),
        jnp.zeros((1, 2, cond_dim)),
    )
    return PriorTransformer(c, dtype), dummy


def build_renderer(hf: dict, dtype=jnp.float32):
    c = RendererConfig.from_hf(hf)
    dummy = (jnp.zeros((1, c.num_tokens, c.d_latent)), jnp.zeros((1, 2, 3)))
    return ShapERenderer(c, dtype), dummy


def _clip_sub(hf: dict, tower: str):
    return CLIPConfig.from_hf({f"{tower}_config": hf, "projection_dim": hf.get("projection_dim")})


def build_text_encoder(hf: dict, dtype=jnp.float32):
    c = _clip_sub(hf, "text")
    module = ShapETextEncoder(c.text, hf.get("projection_dim", 512), dtype)
    return module, (jnp.zeros((1, 4), jnp.int32),)


def build_image_encoder(hf: dict, dtype=jnp.float32):
    v = _clip_sub(hf, "vision").vision
    return ShapEImageEncoder(v, dtype), (jnp.zeros((1, v.image_size, v.image_size, 3)),)


# the model_folder kind of each component (a pipeline folder given for one resolves to it)
_FOLDER_KINDS = {"shap_e_prior": "shap_e_prior", "shap_e_renderer": "shap_e_renderer",
                 "clip_text_model": "clip_text", "clip_vision_model": "clip_vision"}  # fmt: skip


def _load(path, kind, build, rename, dtype, host, check=None, variant=None):
    """`rename(module) -> key renamer` (the renderer's depends on its config)."""
    path = model_folder(path, _FOLDER_KINDS[kind])
    if is_converted(path):
        return restore(path, kind, build, dtype, host)
    hf = read_config(path)
    if check is not None:
        check(hf)
    try:
        module, dummy = build(hf, dtype)
    except ValueError as e:
        raise WeightImportError(f"{path}: {e}") from e
    expected = expected_shapes(module, *dummy)
    params = build_tree(read_weights(path, variant), rename(module), expected, source=path)
    return module, to_arrays(params, host)


def load_prior(path: str, dtype=jnp.float32, host: bool = False, variant=None):
    return _load(
        path, "shap_e_prior", build_prior, lambda m: prior_rename, dtype, host,
        _named(path, "_class_name", "PriorTransformer"), variant,
    )  # fmt: skip


def load_renderer(path: str, dtype=jnp.float32, host: bool = False, variant=None):
    return _load(
        path, "shap_e_renderer", build_renderer, lambda m: renderer_rename(m.config), dtype, host,
        _named(path, "_class_name", "ShapERenderer"), variant,
    )  # fmt: skip


def load_text_encoder(path: str, dtype=jnp.float32, host: bool = False, variant=None):
    return _load(
        path, "clip_text_model", build_text_encoder, lambda m: clip_rename, dtype, host,
        _named(path, "model_type", "clip_text_model"), variant,
    )  # fmt: skip


def vision_rename(key: str) -> Target | None:
    """CLIP vision keys with or without the `vision_model.` prefix (transformers 5 saves a
    `CLIPVisionModel` without it; the published folders have it)."""
    return clip_rename(key if key.startswith("vision_model.") else f"vision_model.{key}")


def load_image_encoder(path: str, dtype=jnp.float32, host: bool = False, variant=None):
    return _load(
        path, "clip_vision_model", build_image_encoder, lambda m: vision_rename, dtype, host,
        _named(path, "model_type", "clip_vision_model"), variant,
    )  # fmt: skip


def _named(path: str, key: str, value: str):
    def check(hf: dict) -> None:
        if hf.get(key) != value:
            raise WeightImportError(f"{path}: holds {key}={hf.get(key)!r}, expected {value!r}")

    return check


class ShapEWeights(NamedTuple):
    """Modules and parameter trees of one Shap-E pipeline folder."""

    kind: str  # "text" or "image"
    folder: str
    prior: tuple  # (PriorTransformer, params)
    renderer: tuple  # (ShapERenderer, params)
    encoder: tuple  # (ShapETextEncoder | ShapEImageEncoder, params)


def pipeline_kind(path: str) -> str:
    """ "text" or "image" from `model_index.json`; a one-line error for anything else."""
    if not os.path.isdir(path):
        raise WeightImportError(f"Shap-E folder not found: {path!r}")
    index = os.path.join(path, "model_index.json")
    if not os.path.isfile(index):
        raise WeightImportError(
            f"{path}: no model_index.json (expected a diffusers ShapEPipeline or "
            "ShapEImg2ImgPipeline folder, e.g. openai/shap-e)"
        )
    try:
        with open(index) as f:
            name = json.load(f).get("_class_name")
    except (json.JSONDecodeError, AttributeError) as e:
        raise WeightImportError(f"{index}: not a valid pipeline index ({e})") from e
    if name not in PIPELINES:
        raise WeightImportError(
            f"{path}: holds a {name!r}, expected ShapEPipeline or ShapEImg2ImgPipeline"
        )
    return PIPELINES[name]


def component(path: str, *names: str) -> str:
    for name in names:
        if os.path.isdir(os.path.join(path, name)):
            return os.path.join(path, name)
    raise WeightImportError(f"{path}: no {' or '.join(n + '/' for n in names)} folder")


def load_shap_e(
    path: str,
    dtype=jnp.float32,
    host: bool = False,
    remat: bool = False,
    variant: str | None = None,
) -> ShapEWeights:
    """Every network of a Shap-E pipeline folder (or of its converted copy). `dtype` is the
    compute dtype of the prior and encoder (parameters stay float32); `variant` picks each
    component's weight variant (e.g. "fp16"; default: plain, else the only one)."""
    kind = pipeline_kind(path)
    prior = load_prior(component(path, "prior"), dtype, host, variant)
    if remat:
        prior = (prior[0].clone(config=_with_remat(prior[0].config)), prior[1])
    renderer = load_renderer(component(path, *RENDERER_FOLDERS), jnp.float32, host, variant)
    loader = load_text_encoder if kind == "text" else load_image_encoder
    encoder = loader(component(path, ENCODER_FOLDER[kind]), dtype, host, variant)
    return ShapEWeights(kind, path, prior, renderer, encoder)


def _with_remat(c: PriorConfig) -> PriorConfig:
    return dataclasses.replace(c, remat=True)


COMPONENT_LOADERS = {
    "prior": ("shap_e_prior", load_prior),
    "shap_e_renderer": ("shap_e_renderer", load_renderer),
    "renderer": ("shap_e_renderer", load_renderer),
    "text_encoder": ("clip_text_model", load_text_encoder),
    "image_encoder": ("clip_vision_model", load_image_encoder),
}
COPIED = ("tokenizer", "image_processor", "scheduler")


def convert_shap_e(src: str, out: str, dtype=jnp.float32) -> str:
    """Writes every network of the pipeline folder `src` as an orbax checkpoint under
    `out/<component>/` (checked key by key on the way), copies the tokenizer, image processor
    and scheduler folders, and `model_index.json` last (a crashed conversion never loads)."""
    from nd3d_jax.weights.orbax_io import write

    kind = pipeline_kind(src)
    if os.path.exists(os.path.join(out, "model_index.json")):
        raise FileExistsError(f"{out}/model_index.json exists; choose another OUT folder")
    for name in sorted(os.listdir(src)):
        folder = os.path.join(src, name)
        if name in COMPONENT_LOADERS and os.path.isdir(folder):
            tag, loader = COMPONENT_LOADERS[name]
            _, params = loader(folder, jnp.float32, host=True)
            write(params, folder, os.path.join(out, name), tag, dtype)
        elif name in COPIED and os.path.isdir(folder):
            shutil.copytree(folder, os.path.join(out, name), dirs_exist_ok=True)
    shutil.copy(os.path.join(src, "model_index.json"), os.path.join(out, "model_index.json"))
    return f"shap_e ({kind})"
