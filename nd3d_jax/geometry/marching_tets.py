"""Differentiable marching tetrahedra with static shapes (the MT layer of paper section P2).

A surface vertex sits on every grid edge whose endpoints have opposite SDF signs, at the zero of
the linear interpolation; it is differentiable w.r.t. both SDF values and (deformed) vertex
positions. One vertex per *global* edge means neighbouring tets share their surface vertices, so
a closed surface comes out watertight. Outputs have a fixed budget plus validity masks, so the
whole extraction compiles under `jax.jit` (and `vmap`s over objects); the true counts are
returned, and a result whose counts exceed the budget is flagged as overflowing.

Convention: SDF < 0 is inside. Faces are wound counter-clockwise seen from outside (normals point
from negative to positive SDF), given positively oriented tets.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nd3d_jax.geometry.tet_grid import TET_EDGES, TetGrid


def _edge_slot(i: int, j: int) -> int:
    return [tuple(e) for e in TET_EDGES.tolist()].index((min(i, j), max(i, j)))


def _triangle_table() -> tuple[np.ndarray, np.ndarray]:
    """(16, 2, 3) local-edge triangles and (16,) triangle counts per inside-bit pattern.

    Built rather than typed in: each triangle is wound so its normal points from the inside
    vertices to the outside ones on a reference tet. Winding is invariant under any affine map
    of positive determinant, so the table holds for every positively oriented tet.
    """
    ref = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float64)
    table = np.zeros((16, 2, 3), np.int32)
    count = np.zeros(16, np.int32)
    for code in range(16):
        inside = [v for v in range(4) if code >> v & 1]
        outside = [v for v in range(4) if not code >> v & 1]
        if len(inside) in (1, 3):
            apex, rest = (inside[0], outside) if len(inside) == 1 else (outside[0], inside)
            tris = [[(apex, r) for r in rest]]
        elif len(inside) == 2:
            (a, b), (c, d) = inside, outside
            quad = [(a, c), (a, d), (b, d), (b, c)]  # cyclic: neighbours share a vertex
            tris = [[quad[0], quad[1], quad[2]], [quad[0], quad[2], quad[3]]]
        else:
            continue
        direction = ref[outside].mean(0) - ref[inside].mean(0)
        for t, tri in enumerate(tris):
            pts = np.array([(ref[i] + ref[j]) / 2 for i, j in tri])
            normal = np.cross(pts[1] - pts[0], pts[2] - pts[0])
            if normal @ direction < 0:
                tri = [tri[0], tri[2], tri[1]]
            table[code, t] = [_edge_slot(i, j) for i, j in tri]
        count[code] = len(tris)
    return table, count


TRI_TABLE, TRI_COUNT = _triangle_table()
_BITS = np.array([1, 2, 4, 8], np.int32)


class MarchingTetsResult(NamedTuple):
    """Padded surface: rows past `num_*` (or where the mask is False) are padding."""

    vertices: jax.Array  # (max_vertices, 3)
    vertex_mask: jax.Array  # (max_vertices,) bool
    faces: jax.Array  # (max_faces, 3) int32, indices into `vertices`; 0 in padding
    face_mask: jax.Array  # (max_faces,) bool
    num_vertices: jax.Array  # () int32, true count, may exceed the budget
    num_faces: jax.Array  # () int32, true count, may exceed the budget

    @property
    def overflow(self) -> jax.Array:
        """True where the surface did not fit the budget (the padded result is then partial)."""
        return (self.num_vertices > self.vertices.shape[-2]) | (
            self.num_faces > self.faces.shape[-2]
        )


def default_face_budget(resolution: int) -> int:
    """A face budget that holds smooth shapes spanning the grid (~16 faces per R^2)."""
    return 16 * resolution * resolution


def marching_tetrahedra(
    vertices: jax.Array,
    sdf: jax.Array,
    tets: jax.Array,
    tet_edges: jax.Array,
    edges: jax.Array,
    *,
    max_faces: int,
    max_vertices: int | None = None,
) -> MarchingTetsResult:
    """Extracts the zero level set of `sdf` (V,) on a tet mesh `vertices` (V, 3), `tets` (T, 4).

    `tet_edges` (T, 6) maps each tet's local edges (TET_EDGES order) to rows of `edges` (E, 2);
    any edge set works as long as shared edges have one id (see `TetGrid`).
    """
    max_vertices = max_faces if max_vertices is None else max_vertices
    vertices, sdf = jnp.asarray(vertices), jnp.asarray(sdf)
    tets, tet_edges, edges = jnp.asarray(tets), jnp.asarray(tet_edges), jnp.asarray(edges)
    inside = sdf < 0

    # Surface vertices: one per sign-changing edge, numbered in edge order.
    crossing = inside[edges[:, 0]] != inside[edges[:, 1]]
    num_vertices = jnp.sum(crossing, dtype=jnp.int32)
    edge_to_vertex = jnp.cumsum(crossing, dtype=jnp.int32) - 1
    (vertex_edge,) = jnp.nonzero(crossing, size=max_vertices, fill_value=0)
    vertex_mask = jnp.arange(max_vertices) < num_vertices
    ia, ib = edges[vertex_edge, 0], edges[vertex_edge, 1]
    sa, sb = sdf[ia], sdf[ib]
    # Guard the padding (sa == sb there) so its gradient is 0, not nan.
    denom = jnp.where(vertex_mask, sa - sb, 1.0)
    w = jnp.where(vertex_mask, sa / denom, 0.0)[:, None]
    surface = vertices[ia] + w * (vertices[ib] - vertices[ia])

    # Faces: 0-2 triangles per tet from the table, then compacted.
    code = jnp.sum(jnp.where(inside[tets], _BITS, 0), axis=-1)
    tri_count = jnp.asarray(TRI_COUNT)[code]
    num_faces = jnp.sum(tri_count, dtype=jnp.int32)
    # A crossing tet gives >= 1 face, so max_faces crossing tets cover any fitting surface.
    (tet_idx,) = jnp.nonzero(tri_count > 0, size=max_faces, fill_value=0)
    tet_code = code[tet_idx]
    local = jnp.asarray(TRI_TABLE)[tet_code]  # (F, 2, 3) local edge slots
    global_edges = jnp.take_along_axis(tet_edges[tet_idx][:, None, :], local, axis=-1)
    tri_vertices = edge_to_vertex[global_edges]  # (F, 2, 3)
    slot_valid = (jnp.arange(max_faces) < jnp.sum(tri_count > 0))[:, None] & (
        jnp.asarray(TRI_COUNT)[tet_code][:, None] > jnp.arange(2)
    )
    (face_idx,) = jnp.nonzero(slot_valid.reshape(-1), size=max_faces, fill_value=0)
    face_mask = jnp.arange(max_faces) < num_faces
    faces = jnp.where(face_mask[:, None], tri_vertices.reshape(-1, 3)[face_idx], 0)
    return MarchingTetsResult(
        vertices=jnp.where(vertex_mask[:, None], surface, 0.0),
        vertex_mask=vertex_mask,
        faces=faces,
        face_mask=face_mask,
        num_vertices=num_vertices,
        num_faces=num_faces,
    )


def marching_tetrahedra_on_grid(
    grid: TetGrid,
    sdf: jax.Array,
    vertices: jax.Array | None = None,
    *,
    max_faces: int | None = None,
    max_vertices: int | None = None,
) -> MarchingTetsResult:
    """`marching_tetrahedra` on a `TetGrid`; `vertices` defaults to the undeformed grid."""
    if max_faces is None:
        max_faces = default_face_budget(grid.resolution)
    return marching_tetrahedra(
        grid.vertices if vertices is None else vertices,
        sdf,
        grid.tets,
        grid.tet_edges,
        grid.edges,
        max_faces=max_faces,
        max_vertices=max_vertices,
    )

