"""The coarse mesh of P1: Shap-E's SDF on a grid -> our marching tetrahedra -> a coloured mesh.

The field is sampled at R^3 points spanning [-1, 1]^3 (diffusers' `volume_query_points`), then
padded with one layer of "outside" all round so every surface closes. Two ways to place it:

- `grid="exact"` (default): each value stays where it was sampled; the padding layer lies one
  cell outside the cube, so the tet grid spans [-1 - h, 1 + h]^3 with h = 2 / (R - 1).
- `grid="diffusers"`: diffusers' `decode_to_mesh` maps the padded (R + 2)-grid onto [-1, 1]^3,
  which shrinks every mesh by (R - 1) / (R + 1) (127/129 at R = 128) about the origin. Use it to
  match meshes made by diffusers.

Vertex colours are the STF colour head at the vertices, stored as sRGB (what Shap-E renders);
`export_coarse` writes GLB COLOR_0 in linear space (glTF's rule, as diffusers' `decode_to_mesh`
converts them) and rotates Shap-E's Z-up frame to glTF's Y-up; PLY keeps the field's frame.
"""

from __future__ import annotations

import os

import numpy as np
import trimesh

from nd3d_jax.errors import UserError
from nd3d_jax.geometry.extract import extract_mesh
from nd3d_jax.geometry.tet_grid import TetGrid, build_tet_grid

GRIDS = ("exact", "diffusers")
Z_UP_TO_Y_UP = trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0])


def grid_points(resolution: int) -> np.ndarray:
    """(R^3, 3) points over [-1, 1]^3, x-major (diffusers' `volume_query_points` order)."""
    axis = np.linspace(-1.0, 1.0, resolution, dtype=np.float32)
    return np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)


def padded_grid(resolution: int, grid: str = "exact") -> TetGrid:
    """The tet grid whose (R + 2)^3 vertices carry the padded samples."""
    if grid not in GRIDS:
        raise UserError(f"grid={grid!r}: must be one of {GRIDS}")
    if resolution < 2:
        raise UserError(f"resolution must be >= 2, got {resolution}")
    bound = 1.0 + 2.0 / (resolution - 1) if grid == "exact" else 1.0
    return build_tet_grid(resolution + 1, bound)


def pad_outside(sdf: np.ndarray, resolution: int) -> np.ndarray:
    """(R^3,) values (negative inside) -> (R + 2)^3 with a +1 ("outside") border."""
    volume = np.asarray(sdf, np.float32).reshape((resolution,) * 3)
    return np.pad(volume, 1, constant_values=1.0).reshape(-1)


def srgb_to_linear(u: np.ndarray) -> np.ndarray:
    return np.where(u <= 0.04045, u / 12.92, ((u + 0.055) / 1.055) ** 2.4)


def padded_query(shap_e, latent, points: np.ndarray):
    """`shap_e.query` of one latent at any number of points: [sdf, rgb, f_tex] (host)."""
    n = len(points)
    pad = -n % min(shap_e.settings.chunk, max(n, 1))
    out = shap_e.query(latent[None], np.pad(points, ((0, pad), (0, 0))))
    return [np.asarray(a[0, :n]) for a in out]


def extract_coarse(sdf: np.ndarray, resolution: int, grid: str = "exact") -> trimesh.Trimesh:
    """The mesh of R^3 samples (negative inside, `grid_points` order), padded and placed by
    `grid`; any field works (analytic SDFs in the tests)."""
    sdf = np.asarray(sdf, np.float32).reshape(-1)
    if sdf.shape[0] != resolution**3:
        raise UserError(f"{sdf.shape[0]} SDF values for a {resolution}^3 grid")
    return extract_mesh(padded_grid(resolution, grid), pad_outside(sdf, resolution))


def coarse_meshes(shap_e, latents, resolution: int = 128, grid: str = "exact"):
    """One `trimesh.Trimesh` per latent, sRGB vertex colours from the STF head."""
    padded_grid(resolution, grid)  # checks the arguments before any query
    points = grid_points(resolution)
    latents = np.asarray(latents, np.float32)
    if latents.ndim == 2:
        latents = latents[None]
    meshes = []
    for i, latent in enumerate(latents):
        sdf, _, _ = padded_query(shap_e, latent, points)
        if not np.any(sdf < 0):
            raise UserError(f"object {i}: the Shap-E field is empty (no point inside)")
        mesh = extract_coarse(sdf, resolution, grid)
        _, rgb, _ = padded_query(shap_e, latent, np.asarray(mesh.vertices, np.float32))
        mesh.visual.vertex_colors = np.concatenate(
            [np.round(np.clip(rgb, 0, 1) * 255), np.full((len(rgb), 1), 255)], 1
        ).astype(np.uint8)
        meshes.append(mesh)
    return meshes


def export_coarse(mesh: trimesh.Trimesh, path: str) -> str:
    """`.glb` (Y-up, linear COLOR_0) or `.ply` (field frame, sRGB colours)."""
    suffix = os.path.splitext(path)[1].lower()
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    if suffix == ".ply":
        mesh.export(path)
    elif suffix == ".glb":
        out = mesh.copy()
        out.apply_transform(Z_UP_TO_Y_UP)
        rgba = np.asarray(mesh.visual.vertex_colors, np.float64) / 255.0
        rgba[:, :3] = srgb_to_linear(rgba[:, :3])
        out.visual.vertex_colors = np.round(rgba * 255).astype(np.uint8)
        out.export(path)
    else:
        raise UserError(f"{path}: coarse meshes are written as .glb or .ply")
    return path
