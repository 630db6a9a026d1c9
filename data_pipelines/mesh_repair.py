"""Consistent, outward face orientation for real meshes (Pix3D models, OmniObject3D scans).

Real meshes come inward-facing (Pix3D's IKEA models have a negative volume), with mixed
orientation, small holes and duplicate faces; the SDF sign, the surface normals and the
condition mesh's normal maps all read the face winding. `repair_orientation`:

1. welds vertices by position (scans split vertices along UV seams, so without welding no two
   faces share an edge), relative tolerance `WELD_TOLERANCE` of the mesh size;
2. drops degenerate faces and duplicate faces (the same three welded vertices in any order:
   a duplicate doubles the winding number's jump across the surface, a reversed one cancels it);
3. orients every orientable patch (faces joined by manifold edges) consistently by breadth-first
   search and turns it to face outward by ray casting (libigl `reorient_facets_raycast`,
   Takayama et al. 2014: rays shot from both sides of a patch's faces; the front is the side
   less occluded). This holds for open patches and for the pieces a closed part falls into at
   non-manifold edges (parts that touch), where no volume is defined;
4. a closed patch (every edge shared by two of its faces) is then oriented by the sign of its
   volume instead, sum_f det(v0, v1, v2) / 6 (divergence theorem): exact, also for a closed
   part hidden inside another, which rays cannot see. (So a cavity modelled as a closed
   inward-facing wall inside a solid would be filled; furniture models and scans have none.)

The vertices (and so UVs and vertex colours) are kept; only which faces exist and their vertex
order change. What could not be made consistent is counted, and `warnings()` names it.
"""

from __future__ import annotations

from typing import NamedTuple

import igl
import igl.embree
import numpy as np
import trimesh

WELD_TOLERANCE = 1e-7  # of the longest bounding-box side
RAYS_PER_FACE, RAYS_MAX = 10, 20000  # rays for the outward test: 10 per face, at most 20k,
RAYS_PER_PATCH = 16  # and at least 16 per patch


class Orientation(NamedTuple):
    mesh: trimesh.Trimesh  # the input's vertices and visuals; faces kept, reoriented
    vertices: np.ndarray  # (V', 3) float64 welded vertices
    faces: np.ndarray  # (F', 3) int64 the kept faces on the welded vertices, same order
    flipped: int  # kept faces whose winding was reversed
    duplicates: int  # duplicate faces removed
    degenerate: int  # faces removed because two of their corners weld together
    boundary_edges: int  # edges of one face: the mesh is open
    nonmanifold_edges: int  # edges of three or more faces
    inconsistent_edges: int  # two-face edges walked the same way by both (non-orientable)

    def warnings(self) -> list[str]:
        """Per-shape warnings for the prepare report (each counted once per shape)."""
        out = []
        if self.flipped:
            out.append("orientation repaired")
        if self.duplicates:
            out.append("duplicate faces removed")
        if self.boundary_edges:
            out.append("open mesh (outward side by ray casting)")
        if self.nonmanifold_edges:
            out.append("non-manifold edges (outward side per patch)")
        if self.inconsistent_edges:
            out.append("orientation not consistent (non-orientable faces)")
        return out


def weld(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(V', F) with vertices closer than WELD_TOLERANCE x the mesh size merged."""
    v = np.asarray(vertices, np.float64)
    extent = float(np.ptp(v, axis=0).max()) if len(v) else 0.0
    eps = WELD_TOLERANCE * (extent if extent > 0 else 1.0)
    welded, _, _, f = igl.remove_duplicate_vertices(v, np.asarray(faces, np.int64), eps)
    return welded, f


def edge_counts(faces: np.ndarray) -> tuple[int, int, int]:
    """(boundary, non-manifold, inconsistently oriented) edge counts of a triangle mesh."""
    a, b = faces.reshape(-1), faces[:, [1, 2, 0]].reshape(-1)
    ids, count = _pair_ids(np.minimum(a, b), np.maximum(a, b))
    forward = np.bincount(ids, weights=a < b, minlength=len(count))
    inconsistent = (count == 2) & (forward != 1)  # both faces walk the edge the same way
    return int((count == 1).sum()), int((count > 2).sum()), int(inconsistent.sum())


def _pair_ids(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ids of the distinct (a, b) pairs of non-negative ints (a 1D sort, not a row sort),
    and each distinct pair's count."""
    _, ids, counts = np.unique(a * (np.int64(b.max(initial=0)) + 1) + b, return_inverse=True,
                               return_counts=True)  # fmt: skip
    return ids, counts


def _edge_ids(faces: np.ndarray) -> np.ndarray:
    """(F, 3) id of each face's undirected edges (v0 v1, v1 v2, v2 v0)."""
    a, b = faces.reshape(-1), faces[:, [1, 2, 0]].reshape(-1)
    return _pair_ids(np.minimum(a, b), np.maximum(a, b))[0].reshape(-1, 3)


def _patch_volumes(vertices, faces, patch) -> tuple[np.ndarray, np.ndarray]:
    """Per patch: (is closed, signed volume of its faces about the origin)."""
    count = int(patch.max()) + 1
    ids, uses = _pair_ids(np.repeat(patch, 3), _edge_ids(faces).reshape(-1))
    lone = uses[ids] == 1  # per face corner: its edge belongs to no other face of the patch
    open_edges = np.bincount(np.repeat(patch, 3), weights=lone, minlength=count)
    tri = vertices[faces]
    det = np.einsum("fi,fi->f", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])) / 6.0
    return open_edges == 0, np.bincount(patch, weights=det, minlength=count)


def orient_outward(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Which faces to reverse so that every patch is consistent and faces outward (steps 3-4
    of the module docstring). `faces` must be free of degenerate and duplicate faces."""
    flip, patch = igl.embree.reorient_facets_raycast(
        vertices,
        faces,
        rays_total=min(RAYS_MAX, RAYS_PER_FACE * len(faces)),
        rays_minimum=RAYS_PER_PATCH,
    )
    oriented = np.where(flip[:, None], faces[:, ::-1], faces)
    closed, volume = _patch_volumes(vertices, oriented, patch)
    return flip ^ (closed & (volume < 0))[patch]


def repair_orientation(mesh: trimesh.Trimesh) -> Orientation:
    """`mesh` with duplicate and degenerate faces removed and every patch consistently
    oriented outward (see the module docstring)."""
    vertices, faces = weld(mesh.vertices, mesh.faces)
    degenerate = (faces[:, 0] == faces[:, 1]) | (faces[:, 1] == faces[:, 2])
    degenerate |= faces[:, 2] == faces[:, 0]
    ordered = np.sort(faces, axis=1)
    pair = _pair_ids(ordered[:, 0], ordered[:, 1])[0]
    _, first = np.unique(pair * np.int64(len(vertices)) + ordered[:, 2], return_index=True)
    keep = np.zeros(len(faces), bool)
    keep[first] = True
    duplicates = int((~keep & ~degenerate).sum())
    keep &= ~degenerate
    faces = faces[keep]
    flip = orient_outward(vertices, faces) if len(faces) else np.zeros(0, bool)
    faces = np.where(flip[:, None], faces[:, ::-1], faces)
    out = mesh.copy()
    out.update_faces(keep)
    kept = np.asarray(out.faces)
    out.faces = np.where(flip[:, None], kept[:, ::-1], kept)
    return Orientation(out, vertices, faces, int(flip.sum()), duplicates, int(degenerate.sum()),
                       *edge_counts(faces))  # fmt: skip
