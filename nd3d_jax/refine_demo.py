"""`python -m nd3d_jax.refine_demo --config=configs/refine_demo.py[:tiny] --workdir=DIR`

The geometry refinement stage (P2) on an analytic coarse field: builds the noisy coarse mesh,
refines it with the SDF MLP, the deformable tet grid and marching tetrahedra, and writes
`coarse.glb`, `refined.glb`, `refined.obj`, `summary.json` and `preview.png` to the workdir
(with `config.json` and `run.json`). The refinement itself is `nd3d_jax.geometry.refine`.
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import ml_collections
import numpy as np
from PIL import Image

from nd3d_jax import cli, sharding
from nd3d_jax.errors import UserError
from nd3d_jax.geometry import analytic
from nd3d_jax.geometry.extract import mesh_from_sdf
from nd3d_jax.geometry.mesh_ops import export_mesh
from nd3d_jax.geometry.refine import RefineSettings, refine_mesh
from nd3d_jax.metrics.chamfer import mesh_chamfer
from nd3d_jax.render.preview import render_preview


def analytic_shape(shape: ml_collections.ConfigDict):
    """(true SDF, analytic area, analytic volume) of the configured shape."""
    if shape.kind == "sphere":
        return analytic.sphere(shape.radius), *analytic.sphere_area_volume(shape.radius)
    if shape.kind == "torus":
        sdf = analytic.torus(shape.major, shape.minor)
        return sdf, *analytic.torus_area_volume(shape.major, shape.minor)
    if shape.kind == "box":
        sdf = analytic.box(shape.half_extents)
        return sdf, *analytic.box_area_volume(shape.half_extents)
    raise UserError(f"unknown shape {shape.kind!r} (--config.shape.kind): use sphere, torus or box")


def _log(msg: str) -> None:
    print(f"[refine {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs the demo and returns the summary it writes to `workdir/summary.json`."""
    os.makedirs(workdir, exist_ok=True)
    settings = RefineSettings(**config.refine)
    true_sdf, area, volume = analytic_shape(config.shape)
    noisy_sdf = analytic.bumpy(
        true_sdf, config.shape.noise, config.shape.noise_frequency, seed=config.seed
    )
    field = analytic.analytic_field(noisy_sdf, seed=config.seed)

    _log(f"devices: {jax.device_count()} x {jax.devices()[0].platform}")
    _log(f"coarse mesh: noisy {config.shape.kind}, tet grid {config.coarse_resolution}^3")
    coarse = mesh_from_sdf(noisy_sdf, config.coarse_resolution, settings.bound)
    mesh = sharding.make_mesh()  # the trainer's (data, fsdp) mesh; points over both axes
    result = refine_mesh(coarse, field, settings, mesh=mesh, log=_log)
    refined = result.mesh

    _log("evaluating against the true shape")
    truth = mesh_from_sdf(true_sdf, max(128, settings.resolution), settings.bound)
    n = config.eval_samples
    summary = {
        "shape": config.shape.kind,
        "coarse": {"faces": len(coarse.faces), "chamfer_to_true": mesh_chamfer(coarse, truth, n)},
        "refined": {
            "faces": len(refined.faces),
            "vertices": len(refined.vertices),
            "watertight": bool(refined.is_watertight),
            "area": float(refined.area),
            "volume": float(refined.volume),
            "chamfer_to_true": mesh_chamfer(refined, truth, n),
        },
        "true": {"area": area, "volume": volume},
        "loss": {"first": float(result.losses[0]), "last": float(result.losses[-1])},
        "losses": [float(x) for x in result.losses],
        "timings_s": result.timings,
        "settings": config.refine.to_dict(),
    }
    for name, m in (("coarse.glb", coarse), ("refined.glb", refined), ("refined.obj", refined)):
        export_mesh(m, os.path.join(workdir, name))
    # Normal-map views: coarse (left) beside refined (right), 2x2 views each.
    views = [render_preview(m, config.preview_size, 4, "normal", up="z") for m in (coarse, refined)]
    Image.fromarray(np.concatenate(views, axis=1)).save(os.path.join(workdir, "preview.png"))
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    _print_summary(summary, workdir)
    return summary


def _print_summary(s: dict, workdir: str) -> None:
    r, c = s["refined"], s["coarse"]
    rows = [
        ("loss (eq 6/7)", f"{s['loss']['first']:.5f} -> {s['loss']['last']:.5f}"),
        ("faces", f"coarse {c['faces']}, refined {r['faces']} (watertight: {r['watertight']})"),
        (
            "Chamfer to true",
            f"coarse {c['chamfer_to_true']:.5f}, refined {r['chamfer_to_true']:.5f}",
        ),
        ("area", f"{r['area']:.4f} (true {s['true']['area']:.4f})"),
        ("volume", f"{r['volume']:.4f} (true {s['true']['volume']:.4f})"),
        ("time", ", ".join(f"{k[:-2]} {v:.1f}s" for k, v in s["timings_s"].items())),
        ("outputs", f"{workdir}/{{coarse.glb, refined.glb, refined.obj, summary.json}}"),
        ("preview", f"{workdir}/preview.png (normal maps: coarse left, refined right)"),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))


def main(config: ml_collections.ConfigDict, workdir: str) -> None:
    run(config, workdir)


CLI = dict(command="refine_demo")  # cli.run options

if __name__ == "__main__":
    cli.run(main, **CLI)
