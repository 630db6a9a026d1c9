import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nd3d_jax.geometry import analytic
from nd3d_jax.geometry.extract import (
    SurfaceBudgetError,
    evaluate_on_grid,
    extract_mesh,
    mesh_from_sdf,
    to_trimesh,
)
from nd3d_jax.geometry.marching_tets import (
    TRI_COUNT,
    TRI_TABLE,
    marching_tetrahedra,
    marching_tetrahedra_on_grid,
)
from nd3d_jax.geometry.tet_grid import TET_EDGES, build_tet_grid, deform_vertices

SHAPES = {
    "sphere": (analytic.sphere(0.61), analytic.sphere_area_volume(0.61)),
    "torus": (analytic.torus(0.55, 0.27), analytic.torus_area_volume(0.55, 0.27)),
    "box": (analytic.box((0.53, 0.41, 0.33)), analytic.box_area_volume((0.53, 0.41, 0.33))),
}


def test_triangle_table_covers_every_case():
    for code in range(16):
        n_in = bin(code).count("1")
        assert TRI_COUNT[code] == {0: 0, 1: 1, 2: 2, 3: 1, 4: 0}[n_in]
        # The crossing edges (inside -> outside) are exactly the edges the triangles use.
        crossing = {s for s, (a, b) in enumerate(TET_EDGES) if (code >> a & 1) != (code >> b & 1)}
        used = set(TRI_TABLE[code, : TRI_COUNT[code]].ravel().tolist())
        assert used == crossing


def test_single_tet_by_hand():
    """One inside vertex at sdf -1, three outside at +1, +3, +1: known cut points."""
    verts = jnp.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], jnp.float32)
    sdf = jnp.array([-1.0, 1.0, 3.0, 1.0])
    tets = jnp.array([[0, 1, 2, 3]], jnp.int32)
    tet_edges = jnp.arange(6, dtype=jnp.int32)[None]
    edges = jnp.asarray(TET_EDGES)
    mt = jax.jit(marching_tetrahedra, static_argnames="max_faces")
    out = mt(verts, sdf, tets, tet_edges, edges, max_faces=4)
    assert int(out.num_faces) == 1 and int(out.num_vertices) == 3
    got = np.asarray(out.vertices[:3])
    np.testing.assert_allclose(got, [[0.5, 0, 0], [0, 0.25, 0], [0, 0, 0.5]], atol=1e-7)
    assert out.face_mask.tolist() == [True, False, False, False]
    tri = got[np.asarray(out.faces[0])]
    normal = np.cross(tri[1] - tri[0], tri[2] - tri[0])
    assert normal @ (tri.mean(0) - verts[0]) > 0  # points away from the inside vertex


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_analytic_shapes_at_r64(name):
    sdf_fn, (area, volume) = SHAPES[name]
    mesh = mesh_from_sdf(sdf_fn, resolution=64)
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.volume > 0  # outward winding gives positive signed volume
    assert mesh.volume == pytest.approx(volume, rel=0.01)
    # Sharp box edges are cut by the linear interpolation: area within 3% there.
    assert mesh.area == pytest.approx(area, rel=0.01 if name != "box" else 0.03)
    # Normals point outward: along the SDF gradient at each face centre (for the box, whose
    # gradient jumps at its edges, away from the centre of the convex shape).
    centers = mesh.triangles_center.astype(np.float32)
    grad = np.asarray(jax.vmap(jax.grad(lambda p: sdf_fn(p[None])[0]))(centers))
    outward = centers if name == "box" else grad
    assert np.all(np.sum(outward * mesh.face_normals, axis=1) > 0)
    assert len(mesh.split(only_watertight=False)) == 1


def test_gradients_match_finite_differences():
    grid = build_tet_grid(4)
    sdf = evaluate_on_grid(analytic.sphere(0.55), grid.vertices)
    assert np.abs(sdf).min() > 0.02  # no sign flips within the finite-difference step
    weights = jax.random.normal(jax.random.key(0), (256, 3))

    @jax.jit
    def f(s, v):
        out = marching_tetrahedra_on_grid(grid, s, v, max_faces=256)
        return jnp.sum(jnp.where(out.vertex_mask[:, None], out.vertices * weights, 0.0))

    verts = jnp.asarray(grid.vertices)
    g_s, g_v = jax.grad(f, argnums=(0, 1))(jnp.asarray(sdf), verts)
    assert np.all(np.isfinite(g_s)) and np.abs(g_s).max() > 0
    eps = 1e-3
    for seed in range(3):
        ks, kv = jax.random.split(jax.random.key(seed))
        u_s = jax.random.normal(ks, sdf.shape)
        u_v = jax.random.normal(kv, verts.shape)
        fd_s = (f(sdf + eps * u_s, verts) - f(sdf - eps * u_s, verts)) / (2 * eps)
        fd_v = (f(sdf, verts + eps * u_v) - f(sdf, verts - eps * u_v)) / (2 * eps)
        np.testing.assert_allclose(jnp.vdot(g_s, u_s), fd_s, rtol=2e-2, atol=1e-3)
        np.testing.assert_allclose(jnp.vdot(g_v, u_v), fd_v, rtol=2e-2, atol=1e-3)


