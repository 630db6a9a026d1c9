"""Host-side mesh extraction: checked SDF values in, a compact `trimesh.Trimesh` out."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import jax
import numpy as np
import trimesh

from nd3d_jax.geometry.marching_tets import (
    MarchingTetsResult,
    default_face_budget,
    marching_tetrahedra_on_grid,
)
from nd3d_jax.geometry.tet_grid import TetGrid, build_tet_grid


class SurfaceBudgetError(ValueError):
    """The extracted surface has more faces or vertices than the static budget."""


def check_sdf_values(sdf: np.ndarray, what: str = "SDF") -> None:
    """Raises a clear ValueError for non-finite values or a field with no surface."""
    sdf = np.asarray(sdf)
    if sdf.size == 0:
        raise ValueError(f"{what}: no values")
    n_nan, n_inf = int(np.isnan(sdf).sum()), int(np.isinf(sdf).sum())
    if n_nan or n_inf:
        raise ValueError(f"{what}: {n_nan} NaN and {n_inf} inf values out of {sdf.size}")
    if np.all(sdf >= 0):
        raise ValueError(
            f"{what}: empty surface, no value is negative (nothing is inside the grid; "
            f"min {sdf.min():.4g})"
        )
    if np.all(sdf < 0):
        raise ValueError(
            f"{what}: empty surface, every value is negative (the grid lies inside the shape; "
            f"enlarge the bound; max {sdf.max():.4g})"
        )


def to_trimesh(result: MarchingTetsResult) -> trimesh.Trimesh:
    """The masked marching-tets result as a compact mesh; raises if it overflowed its budget."""
    num_v, num_f = int(result.num_vertices), int(result.num_faces)
    max_v, max_f = result.vertices.shape[0], result.faces.shape[0]
    if num_v > max_v or num_f > max_f:
        raise SurfaceBudgetError(
            f"surface has {num_f} faces / {num_v} vertices, over the budget of {max_f} / "
            f"{max_v}; raise max_faces"
        )
    # sliced on the host: a device slice compiles a program per surface size
    vertices = np.asarray(result.vertices, np.float64)[:num_v]
    faces = np.asarray(result.faces, np.int64)[:num_f]
    # process=False keeps the one-vertex-per-edge topology (no merging by position).
    return trimesh.Trimesh(vertices, faces, process=False)


@functools.partial(jax.jit, static_argnames=("grid", "max_faces", "max_vertices"))
def extract_jit(grid, sdf, vertices=None, *, max_faces, max_vertices):
    """Compiled `marching_tetrahedra_on_grid` (one program per grid and budget)."""
    return marching_tetrahedra_on_grid(
        grid, sdf, vertices, max_faces=max_faces, max_vertices=max_vertices
    )


def _round_budget(n: int) -> int:
    return 1 << max(10, int(np.ceil(np.log2(n * 1.25))))


def extract_mesh(
    grid: TetGrid,
    sdf: np.ndarray | jax.Array,
    vertices: np.ndarray | jax.Array | None = None,
    max_faces: int | None = None,
) -> trimesh.Trimesh:
    """Checks `sdf` on the grid vertices and extracts its zero level set.

    An overflowing budget is never truncated: the extraction is run again once with a budget
    that fits the counts it reported.
    """
    sdf = np.asarray(sdf, np.float32).reshape(-1)
    if sdf.shape[0] != grid.num_vertices:
        raise ValueError(f"SDF has {sdf.shape[0]} values, the grid {grid.num_vertices} vertices")
    check_sdf_values(sdf)
    n = grid.resolution + 1
    volume = sdf.reshape(n, n, n)
    faces_of_box = (volume[[0, -1]], volume[:, [0, -1]], volume[:, :, [0, -1]])
    clipped = sum(int((f < 0).sum()) for f in faces_of_box)
    if clipped:
        warnings.warn(
            f"the shape reaches the grid's boundary at {clipped} vertex values: the surface "
            f"is cut open there; enlarge the bound (now {grid.bound})",
            stacklevel=2,
        )
    if vertices is not None and not np.isfinite(np.asarray(vertices)).all():
        raise ValueError("extract_mesh: deformed grid vertices contain NaN or inf")
    budget = max_faces or default_face_budget(grid.resolution)
    result = extract_jit(grid, sdf, vertices, max_faces=budget, max_vertices=budget)
    if int(result.num_faces) > budget or int(result.num_vertices) > budget:  # overflow
        budget = _round_budget(max(int(result.num_faces), int(result.num_vertices)))
        result = extract_jit(grid, sdf, vertices, max_faces=budget, max_vertices=budget)
    return to_trimesh(result)


def evaluate_on_grid(
    sdf_fn: Callable[[np.ndarray], np.ndarray], points: np.ndarray, chunk: int = 1 << 18
) -> np.ndarray:
    """`sdf_fn` over `points` in chunks (bounded memory for numpy and jax functions alike)."""
    out = [np.asarray(sdf_fn(points[i : i + chunk])) for i in range(0, len(points), chunk)]
    values = np.concatenate(out).astype(np.float32)
    if values.shape != (len(points),):
        raise ValueError(
            f"sdf_fn must map (N, 3) points to (N,) values; got shape {values.shape} for "
            f"{len(points)} points"
        )
    return values


def mesh_from_sdf(
    sdf_fn: Callable[[np.ndarray], np.ndarray],
    resolution: int = 64,
    bound: float = 1.0,
    max_faces: int | None = None,
) -> trimesh.Trimesh:
    """Zero level set of `sdf_fn` ((N, 3) -> (N,), negative inside) over [-bound, bound]^3.

    Evaluated on a tet grid of `resolution` cubes per axis and extracted with marching tets.
    """
    grid = build_tet_grid(resolution, bound)
    return extract_mesh(grid, evaluate_on_grid(sdf_fn, grid.vertices), max_faces=max_faces)
