"""Stage 1, the coarse shape (P1): from Shap-E latents or from a user's mesh file, in the frame
the model was trained in.

The pipeline frame is the training data's: the object's bounding box centred at the origin,
its longest side 1 (`[-0.5, 0.5]^3`), +Y up (OmniObject3D's and Pix3D's OBJ files, glTF).
Shap-E's field is Z-up and spans about [-1, 1]^3; its mesh is rotated and scaled into this
frame and its field queried through the inverse map (distances scaled with it).

A `Coarse` carries what the later stages read: the mesh with sRGB vertex colours (T_hat's
source), and the field `points -> (sdf, f_tex)` that the refinement (eq 4-7) fits.
For a mesh file the field is its signed distance (libigl: closest points and the fast
winding number, negative inside) and f_tex holds the surface colour at the closest point in
its first 3 channels, zeros in the other 61 (docs/design.md: a mesh has no Shap-E features).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import trimesh

from data_pipelines.mesh_repair import repair_orientation
from data_pipelines.shape_samples import (
    closest_colors,
    signed_distance,
    surface_colors,
    unit_cube_transform,
)
from nd3d_jax.errors import UserError
from nd3d_jax.geometry.mesh_ops import MeshError, load_mesh
from nd3d_jax.models.sdf_mlp import FEATURE_DIM

# Shap-E's field frame is Z-up; ours (the training data's OBJ frame) is Y-up.
Z_UP_TO_Y_UP = np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], np.float64)

FieldFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclasses.dataclass
class Coarse:
    """The coarse shape in the pipeline frame."""

    mesh: trimesh.Trimesh  # vertex colours: sRGB uint8
    field: FieldFn  # points (N, 3) -> (sdf (N,) negative inside, f_tex (N, 64))
    source: str  # "shap_e" or the mesh file


def rgba(rgb: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] -> (N, 4) uint8 RGBA vertex colours (opaque)."""
    rgb = np.round(np.clip(rgb, 0.0, 1.0) * 255)
    return np.concatenate([rgb, np.full((len(rgb), 1), 255)], 1).astype(np.uint8)


def vertex_colors01(mesh: trimesh.Trimesh) -> np.ndarray:
    """(V, 3) float32 sRGB colours in [0, 1] at the vertices (textures sampled, grey if none)."""
    n = len(mesh.vertices)
    # each vertex as a corner of one face it belongs to
    face = np.zeros(n, np.int64)
    corner = np.zeros(n, np.int64)
    f = np.asarray(mesh.faces)
    face[f.reshape(-1)] = np.repeat(np.arange(len(f)), 3)
    corner[f.reshape(-1)] = np.tile(np.arange(3), len(f))
    bary = np.eye(3)[corner]
    return surface_colors(mesh, face, bary)


def normalised(mesh: trimesh.Trimesh, name: str) -> trimesh.Trimesh:
    """The mesh in the unit-cube frame, faces outward, vertex colours sampled from whatever
    visual it had (textures included)."""
    colors = vertex_colors01(mesh)
    try:
        centre, scale = unit_cube_transform(np.asarray(mesh.vertices))
    except ValueError as e:
        raise UserError(f"{name}: {e}") from e
    out = trimesh.Trimesh(
        (np.asarray(mesh.vertices) - centre) * scale,
        np.asarray(mesh.faces),
        vertex_colors=rgba(colors),
        process=False,
    )
    repaired = repair_orientation(out).mesh
    if len(repaired.faces) == 0:
        raise UserError(f"{name}: the coarse mesh has no surface (every face is degenerate)")
    return repaired


def mesh_field(mesh: trimesh.Trimesh) -> FieldFn:
    """A mesh's field: signed distance and f_tex = [closest-point colour, zeros]."""

    def field(points: np.ndarray):
        points = np.asarray(points, np.float64)
        sdf = signed_distance(mesh, points)
        feats = np.zeros((len(points), FEATURE_DIM), np.float32)
        feats[:, :3] = closest_colors(mesh, points)
        return sdf, feats

    return field


def from_mesh_file(path: str) -> Coarse:
    """A user's coarse mesh (OBJ/PLY/GLB/...; vertex colours or a texture optional)."""
    try:
        mesh = load_mesh(path)
    except (MeshError, FileNotFoundError) as e:
        raise UserError(str(e)) from e
    unit = normalised(mesh, path)
    return Coarse(unit, mesh_field(unit), path)


def from_shap_e(shap_e, latent: np.ndarray, resolution: int, grid: str = "exact") -> Coarse:
    """The coarse mesh and field of one Shap-E latent (1024, 1024), mapped into our frame."""
    from nd3d_jax.prior.mesh import coarse_meshes, padded_query

    (mesh,) = coarse_meshes(shap_e, latent[None], resolution, grid)
    v = np.asarray(mesh.vertices) @ Z_UP_TO_Y_UP.T
    centre, scale = unit_cube_transform(v)
    unit = trimesh.Trimesh(
        (v - centre) * scale, mesh.faces, vertex_colors=mesh.visual.vertex_colors, process=False
    )
    latent = np.asarray(latent)

    def field(points: np.ndarray):
        p = np.asarray(points, np.float32)
        shap_e_points = (p / scale + centre) @ Z_UP_TO_Y_UP  # inverse rotation: the transpose
        sdf, _, f_tex = padded_query(shap_e, latent, shap_e_points.astype(np.float32))
        return sdf * scale, f_tex

    return Coarse(unit, field, "shap_e")