def test_static_shapes_jit_and_vmap():
    grid = build_tet_grid(8)
    radii = jnp.array([0.3, 0.5, 0.7])
    sdfs = jnp.linalg.norm(grid.vertices, axis=-1)[None] - radii[:, None]

    @jax.jit
    def batched(s):
        return jax.vmap(lambda x: marching_tetrahedra_on_grid(grid, x, max_faces=2048))(s)

    out = batched(sdfs)
    assert out.vertices.shape == (3, 2048, 3) and out.faces.shape == (3, 2048, 3)
    counts = np.asarray(out.num_faces)
    assert counts[0] < counts[1] < counts[2] and not np.any(out.overflow)
    for i in range(3):
        single = to_trimesh(jax.tree.map(lambda x, i=i: x[i], out))
        assert single.is_watertight
        assert int(out.face_mask[i].sum()) == counts[i] == len(single.faces)


def test_overflow_is_reported_never_truncated():
    grid = build_tet_grid(16)
    sdf = evaluate_on_grid(analytic.sphere(0.7), grid.vertices)
    out = jax.jit(lambda s: marching_tetrahedra_on_grid(grid, s, max_faces=100))(sdf)
    assert bool(out.overflow) and int(out.num_faces) > 100
    with pytest.raises(SurfaceBudgetError, match="over the budget"):
        to_trimesh(out)
    # The host wrapper re-runs with a budget that fits: same mesh as a generous budget.
    small = extract_mesh(grid, sdf, max_faces=100)
    big = extract_mesh(grid, sdf, max_faces=1 << 16)
    assert len(small.faces) == len(big.faces) == int(out.num_faces)
    assert small.is_watertight


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (lambda s: s.at[3].set(jnp.nan), "NaN"),
        (lambda s: s.at[5].set(jnp.inf), "inf"),
        (lambda s: jnp.abs(s) + 0.1, "no value is negative"),
        (lambda s: -jnp.abs(s) - 0.1, "every value is negative"),
    ],
)
def test_bad_sdf_values(values, message):
    grid = build_tet_grid(4)
    sdf = values(jnp.asarray(evaluate_on_grid(analytic.sphere(0.5), grid.vertices)))
    with pytest.raises(ValueError, match=message):
        extract_mesh(grid, sdf)
    with pytest.raises(ValueError, match=message):
        mesh_from_sdf(lambda p, f=values: f(analytic.sphere(0.5)(p)), resolution=4)


def test_wrong_sdf_fn_shape():
    with pytest.raises(ValueError, match=r"\(N,\) values"):
        mesh_from_sdf(lambda p: p, resolution=4)


def test_shared_vertices_along_shared_edges():
    """Every mesh edge borders exactly two faces and no two vertices coincide."""
    mesh = mesh_from_sdf(analytic.torus(0.5, 0.2), resolution=24)
    edges = np.sort(mesh.edges, axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    assert np.all(counts == 2)
    rounded = np.round(mesh.vertices, 6)
    assert len(np.unique(rounded, axis=0)) == len(rounded)


@pytest.mark.parametrize("deformed", [False, True])
def test_grid_fast_path_equals_general_path(deformed):
    grid = build_tet_grid(10)
    sdf = evaluate_on_grid(analytic.torus(0.5, 0.22), grid.vertices)
    verts = grid.vertices
    if deformed:
        disp = 0.05 * jax.random.normal(jax.random.key(1), verts.shape)
        verts = deform_vertices(jnp.asarray(verts), disp, grid.cell_size)
    fast = jax.jit(lambda s, v: marching_tetrahedra_on_grid(grid, s, v, max_faces=4096))(
        sdf, verts if deformed else None
    )
    general = jax.jit(
        lambda s, v: marching_tetrahedra(
            v, s, grid.tets, grid.tet_edges, grid.edges, max_faces=4096
        )
    )(sdf, verts)
    for a, b in zip(fast, general, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_clipped_surface_warns():
    with pytest.warns(UserWarning, match="enlarge the bound"):
        mesh = mesh_from_sdf(analytic.sphere(1.2), resolution=8)
    assert not mesh.is_watertight
