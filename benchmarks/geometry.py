"""`python -m nd3d_jax.benchmark geometry`: marching tetrahedra and the 50-step refinement.

- `marching_tets_R{64,128}`: our jitted extraction on a torus SDF already on the device, in
  tets/s, beside `skimage.measure.marching_cubes` on the same SDF grid in the same run.
- `refine_fit_50_steps`: the compiled 50-step AdamW fit of the paper-size SDF MLP on 2048 key
  points (+ jittered copies and far-field points), in steps/s.
- `refine_grid_query_R64`: SDF + displacement of the MLP at every tet-grid vertex, points/s.
"""

from __future__ import annotations

import jax
import numpy as np

from nd3d_jax.benchmark import BenchOptions, Record, device_name, measure
from nd3d_jax.geometry import analytic
from nd3d_jax.geometry.extract import evaluate_on_grid, extract_jit
from nd3d_jax.geometry.marching_tets import default_face_budget
from nd3d_jax.geometry.refine import (
    RefineSettings,
    init_sdf_mlp,
    make_fit_fn,
    make_query_fn,
    refinement_points,
)
from nd3d_jax.geometry.tet_grid import build_tet_grid


def _marching_tets(resolution: int, opts: BenchOptions) -> Record:
    from skimage.measure import marching_cubes

    grid = build_tet_grid(resolution)
    sdf = evaluate_on_grid(analytic.torus(0.55, 0.27), grid.vertices)
    budget = default_face_budget(resolution)
    sdf_dev = jax.device_put(sdf)
    fn = extract_jit.lower(grid, sdf_dev, max_faces=budget, max_vertices=budget).compile()
    if bool(fn(sdf_dev).overflow):
        raise RuntimeError(f"marching tets at R={resolution} overflowed its budget {budget}")
    median = measure(lambda: fn(sdf_dev), warmup=opts.warmup, repeats=opts.repeats)

    n = resolution + 1
    volume = sdf.reshape(n, n, n)
    spacing = (grid.cell_size,) * 3
    ref = measure(
        lambda: marching_cubes(volume, 0.0, spacing=spacing), warmup=1, repeats=opts.repeats
    )
    return Record(
        name=f"marching_tets_R{resolution}",
        device=device_name(),
        shape=f"{grid.num_tets} tets, {grid.num_vertices} vertices",
        median_s=median,
        repeats=opts.repeats,
        throughput=grid.num_tets / median,
        throughput_unit="tets/s",
        reference="skimage.measure.marching_cubes (CPU, same grid)",
        reference_median_s=ref,
    )


def _refinement(opts: BenchOptions) -> list[Record]:
    settings = RefineSettings()
    if opts.quick:
        settings = RefineSettings(
            hidden_dim=64, out_hidden_dim=32, num_key_points=256, num_uniform_points=256,
            resolution=16,
        )  # fmt: skip
    field = analytic.analytic_field(analytic.bumpy(analytic.sphere(0.6), 0.04))
    coarse = analytic.sphere_mesh(0.6, 3)
    key_points, v_in, sdf_target, mask = refinement_points(coarse, field, settings)
    # On the device once, so the timed calls measure the fit, not a host-to-device copy.
    v_in, sdf_target, mask = jax.device_put((v_in, sdf_target, mask))
    module, params = init_sdf_mlp(settings, jax.random.key(0), key_points)
    fit = jax.jit(make_fit_fn(module, settings)).lower(params, v_in, sdf_target, mask).compile()
    fit_s = measure(
        lambda: fit(params, v_in, sdf_target, mask), warmup=opts.warmup, repeats=opts.repeats
    )
    mlp = f"SDF MLP {settings.hidden_dim}/{settings.out_hidden_dim}"
    records = [
        Record(
            name=f"refine_fit_{settings.steps}_steps",
            device=device_name(),
            shape=f"{mlp}, {int(mask.sum())} points",
            median_s=fit_s,
            repeats=opts.repeats,
            throughput=settings.steps / fit_s,
            throughput_unit="steps/s",
        )
    ]
    grid = build_tet_grid(settings.resolution)
    _, feats = field(grid.vertices)
    query = jax.jit(make_query_fn(module, settings, grid.cell_size))
    verts, feats = jax.device_put((grid.vertices, np.asarray(feats)))
    query_s = measure(lambda: query(params, verts, feats), warmup=1, repeats=opts.repeats)
    records.append(
        Record(
            name=f"refine_grid_query_R{settings.resolution}",
            device=device_name(),
            shape=f"{mlp}, {grid.num_vertices} points",
            median_s=query_s,
            repeats=opts.repeats,
            throughput=grid.num_vertices / query_s,
            throughput_unit="points/s",
        )
    )
    return records


def suite(opts: BenchOptions) -> list[Record]:
    resolutions = (16, 32) if opts.quick else (64, 128)
    return [_marching_tets(r, opts) for r in resolutions] + _refinement(opts)
