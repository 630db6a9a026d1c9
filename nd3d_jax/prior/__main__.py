"""`python -m nd3d_jax.prior --weights=DIR (--image=IMG | --text="...") --out=DIR [...]`

The coarse 3D prior (P1) alone: samples Shap-E latents for an image (img2img pipeline folder,
e.g. openai/shap-e-img2img) or a text (text pipeline folder, e.g. openai/shap-e), extracts the
coloured coarse mesh and writes into OUT:

    coarse.glb    vertex colours (glTF: Y-up, linear COLOR_0)
    coarse.ply    the field's frame (Z-up), sRGB vertex colours
    preview.png   4 shaded views of each object (our rasterizer), one row per object
    summary.json  the inputs, seconds per stage, and per object its mesh stats

With --batch=N > 1, N objects from the same input with different noise (one key, one sampling
call of batch N) are written as coarse_0.glb, coarse_0.ply, ... Every check runs before the
weights load; OUT is created only when the outputs are written, each file atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from nd3d_jax import compile_cache
from nd3d_jax.config_check import Float, Int, Path, check_flags
from nd3d_jax.config_cli import ArgumentParser, fail
from nd3d_jax.errors import UserError
from nd3d_jax.prior.image import read_image
from nd3d_jax.prior.mesh import GRIDS, export_coarse
from nd3d_jax.prior.shap_e import DEFAULT_GUIDANCE, check_input, load_shap_e
from nd3d_jax.render.preview import render_preview
from nd3d_jax.weights.shap_e import pipeline_kind

PROG = "python -m nd3d_jax.prior"
PREVIEW_VIEWS = 4
# what each flag accepts (nd3d_jax.config_check), checked before the weights load
FLAG_SPECS = {
    "steps": Int(1),
    "resolution": Int(2),
    "batch": Int(1),
    "preview_size": Int(8),
    "guidance": Float(0),
    "seed": Int(0),
    "out": Path("out"),
}


def parse_args(argv: list[str] | None = None):
    parser = ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--weights", required=True, metavar="DIR", help="Shap-E pipeline folder (or its copy)"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", metavar="IMG", help="input image file (img2img pipeline)")
    source.add_argument("--text", help="input prompt (text pipeline)")
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="output folder (created when writing)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=64, help="Heun sampling steps")
    parser.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="classifier-free guidance scale (default: "
        + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_GUIDANCE.items())
        + ")",
    )
    parser.add_argument("--resolution", type=int, default=128, help="field grid points per axis")
    parser.add_argument("--batch", type=int, default=1, help="objects from the same input")
    parser.add_argument("--grid", choices=GRIDS, default="exact", help="see nd3d_jax.prior.mesh")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument(
        "--variant", default=None, help="weight variant, e.g. fp16 (default: plain, else the only)"
    )
    parser.add_argument("--preview_size", type=int, default=256, help="pixels per preview view")
    return parser.parse_args(argv)


def check_args(args) -> str:
    """Every check that needs no weights; returns the pipeline kind ("text" or "image")."""
    if args.text is not None and not args.text.strip():
        raise UserError("--text is empty; give a prompt such as --text='a red chair'")
    check_flags(FLAG_SPECS, vars(args))
    kind = pipeline_kind(args.weights)
    check_input(kind, args.weights, "text" if args.text is not None else "image")
    return kind


def atomic(path: str, write) -> str:
    """`write(tmp)` to a temporary name beside `path` (same suffix), then renames it."""
    folder, name = os.path.split(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=os.path.splitext(name)[1], dir=folder)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def mesh_stats(mesh) -> dict:
    return {
        "vertices": len(mesh.vertices),
        "faces": len(mesh.faces),
        "watertight": bool(mesh.is_watertight),
        "bounds": np.asarray(mesh.bounds).tolist(),
    }


class Stages:
    """Seconds per stage, one progress line as each ends."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._start = time.perf_counter()

    def done(self, name: str, note: str = "") -> None:
        now = time.perf_counter()
        self.seconds[name] = now - self._start
        self._start = now
        print(f"[prior] {name:<8} {self.seconds[name]:7.1f}s  {note}".rstrip(), flush=True)


def run(args) -> dict:
    """Runs the command (arguments already parsed) and returns the summary it writes."""
    kind = check_args(args)
    image = read_image(args.image) if kind == "image" else None
    guidance = DEFAULT_GUIDANCE[kind] if args.guidance is None else args.guidance
    stages = Stages()

    shap_e = load_shap_e(args.weights, jnp.dtype(args.dtype), variant=args.variant)
    stages.done("load", f"{args.weights} ({kind}-to-3D, {args.dtype})")

    # the condition repeated N times: one key, N noises in one sampling call
    condition = {"text": [args.text] * args.batch} if kind == "text" else {}
    if kind == "image":
        condition["image"] = np.stack([image] * args.batch)
    latents = shap_e.sample_latents(
        jax.random.key(args.seed), num_steps=args.steps, guidance=guidance, **condition
    )
    latents = np.asarray(jax.block_until_ready(latents))
    stages.done("sampling", f"{args.batch} x {args.steps} steps, guidance {guidance:g}")

    meshes = shap_e.coarse_mesh(latents, args.resolution, args.grid)
    faces = ", ".join(str(len(m.faces)) for m in meshes)
    stages.done("mesh", f"{args.resolution}^3 grid ({args.grid}), faces: {faces}")

    os.makedirs(args.out, exist_ok=True)
    names = ["coarse"] if args.batch == 1 else [f"coarse_{i}" for i in range(args.batch)]
    objects = []
    for name, mesh in zip(names, meshes, strict=True):
        files = {}
        for suffix in ("glb", "ply"):
            path = os.path.join(args.out, f"{name}.{suffix}")
            files[suffix] = atomic(path, lambda tmp, m=mesh: export_coarse(m, tmp))
        objects.append({**files, **mesh_stats(mesh)})
    stages.done("export", f"{len(objects) * 2} mesh files")

    rows = [render_preview(m, args.preview_size, PREVIEW_VIEWS, "shaded", up="z") for m in meshes]
    preview = np.concatenate(rows, axis=0)
    preview_path = os.path.join(args.out, "preview.png")
    atomic(preview_path, lambda tmp: Image.fromarray(preview).save(tmp, format="PNG"))
    stages.done("preview", f"{preview.shape[1]}x{preview.shape[0]}, one row per object")

    summary = {
        "inputs": {
            "weights": os.path.abspath(args.weights),
            "kind": kind,
            "text": args.text,
            "image": os.path.abspath(args.image) if args.image else None,
            "seed": args.seed,
            "steps": args.steps,
            "guidance": guidance,
            "resolution": args.resolution,
            "grid": args.grid,
            "dtype": args.dtype,
            "batch": args.batch,
        },
        "seconds": stages.seconds,
        "objects": objects,
        "preview": preview_path,
        "devices": f"{jax.device_count()} x {jax.devices()[0].platform}",
    }
    summary_path = os.path.join(args.out, "summary.json")
    atomic(summary_path, lambda tmp: _write_json(tmp, summary))
    for o in objects:
        print(f"wrote {o['glb']}, {o['ply']}")
    print(f"wrote {preview_path}, {summary_path}")
    return summary


def _write_json(path: str, data: dict) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    try:
        compile_cache.setup()
        return run(args)
    except UserError as e:
        fail(str(e))


if __name__ == "__main__":
    main()
