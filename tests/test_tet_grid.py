import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nd3d_jax.geometry.tet_grid import (
    DEFAULT_MAX_DEFORM,
    TET_EDGES,
    build_tet_grid,
    deform_vertices,
    locate,
    tet_volumes,
)


@pytest.mark.parametrize("resolution", [1, 3, 8])
def test_counts_volumes_and_uniqueness(resolution):
    grid = build_tet_grid(resolution, bound=1.5)
    n = resolution + 1
    assert grid.vertices.shape == (n**3, 3)
    assert grid.tets.shape == (6 * resolution**3, 4)
    assert grid.vertices.min() == -1.5 and grid.vertices.max() == 1.5
    assert grid.cell_size == pytest.approx(3.0 / resolution)
    vol = np.asarray(tet_volumes(grid.vertices, grid.tets))
    assert vol.min() > 0  # all positively oriented
    np.testing.assert_allclose(vol, grid.cell_size**3 / 6, rtol=1e-5)
    assert vol.sum() == pytest.approx(27.0, rel=1e-5)  # the whole cube, no overlap
    assert len(np.unique(np.sort(grid.tets, axis=1), axis=0)) == len(grid.tets)
    assert np.all(np.bincount(grid.tets.ravel(), minlength=n**3) > 0)  # every vertex used


def test_conforming_faces():
    """Each tet face is shared by two tets, or lies on the boundary of the cube."""
    grid = build_tet_grid(4)
    faces = np.sort(grid.tets[:, [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]]], axis=-1)
    counts = collections.Counter(map(tuple, faces.reshape(-1, 3)))
    assert set(counts.values()) <= {1, 2}
    boundary = np.array([f for f, c in counts.items() if c == 1])
    on_wall = np.any(np.all(np.abs(grid.vertices[boundary]) == 1.0, axis=1), axis=1)
    assert on_wall.all()
    assert len(boundary) == 6 * 2 * 4**2  # two triangles per boundary square


def test_edges_are_shared_and_consistent():
    grid = build_tet_grid(5)
    ends = grid.edges[grid.tet_edges]  # (T, 6, 2)
    np.testing.assert_array_equal(np.sort(ends, -1), np.sort(grid.tets[:, TET_EDGES], -1))
    # One id per undirected edge: distinct vertex pairs never share an id and vice versa.
    pairs = np.sort(grid.tets[:, TET_EDGES], -1).reshape(-1, 2)
    ids = grid.tet_edges.reshape(-1)
    uniq_pairs = {tuple(p): i for p, i in zip(pairs.tolist(), ids.tolist(), strict=True)}
    assert len(set(uniq_pairs.values())) == len(uniq_pairs)
    # Euler characteristic of the tetrahedralised ball: V - E + F - T = 1.
    faces = np.sort(grid.tets[:, [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]]], -1)
    n_faces = len(np.unique(faces.reshape(-1, 3), axis=0))
    euler = grid.num_vertices - len(uniq_pairs) + n_faces - grid.num_tets
    assert euler == 1
    loops = grid.edges[:, 0] == grid.edges[:, 1]
    assert np.setdiff1d(np.arange(len(grid.edges))[~loops], ids).size == 0  # no stray edges


def test_deformation_is_bounded_and_keeps_orientation():
    grid = build_tet_grid(6)
    huge = 100.0 * jax.random.normal(jax.random.key(0), grid.vertices.shape)
    moved = deform_vertices(jnp.asarray(grid.vertices), huge, grid.cell_size)
    bound = DEFAULT_MAX_DEFORM * grid.cell_size
    assert float(jnp.max(jnp.abs(moved - grid.vertices))) <= bound * (1 + 1e-6)
    rest = grid.cell_size**3 / 6
    assert (
        float(jnp.min(tet_volumes(moved, grid.tets))) >= (1 - 6 * DEFAULT_MAX_DEFORM) * rest * 0.999
    )
    # The worst case is a corner of the displacement box: +-f h on every axis.
    f = DEFAULT_MAX_DEFORM
    corners = (
        np.sign(np.random.default_rng(0).normal(size=grid.vertices.shape)) * f * grid.cell_size
    )
    vol = np.asarray(tet_volumes(grid.vertices + corners, grid.tets))
    assert vol.min() == pytest.approx((1 - 6 * f) * rest, rel=1e-3)
    # Small displacements pass through unchanged (soft clamp is the identity near 0).
    tiny = 1e-4 * jnp.ones_like(huge)
    np.testing.assert_allclose(deform_vertices(grid.vertices, tiny, grid.cell_size),
                               grid.vertices + 1e-4, atol=1e-7)  # fmt: skip


def test_bad_arguments():
    with pytest.raises(ValueError, match="resolution"):
        build_tet_grid(0)
    with pytest.raises(ValueError, match="bound"):
        build_tet_grid(4, bound=-1.0)


def test_locate_finds_the_grid_tet_and_interpolates_linear_fields():
    grid = build_tet_grid(5, bound=0.8)
    points = np.random.default_rng(0).uniform(-0.8, 0.8, (2000, 3)).astype(np.float32)
    ids, bary = (np.asarray(a) for a in locate(grid, points))
    # the 4 ids are one of the grid's tets, and the weights reproduce the point
    tets = {tuple(sorted(t)) for t in grid.tets}
    assert all(tuple(sorted(t)) in tets for t in ids)
    assert bary.min() >= -1e-6
    np.testing.assert_allclose(bary.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.einsum("nk,nkd->nd", bary, grid.vertices[ids]), points, atol=1e-5)
    # a linear field is reproduced exactly by its values at the grid vertices
    values = grid.vertices @ np.array([0.3, -1.2, 0.7], np.float32) + 0.1
    np.testing.assert_allclose(
        np.sum(bary * values[ids], -1), points @ np.array([0.3, -1.2, 0.7]) + 0.1, atol=1e-5
    )
