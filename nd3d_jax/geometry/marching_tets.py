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

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nd3d_jax.geometry.tet_grid import (
    EDGE_OFFSETS,
    KUHN_EDGE_KIND,
    KUHN_EDGE_LO,
    KUHN_OFFSETS,
    TET_EDGES,
    TetGrid,
)


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


def _edge_vertices(sdf, ia, ib, valid, positions: Callable[[jax.Array], jax.Array]):
    """Zero crossings of the linear SDF on edges (ia, ib) where `valid`, 0 elsewhere.

    The padding is guarded (sa == sb there) so its gradient is 0, not nan.
    """
    sa, sb = sdf[ia], sdf[ib]
    denom = jnp.where(valid, sa - sb, 1.0)
    w = jnp.where(valid, sa / denom, 0.0)[..., None]
    pa, pb = positions(ia), positions(ib)
    return jnp.where(valid[..., None], pa + w * (pb - pa), 0.0)


def _faces(
    code: jax.Array,
    tet_ids: jax.Array,
    valid: jax.Array,
    tet_edge_ids: Callable[[jax.Array], jax.Array],
    edge_vertex: Callable[[jax.Array], jax.Array],
    max_faces: int,
) -> tuple[jax.Array, jax.Array]:
    """Triangles of candidate tets (codes, ids, validity (S,)), compacted to `max_faces`."""
    count = jnp.where(valid, jnp.asarray(TRI_COUNT)[code], 0)
    local = jnp.asarray(TRI_TABLE)[code]  # (S, 2, 3) local edge slots
    global_edges = jnp.take_along_axis(tet_edge_ids(tet_ids)[:, None, :], local, axis=-1)
    tri_vertices = edge_vertex(global_edges)  # (S, 2, 3)
    slot_valid = (count[:, None] > jnp.arange(2)).reshape(-1)
    (face_idx,) = jnp.nonzero(slot_valid, size=max_faces, fill_value=0)
    face_mask = jnp.arange(max_faces) < jnp.sum(slot_valid)
    faces = jnp.where(face_mask[:, None], tri_vertices.reshape(-1, 3)[face_idx], 0)
    return faces, face_mask


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
    """Extracts the zero level set of `sdf` (V,) on any tet mesh `vertices` (V, 3), `tets` (T, 4).

    `tet_edges` (T, 6) maps each tet's local edges (TET_EDGES order) to rows of `edges` (E, 2);
    any edge numbering works as long as shared edges have one id.
    """
    vertices, sdf = jnp.asarray(vertices), jnp.asarray(sdf)
    tets, tet_edges, edges = jnp.asarray(tets), jnp.asarray(tet_edges), jnp.asarray(edges)
    max_vertices = max_faces if max_vertices is None else max_vertices
    inside = sdf < 0

    # Surface vertices: one per sign-changing edge, numbered in edge-id order.
    crossing = inside[edges[:, 0]] != inside[edges[:, 1]]
    num_vertices = jnp.sum(crossing, dtype=jnp.int32)
    edge_to_vertex = jnp.cumsum(crossing, dtype=jnp.int32) - 1
    (vertex_edge,) = jnp.nonzero(crossing, size=max_vertices, fill_value=0)
    vertex_mask = jnp.arange(max_vertices) < num_vertices
    ends = edges[vertex_edge]
    surface = _edge_vertices(sdf, ends[:, 0], ends[:, 1], vertex_mask, lambda i: vertices[i])

    # Faces: 0-2 triangles per crossing tet (a crossing tet gives >= 1 face, so max_faces
    # crossing tets cover any surface that fits).
    code = jnp.sum(jnp.where(inside[tets], _BITS, 0), axis=-1)
    tri_count = jnp.asarray(TRI_COUNT)[code]
    (tet_idx,) = jnp.nonzero(tri_count > 0, size=max_faces, fill_value=0)
    selected = jnp.arange(max_faces) < jnp.sum(tri_count > 0)
    faces, face_mask = _faces(
        code[tet_idx],
        tet_idx,
        selected,
        lambda ids: tet_edges[ids],
        lambda e: edge_to_vertex[e],
        max_faces,
    )
    num_faces = jnp.sum(tri_count, dtype=jnp.int32)
    return MarchingTetsResult(surface, vertex_mask, faces, face_mask, num_vertices, num_faces)


