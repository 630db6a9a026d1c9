"""Convert a Hugging Face folder once into an orbax checkpoint that loads without re-mapping.

    python -m nd3d_jax.weights.convert SRC_FOLDER OUT_FOLDER [--dtype=float32|bfloat16]
        [--variant=fp16]

OUT holds `params/` (orbax), the source `config.json`, the tokenizer files if SRC had them (so OUT
also serves as the tokenizer folder), and `nd3d_weights.json` naming the kind (layout in
`nd3d_jax.weights.orbax_io`). Every `load_*` accepts either folder. A Shap-E pipeline folder
(`model_index.json`) becomes the same layout with each network converted in its sub-folder; so
does any other diffusers pipeline folder (e.g. Stable Diffusion: `unet/`, `vae/` converted,
weightless folders such as `tokenizer/` and `scheduler/` copied, other networks left out). SRC
may hold its weights in any layout `nd3d_jax.weights.io.read_weights` reads (`.bin` needs torch).
An LPIPS folder (no config.json; the torchvision backbone .pth and lpips' alex.pth / vgg.pth,
see `nd3d_jax.weights.lpips`) becomes the layout with a written config.json naming the net.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import jax.numpy as jnp

from nd3d_jax.config_cli import ArgumentParser, fail
from nd3d_jax.weights.clip import load_clip
from nd3d_jax.weights.diffusers import load_t2i_adapter, load_unet, load_vae
from nd3d_jax.weights.io import (
    PIPELINE_INDEX,
    WeightImportError,
    pipeline_components,
    read_config,
    weight_files,
)
from nd3d_jax.weights.lpips import convert_lpips, is_lpips_folder
from nd3d_jax.weights.orbax_io import write
from nd3d_jax.weights.resnet import load_resnet
from nd3d_jax.weights.shap_e import PIPELINES, convert_shap_e

# kind (config `model_type` or diffusers `_class_name`) -> loader
LOADERS = {
    "clip": load_clip,
    "resnet": load_resnet,
    "UNet2DConditionModel": load_unet,
    "AutoencoderKL": load_vae,
    "T2IAdapter": load_t2i_adapter,
}


def kind_of(hf: dict) -> str | None:
    return hf.get("model_type") or hf.get("_class_name")


def convert(src: str, out: str, dtype=jnp.float32, variant: str | None = None) -> str:
    """Imports `src` (checked key by key) and writes the orbax checkpoint; returns the kind."""
    pipeline = os.path.isfile(os.path.join(src, PIPELINE_INDEX))
    if pipeline and not os.path.isfile(os.path.join(src, "config.json")):
        with open(os.path.join(src, PIPELINE_INDEX)) as f:
            if json.load(f).get("_class_name") in PIPELINES:
                return convert_shap_e(src, out, dtype)
        return convert_pipeline(src, out, dtype, variant)
    if is_lpips_folder(src):
        return convert_lpips(src, out, dtype)
    kind = kind_of(read_config(src))
    if kind not in LOADERS:
        raise WeightImportError(f"{src}: {kind!r} checkpoints are not supported: {sorted(LOADERS)}")
    _, params = LOADERS[kind](src, dtype=jnp.float32, variant=variant)
    write(params, src, out, kind, dtype)
    return kind


def convert_pipeline(src: str, out: str, dtype=jnp.float32, variant: str | None = None) -> str:
    """A diffusers pipeline folder: each network we load converted into `out/<component>/`,
    each folder without weights copied, `model_index.json` written last."""
    if os.path.exists(os.path.join(out, PIPELINE_INDEX)):
        raise FileExistsError(f"{out}/{PIPELINE_INDEX} exists; choose another OUT folder")
    done, skipped = [], []
    for name in sorted(pipeline_components(src)):
        folder = os.path.join(src, name)
        if not os.path.isdir(folder):
            continue
        if os.path.isfile(os.path.join(folder, "config.json")) and weight_files(folder):
            kind = kind_of(read_config(folder))
            if kind not in LOADERS:
                skipped.append(f"{name} ({kind})")
                continue
            _, params = LOADERS[kind](folder, dtype=jnp.float32, variant=variant)
            write(params, folder, os.path.join(out, name), kind, dtype)
            done.append(name)
        else:
            shutil.copytree(folder, os.path.join(out, name), dirs_exist_ok=True)
    if not done:
        raise WeightImportError(f"{src}: a pipeline folder without a network we load")
    shutil.copy(os.path.join(src, PIPELINE_INDEX), os.path.join(out, PIPELINE_INDEX))
    note = f"; not converted: {', '.join(skipped)}" if skipped else ""
    return f"pipeline ({', '.join(done)}{note})"


def main(argv=None) -> None:
    parser = ArgumentParser(prog="python -m nd3d_jax.weights.convert", description=__doc__)
    parser.add_argument(
        "src",
        help="Hugging Face folder (config.json + safetensors), Shap-E pipeline folder or LPIPS "
        "folder (torchvision backbone .pth + lpips alex.pth/vgg.pth)",
    )
    parser.add_argument("out", help="output folder")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--variant", default=None, help="SRC's weight variant, e.g. fp16")
    args = parser.parse_args(argv)
    t = time.perf_counter()
    try:
        kind = convert(args.src, args.out, jnp.dtype(args.dtype), args.variant)
    except (WeightImportError, FileExistsError) as e:
        fail(str(e))
    print(f"converted {kind} {args.src} -> {args.out} in {time.perf_counter() - t:.1f}s")


if __name__ == "__main__":
    main()
