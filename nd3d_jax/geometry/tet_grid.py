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
        if np.linalg.det(chain[1:] - chain[0]) < 0:  # odd permutation: swap the last two
            chain = chain[[0, 1, 3, 2]]
        tets.append(chain)
    return np.stack(tets)


# Per-cube constants: corners of the 6 Kuhn tets, and for each of their 6 local edges the min
# corner and the edge kind k (the edge joins a to a + EDGE_OFFSETS[k]).
KUHN_OFFSETS = _kuhn_offsets()  # (6, 4, 3)
EDGE_OFFSETS = np.array([[k & 1, (k >> 1) & 1, (k >> 2) & 1] for k in range(1, 8)])  # (7, 3)
_A, _B = KUHN_OFFSETS[:, TET_EDGES[:, 0]], KUHN_OFFSETS[:, TET_EDGES[:, 1]]
KUHN_EDGE_LO = np.minimum(_A, _B)  # (6, 6, 3)
KUHN_EDGE_KIND = np.abs(_B - _A) @ np.array([1, 2, 4]) - 1  # (6, 6) in [0, 7)


@dataclasses.dataclass(frozen=True)
class TetGrid:
    """A regular tet grid of `resolution` cubes per axis over [-bound, bound]^3.

    Only the two numbers define it; the index arrays (hundreds of MB at R = 128) are built on
    first use, and the marching-tets fast path never needs them.
    """

    resolution: int
    bound: float

    @property
    def cell_size(self) -> float:
        return 2.0 * self.bound / self.resolution

    @property
    def num_vertices(self) -> int:
        return (self.resolution + 1) ** 3

    @property
    def num_tets(self) -> int:
        return 6 * self.resolution**3

    @functools.cached_property
    def vertices(self) -> np.ndarray:
        """(V, 3) float32, V = (R + 1)^3, x-major (index = (i n + j) n + k, n = R + 1)."""
        axis = np.linspace(-self.bound, self.bound, self.resolution + 1, dtype=np.float32)
        return np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)

    @functools.cached_property
    def _cell_base(self) -> np.ndarray:
        r, n = self.resolution, self.resolution + 1
        cell = np.arange(r, dtype=np.int32)
        return (
            cell[:, None, None] * n * n + cell[None, :, None] * n + cell[None, None, :]
        ).reshape(-1, 1, 1)

    @property
    def _strides(self) -> np.ndarray:
        n = self.resolution + 1
        return np.array([n * n, n, 1])

    @functools.cached_property
    def tets(self) -> np.ndarray:
        """(T, 4) int32, T = 6 R^3, positively oriented; tet id = 6 * cell + Kuhn index."""
        return (self._cell_base + (KUHN_OFFSETS @ self._strides).astype(np.int32)).reshape(-1, 4)

    @functools.cached_property
    def tet_edges(self) -> np.ndarray:
        """(T, 6) int32 global edge ids of each tet's local edges (TET_EDGES order)."""
        lo = (KUHN_EDGE_LO @ self._strides).astype(np.int32)
        return (7 * (self._cell_base + lo) + KUHN_EDGE_KIND.astype(np.int32)).reshape(-1, 6)

    @functools.cached_property
    def edges(self) -> np.ndarray:
        """(7 V, 2) int32 endpoints by edge id; ids that leave the grid are loops (a, a)."""
        n = self.resolution + 1
        idx = np.arange(n, dtype=np.int32)
        fits = np.ones((n, n, n, 7), bool)
        for ax in range(3):
            coord = idx.reshape([-1 if a == ax else 1 for a in range(3)] + [1])
            fits &= coord + EDGE_OFFSETS[:, ax] < n
        start = np.arange(n**3, dtype=np.int32).reshape(n, n, n, 1)
        end = np.where(fits, start + (EDGE_OFFSETS @ self._strides).astype(np.int32), start)
        return np.stack([np.broadcast_to(start, end.shape), end], -1).reshape(-1, 2)


@functools.lru_cache(maxsize=4)
def build_tet_grid(resolution: int, bound: float = 1.0) -> TetGrid:
    """Tet grid with `resolution` cubes per axis over [-bound, bound]^3 (cached)."""
    if resolution < 1:
        raise ValueError(f"tet grid resolution must be >= 1, got {resolution}")
    if not bound > 0:
        raise ValueError(f"tet grid bound must be > 0, got {bound}")
    if 7 * (resolution + 1) ** 3 >= 2**31:
        raise ValueError(f"tet grid resolution {resolution} is too large for int32 edge ids")
    return TetGrid(int(resolution), float(bound))


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


def locate(grid: TetGrid, points: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The tet of the grid holding each point and its barycentric coordinates (traceable).

    In a cube with fractional coordinates f, the Kuhn tet of the axis order that sorts f
    descending (pi) holds the point: its corners walk c, c + e_pi1, c + e_pi1 + e_pi2, c + 1,
    with weights 1 - f_pi1, f_pi1 - f_pi2, f_pi2 - f_pi3, f_pi3. Returns `(ids (N, 4) int32
    vertex indices, bary (N, 4))`; points outside the box are clamped to its boundary cells
    (their weights then extrapolate). The piecewise-linear field `sum(bary * values[ids])` is the
    one marching tetrahedra extracts the zero set of.
    """
    points = jnp.asarray(points, jnp.float32)
    r, n = grid.resolution, grid.resolution + 1
    u = (points + grid.bound) / grid.cell_size
    cell = jnp.clip(jnp.floor(u), 0, r - 1).astype(jnp.int32)
    frac = u - cell
    order = jnp.argsort(-frac, axis=-1)
    f = jnp.take_along_axis(frac, order, axis=-1)
    bary = jnp.stack([1.0 - f[:, 0], f[:, 0] - f[:, 1], f[:, 1] - f[:, 2], f[:, 2]], axis=-1)
    step = jax.nn.one_hot(order, 3, dtype=jnp.int32)  # (N, 3 steps, 3 axes)
    corners = (cell, cell + step[:, 0], cell + step[:, 0] + step[:, 1], cell + 1)
    ids = jnp.stack([(c[:, 0] * n + c[:, 1]) * n + c[:, 2] for c in corners], axis=-1)
    return ids, bary


def tet_volumes(vertices: jax.Array, tets: jax.Array) -> jax.Array:
    """Signed volume of every tet (positive for the grid's orientation)."""
    p = vertices[tets]
    return jnp.linalg.det(p[:, 1:] - p[:, :1]) / 6.0