def marching_tetrahedra_on_grid(
    grid: TetGrid,
    sdf: jax.Array,
    vertices: jax.Array | None = None,
    *,
    max_faces: int | None = None,
    max_vertices: int | None = None,
) -> MarchingTetsResult:
    """Marching tets on a regular `TetGrid`; `vertices` (deformed positions) default to the grid.

    The fast path, with the same output as `marching_tetrahedra` on the grid's arrays. The
    topology is known, so signs, edge crossings and tet codes come from shifted slices of the
    (R+1)^3 sign volume, and compaction runs over grid vertices and cells, not over the 7x more
    edges and 6x more tets: a vertex's 7 outgoing edges (edge id 7 a + k) carry its crossings as
    a bit mask, whose popcounts number the surface vertices in edge-id order.
    """
    r, n = grid.resolution, grid.resolution + 1
    max_faces = default_face_budget(r) if max_faces is None else max_faces
    max_vertices = max_faces if max_vertices is None else max_vertices
    sdf = jnp.asarray(sdf).reshape(-1)
    inside = (sdf < 0).reshape(n, n, n)
    strides = np.array([n * n, n, 1], np.int32)
    edge_step = jnp.asarray(EDGE_OFFSETS @ strides, jnp.int32)

    if vertices is None:
        h = grid.cell_size

        def positions(ids):
            ijk = jnp.stack([ids // (n * n), (ids // n) % n, ids % n], axis=-1)
            return ijk.astype(jnp.float32) * h - grid.bound

    else:
        vertices = jnp.asarray(vertices)

        def positions(ids):
            return vertices[ids]

    # Bit k of bits[a]: edge 7 a + k (a -> a + EDGE_OFFSETS[k]) changes sign.
    bits = 0
    for k, d in enumerate(EDGE_OFFSETS):
        a = inside[: n - d[0], : n - d[1], : n - d[2]]
        b = inside[d[0] :, d[1] :, d[2] :]
        bits = bits + (jnp.pad(a != b, [(0, int(x)) for x in d]).astype(jnp.int32) << k)
    bits = bits.reshape(-1)
    count = jax.lax.population_count(bits)
    first = jnp.cumsum(count) - count  # surface-vertex id of each grid vertex's first crossing
    num_vertices = jnp.sum(count, dtype=jnp.int32)
    below = (1 << jnp.arange(7, dtype=jnp.int32)) - 1  # bits of the kinds before k

    def edge_vertex(edge_ids):
        a, k = edge_ids // 7, edge_ids % 7
        return first[a] + jax.lax.population_count(bits[a] & below[k])

    # Surface vertices: expand the grid vertices that have crossings (each has >= 1).
    (vsel,) = jnp.nonzero(bits != 0, size=max_vertices, fill_value=0)
    sel = (jnp.arange(max_vertices) < jnp.sum(bits != 0))[:, None]
    kinds = jnp.arange(7, dtype=jnp.int32)
    crosses = sel & ((bits[vsel][:, None] >> kinds) & 1).astype(bool)  # (Vmax, 7)
    ia = jnp.broadcast_to(vsel[:, None], crosses.shape)
    moved = _edge_vertices(sdf, ia, ia + edge_step, crosses, positions)
    slot = jnp.where(crosses, edge_vertex(7 * ia + kinds), max_vertices)
    surface = jnp.zeros((max_vertices, 3), moved.dtype).at[slot].set(moved, mode="drop")
    vertex_mask = jnp.arange(max_vertices) < num_vertices

    # Tet id 6 cell + t; bit v of its code is the sign at corner KUHN_OFFSETS[t, v].
    code = jnp.stack(
        [
            sum(
                inside[i : i + r, j : j + r, k : k + r].astype(jnp.int32) << v
                for v, (i, j, k) in enumerate(KUHN_OFFSETS[t])
            )
            for t in range(6)
        ],
        axis=-1,
    ).reshape(-1, 6)
    tri_count = jnp.asarray(TRI_COUNT)[code]
    num_faces = jnp.sum(tri_count, dtype=jnp.int32)
    # Cells with a crossing tet give >= 1 face each, so max_faces of them cover any fit.
    active = jnp.any(tri_count > 0, axis=-1)
    (csel,) = jnp.nonzero(active, size=max_faces, fill_value=0)
    cell_ok = jnp.arange(max_faces) < jnp.sum(active)

    edge_lo = jnp.asarray(KUHN_EDGE_LO @ strides, jnp.int32)  # (6, 6)
    edge_kind = jnp.asarray(KUHN_EDGE_KIND, jnp.int32)

    def tet_edge_ids(ids):
        cell, t = ids // 6, ids % 6
        i, j, k = cell // (r * r), (cell // r) % r, cell % r
        base = i * strides[0] + j * strides[1] + k
        return 7 * (base[:, None] + edge_lo[t]) + edge_kind[t]

    faces, face_mask = _faces(
        code[csel].reshape(-1),
        (6 * csel[:, None] + jnp.arange(6)).reshape(-1),
        jnp.repeat(cell_ok, 6),
        tet_edge_ids,
        edge_vertex,
        max_faces,
    )
    return MarchingTetsResult(surface, vertex_mask, faces, face_mask, num_vertices, num_faces)
