"""Mesh I/O with clear errors, and the samplers the pipeline needs (trimesh underneath).

- `sample_surface`: area-weighted surface points with face normals.
- `sample_key_points`: the 2048 key points of the refinement stage (one vertex in 100).
- `sample_faces`: the 512 faces x [normal, area, centre] that feed f_struc (one face in 10).
- `drop_enclosed`: the pieces of a surface that lie inside its largest piece (voids).
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np
import trimesh

EXPORT_FORMATS = (".obj", ".ply", ".glb")
FACE_FEATURE_DIM = 7  # normal (3), area (1), centre (3)


class MeshError(ValueError):
    """A mesh that cannot be used: unreadable file, no faces, non-finite vertices."""


def validate_mesh(mesh: trimesh.Trimesh, name: str = "mesh") -> trimesh.Trimesh:
    """Returns `mesh` if it has faces and finite vertices; raises MeshError naming it if not."""
    if not isinstance(mesh, trimesh.Trimesh):
        raise MeshError(f"{name}: expected a triangle mesh, got {type(mesh).__name__}")
    if len(mesh.faces) == 0:
        raise MeshError(f"{name}: mesh has no faces ({len(mesh.vertices)} vertices)")
    bad = ~np.isfinite(mesh.vertices).all(axis=1)
    if bad.any():
        raise MeshError(f"{name}: {int(bad.sum())} of {len(bad)} vertices are NaN or inf")
    if mesh.faces.min() < 0 or mesh.faces.max() >= len(mesh.vertices):
        raise MeshError(f"{name}: face indices out of range for {len(mesh.vertices)} vertices")
    return mesh


def load_mesh(path: str | os.PathLike) -> trimesh.Trimesh:
    """Loads any mesh file trimesh reads (scenes are merged) and validates it."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"mesh file not found: {path}")
    try:
        loaded = trimesh.load(path, force="mesh", process=False)
    except Exception as e:  # trimesh raises many types for broken files
        raise MeshError(f"{path}: cannot read mesh ({type(e).__name__}: {e})") from e
    if not isinstance(loaded, trimesh.Trimesh):
        raise MeshError(f"{path}: no triangle mesh in file (got {type(loaded).__name__})")
    return validate_mesh(loaded, path)


def export_mesh(mesh: trimesh.Trimesh, path: str | os.PathLike) -> str:
    """Writes OBJ, PLY or GLB by suffix (parent folders created)."""
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in EXPORT_FORMATS:
        raise ValueError(f"{path}: unsupported mesh format {suffix!r}, use one of {EXPORT_FORMATS}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    mesh.export(path)
    return path


def sample_surface(
    mesh: trimesh.Trimesh, count: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """`count` area-weighted points on the surface and their face normals, float32."""
    validate_mesh(mesh)
    points, face_index = trimesh.sample.sample_surface(mesh, count, seed=seed)
    normals = mesh.face_normals[face_index]
    return points.astype(np.float32), normals.astype(np.float32)


def sample_key_points(
    mesh: trimesh.Trimesh, count: int = 2048, vertex_stride: int = 100, seed: int = 0
) -> np.ndarray:
    """The refinement stage's key points (paper: one key vertex per 100 vertices, 2048 in all).

    A mesh with at least `count * vertex_stride` vertices gives every `vertex_stride`-th vertex
    (evenly thinned to `count`); a smaller mesh falls back to area-weighted surface samples.
    """
    validate_mesh(mesh)
    if len(mesh.vertices) >= count * vertex_stride:
        candidates = np.asarray(mesh.vertices[::vertex_stride])
        pick = np.linspace(0, len(candidates) - 1, count).round().astype(np.int64)
        return candidates[pick].astype(np.float32)
    return sample_surface(mesh, count, seed)[0]


class FaceSamples(NamedTuple):
    features: np.ndarray  # (num_faces, 7) [normal, area, centre], zero where padded
    mask: np.ndarray  # (num_faces,) bool
    face_index: np.ndarray  # (num_faces,) int32 into mesh.faces, -1 where padded


def sample_faces(
    mesh: trimesh.Trimesh, num_faces: int = 512, stride: int = 10, seed: int = 0
) -> FaceSamples:
    """One face in `stride`, at most `num_faces`, as [normal (3), area (1), centre (3)].

    Faces 0, stride, 2 stride, ... are the candidates; more than `num_faces` of them are thinned
    at random (by `seed`), fewer are padded and masked.
    """
    validate_mesh(mesh)
    candidates = np.arange(0, len(mesh.faces), stride)
    if len(candidates) > num_faces:
        rng = np.random.default_rng(seed)
        candidates = np.sort(rng.choice(candidates, num_faces, replace=False))
    n = len(candidates)
    feats = np.concatenate(
        [
            mesh.face_normals[candidates],
            mesh.area_faces[candidates, None],
            mesh.triangles_center[candidates],
        ],
        axis=1,
    )
    features = np.zeros((num_faces, FACE_FEATURE_DIM), np.float32)
    features[:n] = feats
    mask = np.arange(num_faces) < n
    face_index = np.full(num_faces, -1, np.int32)
    face_index[:n] = candidates
    return FaceSamples(features, mask, face_index)


def drop_enclosed(mesh: trimesh.Trimesh, probes: int = 8) -> tuple[trimesh.Trimesh, int]:
    """`mesh` without the connected pieces enclosed by its largest piece (by area), and how many
    were dropped. Such a piece bounds a void inside the solid (a sub-cell gap between two parts
    of a coarse mesh made of touching primitives leaves slivers of them): nothing outside can
    see it. A piece counts as enclosed when the mean generalised winding number of the largest
    piece at up to `probes` of its vertices exceeds 1/2 (libigl's fast winding number).
    """
    import igl

    faces = np.asarray(mesh.faces)
    if len(faces) == 0:
        return mesh, 0
    labels = trimesh.graph.connected_component_labels(mesh.face_adjacency, len(faces))
    counts = np.bincount(labels)
    if len(counts) < 2:
        return mesh, 0
    main = int(np.argmax(np.bincount(labels, weights=mesh.area_faces)))  # the largest by area
    v = np.asarray(mesh.vertices, np.float64)
    # up to `probes` vertices of each other piece, all queried against the largest at once
    vertex_piece = np.full(len(v), -1)
    vertex_piece[faces.reshape(-1)] = np.repeat(labels, 3)
    order = np.argsort(vertex_piece, kind="stable")
    starts = np.searchsorted(vertex_piece[order], np.arange(len(counts) + 1))
    probe, owner = [], []
    for piece in np.flatnonzero(np.arange(len(counts)) != main):
        ids = order[starts[piece] : starts[piece + 1]]
        probe.append(ids[np.linspace(0, len(ids) - 1, min(probes, len(ids))).astype(int)])
        owner.append(np.full(len(probe[-1]), piece))
    probe, owner = np.concatenate(probe), np.concatenate(owner)
    w = igl.fast_winding_number(v, faces[labels == main].astype(np.int64), v[probe])
    mean_w = np.bincount(owner, w, len(counts)) / np.maximum(
        np.bincount(owner, None, len(counts)), 1
    )
    keep = mean_w <= 0.5
    keep[main] = True
    if keep.all():
        return mesh, 0
    out = mesh.submesh([np.flatnonzero(keep[labels])], append=True)
    return out, int((~keep).sum())
