"""`python -m nd3d_jax.benchmark unwrap` (also in `generate`): UV unwrapping by ours
(`texture.unwrapper="charts"`, texture/charts.py) beside xatlas on the same meshes, at the paper
config's 1024 texels and padding 4, no decimation.

Seconds are medians of wall time over the repeats (xatlas: at most 3, after no warm-up); the
notes give the process CPU seconds of the same calls (xatlas runs threads) and both atlases'
measures from texture/atlas_quality.py: texel utilisation, area and angle distortion, texels
claimed twice (overlap + fold) and faces of zero or flipped UV area.

Meshes (built once, not timed), all marching tets like the refinement's output:
- refined_sphere_R64: a bumpy sphere (radius 0.42, bumps 0.04) on the refinement's 64^3 grid
  over [-1, 1]^3: ~20k faces, smooth like a refined MLP field;
- chair_R64, chair_R96: the synthetic chair of data_pipelines.synthetic (the demo's data) in the
  pipeline frame, its signed distance (libigl, as a coarse mesh file's field) on the 64^3 and
  96^3 grids, offset by a fraction of a cell (a fitted field is never exactly 0 on grid
  vertices): ~10k and ~23k faces, flat sides, thin legs;
- many_parts: 200 boxes, spheres and cylinders at random places and angles (~15k faces).
`--quick`: the chair at 32^3 and 30 parts.
"""

from __future__ import annotations

import time

import numpy as np
import trimesh

from nd3d_jax.benchmark import BenchOptions, Record, measure
from nd3d_jax.texture import TextureSettings, unwrap
from nd3d_jax.texture.atlas_quality import atlas_quality

SIZE, PADDING = 1024, 4


def _chair(resolution: int) -> trimesh.Trimesh:
    from data_pipelines.synthetic.shapes import make_object
    from nd3d_jax.geometry.extract import evaluate_on_grid, extract_mesh
    from nd3d_jax.geometry.tet_grid import build_tet_grid
    from nd3d_jax.pipeline.coarse import mesh_field, normalised

    mesh = make_object("chair", 0)
    mesh.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))
    field = mesh_field(normalised(mesh, "chair"))
    grid = build_tet_grid(resolution, 1.0)
    shift = np.array([0.37, 0.21, 0.13]) * grid.cell_size
    sdf = evaluate_on_grid(lambda p: field(p + shift)[0], np.asarray(grid.vertices))
    out = extract_mesh(grid, sdf)
    return trimesh.Trimesh(np.asarray(out.vertices) + shift, out.faces, process=False)


def _sphere() -> trimesh.Trimesh:
    from nd3d_jax.geometry import analytic
    from nd3d_jax.geometry.extract import mesh_from_sdf

    return mesh_from_sdf(analytic.bumpy(analytic.sphere(0.42), amplitude=0.04), 64)


def _parts(count: int) -> trimesh.Trimesh:
    rng = np.random.default_rng(0)
    parts = []
    for i in range(count):
        if i % 3 == 0:
            part = trimesh.creation.box(extents=rng.uniform(0.05, 0.2, 3))
        elif i % 3 == 1:
            part = trimesh.creation.icosphere(subdivisions=2, radius=rng.uniform(0.03, 0.1))
        else:
            part = trimesh.creation.cylinder(rng.uniform(0.02, 0.06), rng.uniform(0.05, 0.3))
        part.apply_transform(trimesh.transformations.random_rotation_matrix(rng.random(3)))
        part.apply_translation(rng.uniform(-1, 1, 3))
        parts.append(part)
    return trimesh.util.concatenate(parts)


def _timed(fn, warmup: int, repeats: int):
    """(median wall seconds, median process CPU seconds, last result)."""
    out = [None]

    def call():
        out[0] = fn()

    cpu = []

    def timed_call():
        t = time.process_time()
        call()
        cpu.append(time.process_time() - t)

    wall = measure(timed_call, warmup=warmup, repeats=repeats)
    return wall, float(np.median(cpu[warmup:])), out[0]


def _notes(q) -> str:
    return (
        f"util {q.utilisation:.2f}, area {q.area_distortion:.3f}, angle "
        f"{q.angle_distortion:.3f}, charts {q.charts}, twice {q.overlap_texels + q.fold_texels}"
        f", bad faces {q.degenerate_faces + q.flipped_faces}"
    )


def suite(opts: BenchOptions) -> list[Record]:
    if opts.quick:
        meshes = {"chair_R32": _chair(32), "many_parts": _parts(30)}
    else:
        meshes = {"refined_sphere_R64": _sphere(), "chair_R64": _chair(64),
                  "chair_R96": _chair(96), "many_parts": _parts(200)}  # fmt: skip
    records = []
    for name, mesh in meshes.items():
        results = {}
        for unwrapper in ("charts", "xatlas"):
            settings = TextureSettings(size=SIZE, padding=PADDING, max_faces=0, unwrapper=unwrapper)
            warmup, repeats = (opts.warmup, opts.repeats) if unwrapper == "charts" else (0, 1)
            if unwrapper == "xatlas" and not opts.quick:
                repeats = min(opts.repeats, 3)
            wall, cpu, (atlas, _) = _timed(lambda s=settings, m=mesh: unwrap(m, s), warmup, repeats)
            q = atlas_quality(atlas.vertices, atlas.faces, atlas.uvs, SIZE)
            results[unwrapper] = (wall, cpu, q, repeats)
        (ours, ours_cpu, q_ours, reps), (ref, ref_cpu, q_ref, _) = results.values()
        records.append(
            Record(
                f"unwrap_{name}",
                "cpu: host, 1 thread (ours)",
                f"{len(mesh.faces)} faces, {SIZE} texels",
                ours,
                reps,
                len(mesh.faces) / ours,
                "faces/s",
                "xatlas 0.0.11",
                ref,
                notes=f"cpu s ours {ours_cpu:.3f} / xatlas {ref_cpu:.3f}; ours: {_notes(q_ours)}; "
                f"xatlas: {_notes(q_ref)}",
            )
        )
    return records
