"""Deformable tetrahedral grid over [-bound, bound]^3 (the DMTet grid of paper section P2).

Each of the R^3 cubes is split into the six Kuhn (Freudenthal) tetrahedra: for every ordering
of the three axes, walk from the cube's min corner to its max corner one axis at a time. The
split is induced by the ordering of the fractional coordinates, so neighbouring cubes agree on
every shared face diagonal and the grid is conforming (vertices shared, no duplicate tets).

Every edge of the grid joins a vertex `a` to `a + d` with `d` in {0,1}^3 \\ {0}, so an edge has the
analytic id `7 * a + (d - 1)` (bits x, y, z of `d`): no sort or unique over tens of millions of
edges, and the id fits int32 up to R = 300.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np

# Local edges of a tet (pairs of local vertex slots), shared with the marching-tets tables.
TET_EDGES = np.array([(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)], dtype=np.int32)

# Bound of the per-vertex displacement per axis, as a fraction f of the cell size. A tet's volume
# is linear in each vertex's position, so its minimum over the displacement box sits at a corner:
# it is (1 - 6 f) of the rest volume. f < 1/6 never inverts a tet; 1/8 keeps >= 1/4 of it.
DEFAULT_MAX_DEFORM = 0.125


@dataclasses.dataclass(frozen=True)
class TetGrid:
    """A regular tet grid: host (numpy) arrays, built once per resolution and cached."""

    resolution: int
    bound: float
    vertices: np.ndarray  # (V, 3) float32, V = (R + 1)^3
    tets: np.ndarray  # (T, 4) int32, T = 6 R^3, positively oriented
    tet_edges: np.ndarray  # (T, 6) int32 global edge ids, in TET_EDGES order
    edges: np.ndarray  # (7 V, 2) int32; unused ids are the loop (a, a) and never cross

    @property
    def cell_size(self) -> float:
        return 2.0 * self.bound / self.resolution

    @property
    def num_vertices(self) -> int:
        return self.vertices.shape[0]

    @property
    def num_tets(self) -> int:
        return self.tets.shape[0]


def _kuhn_offsets() -> np.ndarray:
    """(6, 4, 3) corner offsets of the six Kuhn tets of the unit cube, positively oriented."""
    tets = []
    for perm in itertools.permutations(range(3)):
        corner = np.zeros(3, np.int64)
        chain = [corner.copy()]
        for axis in perm:
            corner[axis] = 1
            chain.append(corner.copy())
        chain = np.stack(chain)
        vol = np.linalg.det(chain[1:] - chain[0])
        if vol < 0:  # odd permutations: swap the last two vertices (keeps the chain's edges)
            chain = chain[[0, 1, 3, 2]]
        tets.append(chain)
    return np.stack(tets)


@functools.lru_cache(maxsize=4)
def build_tet_grid(resolution: int, bound: float = 1.0) -> TetGrid:
    """Tet grid with `resolution` cubes per axis over [-bound, bound]^3."""
    if resolution < 1:
        raise ValueError(f"tet grid resolution must be >= 1, got {resolution}")
    if not bound > 0:
        raise ValueError(f"tet grid bound must be > 0, got {bound}")
    r = int(resolution)
    n = r + 1
    if 7 * n**3 >= 2**31:
        raise ValueError(f"tet grid resolution {r} is too large for int32 edge ids (max 300)")

    axis = np.linspace(-bound, bound, n, dtype=np.float32)
    vertices = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)

    # Everything is (cell base index) + (per-cube constant), so build the constants once.
    strides = np.array([n * n, n, 1], np.int32)
    kuhn = _kuhn_offsets()  # (6, 4, 3)
    ia, ib = TET_EDGES[:, 0], TET_EDGES[:, 1]
    lo = np.minimum(kuhn[:, ia], kuhn[:, ib])  # (6, 6, 3) min corner of each local edge
    kind = np.abs(kuhn[:, ib] - kuhn[:, ia]) @ np.array([1, 2, 4]) - 1  # offset bits - 1
    cell = np.arange(r, dtype=np.int32)
    base = (
        cell[:, None, None] * strides[0] + cell[None, :, None] * strides[1] + cell[None, None, :]
    ).reshape(-1, 1, 1)
    tets = (base + (kuhn @ strides).astype(np.int32)).reshape(-1, 4)
    tet_edges = (7 * (base + (lo @ strides).astype(np.int32)) + kind.astype(np.int32)).reshape(-1, 6)

    # Edge id 7 a + k joins a to a + offset(k + 1); ids that leave the grid become loops.
    bits = np.arange(1, 8)
    offsets = np.stack([bits & 1, (bits >> 1) & 1, (bits >> 2) & 1], -1)  # (7, 3)
    idx = np.arange(n, dtype=np.int32)
    fits = np.ones((n, n, n, 7), bool)
    for ax in range(3):
        coord = idx.reshape([-1 if a == ax else 1 for a in range(3)] + [1])
        fits &= coord + offsets[:, ax] < n
    start = np.arange(n**3, dtype=np.int32).reshape(n, n, n, 1)
    end = np.where(fits, start + (offsets @ strides).astype(np.int32), start)
    edges = np.stack([np.broadcast_to(start, end.shape), end], -1).reshape(-1, 2)

    return TetGrid(
        resolution=r,
        bound=float(bound),
        vertices=vertices,
        tets=tets,
        tet_edges=tet_edges,
        edges=edges,
    )


def deform_vertices(
    vertices: jax.Array,
    displacement: jax.Array,
    cell_size: float,
    max_fraction: float = DEFAULT_MAX_DEFORM,
) -> jax.Array:
    """Moves grid vertices by `displacement` (world units), bounded per axis.

    A soft clamp `b tanh(d / b)` with `b = max_fraction * cell_size`: the identity for small
    displacements, never past `b`, with smooth gradients (DMTet bounds its offsets with tanh too).
    """
    b = max_fraction * cell_size
    return vertices + b * jnp.tanh(displacement / b)


def tet_volumes(vertices: jax.Array, tets: jax.Array) -> jax.Array:
    """Signed volume of every tet (positive for the grid's orientation)."""
    p = vertices[tets]
    return jnp.linalg.det(p[:, 1:] - p[:, :1]) / 6.0
