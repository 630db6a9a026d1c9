"""Convert a Hugging Face folder once into an orbax checkpoint that loads without re-mapping.

    python -m nd3d_jax.weights.convert SRC_FOLDER OUT_FOLDER [--dtype=float32|bfloat16]

OUT holds `params/` (orbax), the source `config.json`, the tokenizer files if SRC had them (so OUT
also serves as the tokenizer folder), and `nd3d_weights.json` naming the kind. Every `load_*`
accepts either folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import jax
import jax.numpy as jnp

from nd3d_jax.weights.io import WeightImportError, expected_shapes, read_config

MARKER = "nd3d_weights.json"
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
)


def _kinds():
    """kind (config `model_type` or diffusers `_class_name`) -> (build(hf, dtype), loader)."""
    from nd3d_jax.models.clip import CLIPConfig, CLIPModel
    from nd3d_jax.models.resnet import ResNet, ResNetConfig
    from nd3d_jax.weights import clip, diffusers, resnet

    def clip_module(hf, dtype):
        m = CLIPModel(CLIPConfig.from_hf(hf), dtype=dtype)
        return m, clip.clip_dummy_inputs(m.config)

    def resnet_module(hf, dtype):
        c = ResNetConfig.from_hf(hf)
        return ResNet(c, dtype=dtype), (jnp.zeros((1, 64, 64, c.num_channels)),)

    return {
        "clip": (clip_module, clip.load_clip),
        "resnet": (resnet_module, resnet.load_resnet),
        "UNet2DConditionModel": (diffusers.build_unet, diffusers.load_unet),
        "AutoencoderKL": (diffusers.build_vae, diffusers.load_vae),
        "T2IAdapter": (diffusers.build_t2i_adapter, diffusers.load_t2i_adapter),
    }


def kind_of(hf: dict) -> str | None:
    return hf.get("model_type") or hf.get("_class_name")


def is_converted(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MARKER))


def convert(src: str, out: str, dtype=jnp.float32) -> str:
    """Imports `src` (checked key by key) and writes the orbax checkpoint; returns the kind."""
    import orbax.checkpoint as ocp

    hf = read_config(src)
    kind = kind_of(hf)
    kinds = _kinds()
    if kind not in kinds:
        raise WeightImportError(f"{src}: {kind!r} checkpoints are not supported: {sorted(kinds)}")
    _, params = kinds[kind][1](src, dtype=jnp.float32)
    params = jax.tree.map(lambda a: a.astype(dtype), params)
    out = os.path.abspath(out)
    if os.path.exists(os.path.join(out, "params")):
        raise FileExistsError(f"{out}/params exists; choose another OUT folder")
    os.makedirs(out, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(out, "params"), params)
    shutil.copy(os.path.join(src, "config.json"), os.path.join(out, "config.json"))
    for name in _TOKENIZER_FILES:
        if os.path.isfile(os.path.join(src, name)):
            shutil.copy(os.path.join(src, name), os.path.join(out, name))
    with open(os.path.join(out, MARKER), "w") as f:
        json.dump({"kind": kind, "source": os.path.abspath(src), "dtype": jnp.dtype(dtype).name}, f)
    return kind


def restore(path: str, kind: str, dtype=jnp.float32):
    """`(module, params)` from a converted folder; the module comes from its `config.json`."""
    import orbax.checkpoint as ocp

    with open(os.path.join(path, MARKER)) as f:
        meta = json.load(f)
    if meta["kind"] != kind:
        raise WeightImportError(f"{path}: holds a converted {meta['kind']!r}, expected {kind!r}")
    module, dummy = _kinds()[kind][0](read_config(path), dtype)
    abstract = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, jnp.dtype(meta["dtype"])),
        expected_shapes(module, *dummy),
    )
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(os.path.join(os.path.abspath(path), "params"), abstract)
    return module, jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nd3d_jax.weights.convert", description=__doc__)
    parser.add_argument("src", help="Hugging Face folder (config.json + safetensors)")
    parser.add_argument("out", help="output folder")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args(argv)
    t = time.perf_counter()
    try:
        kind = convert(args.src, args.out, jnp.dtype(args.dtype))
    except (WeightImportError, FileExistsError) as e:
        sys.exit(f"error: {e}")
    print(f"converted {kind} {args.src} -> {args.out} in {time.perf_counter() - t:.1f}s")


if __name__ == "__main__":
    main()
