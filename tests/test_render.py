import jax
import jax.numpy as jnp
import numpy as np
import pytest
import trimesh

from benchmarks.render import ray_cast_depth
from nd3d_jax.compile_cache import CompileCounter
from nd3d_jax.render.camera import (
    focal_from_fov,
    fov_from_focal,
    look_at,
    opencv_to_opengl,
    opengl_to_opencv,
    orthographic,
    pinhole,
    project,
    project_columns,
)
from nd3d_jax.render.maps import (
    depth_map,
    grid_layout,
    grid_split,
    normal_map,
    plan_views,
    rasterize_views,
)
from nd3d_jax.render.rasterize import TILES, interpolate, plan, rasterize, work_counts

SQUARE_V = jnp.array([[-0.5, -0.5, 0], [0.5, -0.5, 0], [0.5, 0.5, 0], [-0.5, 0.5, 0]], jnp.float32)
SQUARE_F = jnp.array([[0, 1, 2], [0, 2, 3]], jnp.int32)


def _raster(cam, v, f, **kw):
    return jax.jit(lambda v, f: rasterize(cam, v, f, **kw))(jnp.asarray(v), jnp.asarray(f))


def test_look_at_and_conventions():
    c2w = look_at(jnp.array([0.0, 0.0, 3.0]), up=(0, 1, 0))
    np.testing.assert_allclose(c2w, [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 3], [0, 0, 0, 1]])
    # OpenCV looks down +Z with +Y down: the same camera has those axes flipped.
    cv = opengl_to_opencv(c2w)
    np.testing.assert_allclose(cv[:3, 2], [0, 0, -1])
    np.testing.assert_allclose(cv[:3, 1], [0, -1, 0])
    np.testing.assert_allclose(opencv_to_opengl(cv), c2w)
    assert fov_from_focal(focal_from_fov(0.7, 512), 512) == pytest.approx(0.7)
    assert focal_from_fov(np.pi / 2, 100) == pytest.approx(50.0)
    with pytest.raises(ValueError, match="parallel"):
        look_at(jnp.array([0.0, 0.0, 3.0]), up=(0, 0, 1))


def test_projection_by_hand():
    cam = pinhole(look_at(jnp.array([0.0, 0.0, 2.0]), up=(0, 1, 0)), 100, 80, focal=50.0)
    uv, depth = project(cam, jnp.array([[0.0, 0.0, 0.0], [0.4, 0.2, 0.0], [0.0, 0.0, 1.0]]))
    np.testing.assert_allclose(uv, [[50, 40], [60, 35], [50, 40]], atol=1e-5)
    np.testing.assert_allclose(depth, [2.0, 2.0, 1.0])
    pts = jnp.array([[0.0, 0.0, 0.0], [0.4, 0.2, 0.0], [0.0, 0.0, 1.0]])
    for c in (cam, orthographic(cam.c2w, 100, 80, extent=2.0)):
        u, v, d = project_columns(c, pts.T)
        uv, depth = project(c, pts)
        np.testing.assert_allclose(np.stack([u, v], -1), uv, atol=1e-5)
        np.testing.assert_allclose(d, depth, atol=1e-6)


def test_cameras_are_built_on_the_host_without_compiling():
    # eager jnp ops on host inputs compile one program per shape (jnp.asarray among them)
    eyes = np.array([[0.3, -2.5, 0.8], [2.0, 0.5, 0.3], [0.0, 1.0, 3.0]])
    counter = CompileCounter()
    try:
        cams = pinhole(look_at(eyes), 17, 13, fov=0.7)
        ortho = orthographic(look_at(eyes[0]), 19, 11, extent=2.0)
    finally:
        counter.close()
    assert counter.lowered == 0
    assert cams.c2w.shape == (3, 4, 4) and cams.c2w.dtype == jnp.float32
    np.testing.assert_allclose(cams.focal, [focal_from_fov(0.7, 17)] * 3, rtol=1e-6)
    np.testing.assert_allclose(cams.principal, [[8.5, 6.5]] * 3)
    np.testing.assert_allclose(ortho.focal, 9.5)
    assert ortho.principal.shape == (2,)
    # traced poses stay traceable
    focal = jax.jit(lambda c2w, f: pinhole(c2w, 17, 13, focal=f).focal)(cams.c2w, 3.0)
    np.testing.assert_allclose(focal, [3.0] * 3)


def test_unit_square_exact_coverage_and_depth():
    c2w = look_at(jnp.array([0.0, 0.0, 2.0]), up=(0, 1, 0))
    # Orthographic, 2 world units over 8 pixels: the square covers the central 4x4 pixels.
    fr = _raster(orthographic(c2w, 8, 8, extent=2.0), SQUARE_V, SQUARE_F)
    expected = np.zeros((8, 8), bool)
    expected[2:6, 2:6] = True
    np.testing.assert_array_equal(fr.mask, expected)
    np.testing.assert_allclose(depth_map(fr), 2.0 * expected)
    # Pinhole with a 90 degree fov at distance 2: the square spans 1/4 of the width.
    fr = _raster(pinhole(c2w, 64, 64, fov=np.pi / 2), SQUARE_V, SQUARE_F)
    expected = np.zeros((64, 64), bool)
    expected[24:40, 24:40] = True
    np.testing.assert_array_equal(fr.mask, expected)
    np.testing.assert_allclose(fr.depth[expected], 2.0, rtol=1e-6)
    np.testing.assert_allclose(jnp.sum(fr.bary, -1)[expected], 1.0, rtol=1e-6)
    assert int(fr.num_work) <= fr.work_budget


def test_cube_faces_and_depth():
    cube = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    c2w = look_at(jnp.array([0.0, 0.0, 3.0]), up=(0, 1, 0))
    fr = _raster(orthographic(c2w, 16, 16, extent=2.0), cube.vertices, cube.faces)
    expected = np.zeros((16, 16), bool)
    expected[4:12, 4:12] = True
    np.testing.assert_array_equal(fr.mask, expected)
    np.testing.assert_allclose(fr.depth[expected], 2.5, rtol=1e-6)  # front face at z = 0.5
    front = cube.face_normals[np.asarray(fr.face_id)[expected]]
    np.testing.assert_allclose(front, np.tile([0, 0, 1.0], (64, 1)), atol=1e-6)


def test_sphere_normal_map_matches_analytic():
    sphere = trimesh.creation.icosphere(subdivisions=5, radius=0.7)
    c2w = look_at(jnp.array([0.3, -2.5, 0.8]))
    cam = pinhole(c2w, 96, 96, fov=0.7)
    v, f = jnp.asarray(sphere.vertices, jnp.float32), jnp.asarray(sphere.faces)
    fr = jax.jit(lambda: rasterize(cam, v, f))()
    n = normal_map(fr, v, f)
    # The analytic normal is the unit vector to the hit point, found from the depth.
    jj, ii = np.meshgrid(np.arange(96) + 0.5, np.arange(96) + 0.5)
    f_px = float(cam.focal)
    d_cam = np.stack([(jj - 48) / f_px, -(ii - 48) / f_px, -np.ones_like(jj)], -1)
    hit = np.asarray(c2w)[:3, 3] + np.asarray(fr.depth)[..., None] * (
        d_cam @ np.asarray(c2w)[:3, :3].T
    )
    analytic = hit / np.linalg.norm(hit, axis=-1, keepdims=True)
    m = np.asarray(fr.mask)
    cos = np.sum(np.asarray(n)[m] * analytic[m], axis=-1)
    assert m.sum() > 2000 and np.min(cos) > 0.995
    np.testing.assert_allclose(np.linalg.norm(hit[m], axis=-1), 0.7, atol=0.005)


def test_agrees_with_trimesh_ray_casting():
    rng = np.random.default_rng(0)
    blob = trimesh.creation.icosphere(subdivisions=3, radius=0.6)
    blob.vertices += rng.normal(scale=0.03, size=blob.vertices.shape)
    box = trimesh.creation.box((0.5, 0.5, 0.5))
    box.apply_translation([0.5, 0.3, 0.2])
    mesh = trimesh.util.concatenate([blob, box])
    size = 96
    c2w = look_at(jnp.array([2.0, -2.5, 1.0]))
    cam = pinhole(c2w, size, size, fov=0.9)
    fr = _raster(cam, mesh.vertices.astype(np.float32), mesh.faces)
    ref = ray_cast_depth(mesh, np.asarray(c2w), float(cam.focal), size).ravel()
    hit_ref = ref > 0
    hit, ours = np.asarray(fr.mask).ravel(), np.asarray(fr.depth).ravel()
    agree = (hit == hit_ref) & (~hit | (np.abs(ours - ref) < 1e-3))
    assert hit.sum() > 1000 and agree.mean() > 0.99


def test_batched_views_and_objects_with_padding():
    cube = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    v = jnp.asarray(cube.vertices, jnp.float32)
    f = jnp.asarray(cube.faces, jnp.int32)
    eyes = jnp.array([[0.0, 0, 3], [3, 0, 0], [0, -3, 0], [-3, 0, 0]])
    # A slightly tilted up vector: (0, 1, 0) would be parallel to the view from (0, -3, 0).
    cams = orthographic(look_at(eyes, up=(0, 1, 0.01)), 16, 16, extent=2)
    # Two objects: the cube, and the cube with half its faces masked out (padding).
    masks = jnp.stack([jnp.ones(12, bool), jnp.arange(12) < 6])
    run = jax.jit(jax.vmap(lambda m: rasterize_views(cams, v, f, m)))
    fr = run(masks)
    assert fr.face_id.shape == (2, 4, 16, 16) and fr.bary.shape == (2, 4, 16, 16, 3)
    full = np.asarray(fr.mask[0]).sum(axis=(1, 2))
    assert np.all(full == 64)
    assert np.all(np.asarray(fr.face_id[1]) < 6)


def test_overflow_is_reported():
    c2w = look_at(jnp.array([0.0, 0.0, 2.0]), up=(0, 1, 0))
    fr = _raster(pinhole(c2w, 64, 64, fov=np.pi / 2), SQUARE_V, SQUARE_F, work_budget=1, chunk=1)
    assert bool(fr.overflow) and int(fr.num_work) == 8


def test_work_counts_size_each_tile_exactly_and_plan_picks_the_cheapest():
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.7)
    cam = pinhole(look_at(jnp.array([0.3, -2.5, 0.8])), 64, 48, fov=0.7)
    v, f = jnp.asarray(sphere.vertices, jnp.float32), jnp.asarray(sphere.faces)
    counts = np.asarray(jax.jit(lambda v, f: work_counts(cam, v, f))(v, f))
    assert counts.shape == (len(TILES),) and np.all(np.diff(counts) < 0)  # bigger tiles, fewer
    ids = []
    for t, c in zip(TILES, counts, strict=True):
        fr = _raster(cam, v, f, tile=t, work_budget=int(c))
        assert int(fr.num_work) == c and not bool(fr.overflow)
        ids.append(np.asarray(fr.face_id))
    for other in ids[1:]:  # the same image whatever the tile
        np.testing.assert_array_equal(other, ids[0])
    # By hand: items x (12 + tile^2) = 13000, 4800, 2800, 6840 -> tile 4; the budget is the
    # bucket above 100 (128; 96 is too small).
    assert plan([1000, 300, 100, 90]) == (4, 128)
    assert plan([[1000, 300, 100, 90], [10, 10, 10, 10]]) == (4, 128)  # per tile, the largest
    assert plan([1000, 300, 200, 150]) == (2, 384)  # 13000, 4800, 5600, 11400; 1.5 x 256
    # a batch of views: the plan of the largest count per tile, which none overflows
    cams = pinhole(look_at(np.array([[0.3, -2.5, 0.8], [1.5, 0.2, 0.2]])), 64, 48, fov=0.7)
    raster = plan_views(cams, v, f, None)
    each = jax.vmap(lambda c: work_counts(c, v, f))(cams)  # (2, T)
    assert (raster["tile"], raster["work_budget"]) == plan(each)
    frags = rasterize_views(cams, v, f, **raster)
    assert not np.any(frags.overflow) and np.max(frags.num_work) <= raster["work_budget"]


def test_without_depth_test_a_flat_layout_rasterizes_the_same():
    # A UV-atlas-like layout: a 6 x 6 grid of squares in one plane, two triangles each.
    xs = np.linspace(-0.6, 0.6, 7)
    vv = np.array([[x, y, 0.0] for y in xs for x in xs], np.float32)
    corner = np.array([i * 7 + j for i in range(6) for j in range(6)])
    ff = np.concatenate([np.stack([corner, corner + 1, corner + 8], -1),
                         np.stack([corner, corner + 8, corner + 7], -1)])  # fmt: skip
    ff = ff.astype(np.int32)
    cam = orthographic(look_at(jnp.array([0.0, 0.0, 2.0]), up=(0, 1, 0)), 40, 40, extent=1.5)
    with_z = _raster(cam, vv, ff)
    without = _raster(cam, vv, ff, depth_test=False)
    np.testing.assert_array_equal(without.face_id, with_z.face_id)
    np.testing.assert_allclose(without.bary, with_z.bary, atol=1e-6)
    np.testing.assert_allclose(without.depth, with_z.depth, atol=1e-6)
    assert np.asarray(with_z.mask).mean() > 0.5


def test_gradients_flow_to_attributes():
    c2w = look_at(jnp.array([0.0, 0.0, 2.0]), up=(0, 1, 0))
    cam = pinhole(c2w, 32, 32, fov=np.pi / 2)
    fr = rasterize(cam, SQUARE_V, SQUARE_F)
    colors = jnp.ones((4, 3))
    g = jax.grad(lambda c: jnp.sum(interpolate(fr, SQUARE_F, c)))(colors)
    # Each vertex's gradient is the sum of its barycentric weights over covered pixels.
    assert float(jnp.sum(g)) == pytest.approx(3 * int(fr.mask.sum()), rel=1e-5)
    assert np.all(np.asarray(g) > 0)


def test_grid_layout_round_trip():
    views = np.arange(4 * 2 * 3 * 1).reshape(4, 2, 3, 1)
    grid = grid_layout(views)
    assert grid.shape == (4, 6, 1)
    np.testing.assert_array_equal(grid[:2, 3:], views[1])
    np.testing.assert_array_equal(grid[2:, :3], views[2])
    np.testing.assert_array_equal(grid_split(grid), views)
    with pytest.raises(ValueError, match="do not fill"):
        grid_layout(views[:3], rows=2, cols=2)


def test_render_cli(tmp_path):
    from PIL import Image

    from nd3d_jax.render.__main__ import main

    path = tmp_path / "torus.obj"
    trimesh.creation.torus(0.6, 0.25).export(path)
    for kind in ("normal", "depth", "color", "shaded"):
        out = tmp_path / f"{kind}.png"
        main([str(path), f"--out={out}", "--size=48", "--views=4", f"--kind={kind}", "--up=z"])
        img = np.asarray(Image.open(out))
        assert img.shape == (96, 96, 3)
        # The object fills part of every view, the background the rest.
        for view in grid_split(img):
            fg = np.any(view != view[0, 0], axis=-1).mean()
            assert 0.05 < fg < 0.9
    with pytest.raises(SystemExit):
        main([str(tmp_path / "missing.obj"), f"--out={tmp_path}/x.png"])


def test_shaded_preview_lights_the_colours_from_each_camera():
    from nd3d_jax.render.preview import render_preview

    mesh = trimesh.creation.icosphere(4, radius=0.5)
    mesh.visual.vertex_colors = np.tile([200, 100, 50, 255], (len(mesh.vertices), 1))
    flat = render_preview(mesh, 64, 1, "color", up="z").astype(float)
    lit = render_preview(mesh, 64, 1, "shaded", up="z").astype(float)
    centre, edge = (32, 32), flat.shape[0] // 2
    # facing the camera: fully lit (n . to_camera ~ 1); towards the limb: darker
    np.testing.assert_allclose(lit[centre], flat[centre], atol=4)
    row = lit[edge]
    hit = np.where(np.any(np.abs(flat[edge] - 255) > 1, axis=-1))[0]
    assert row[hit[0], 0] < 0.8 * row[32, 0] and row[hit[0], 0] < 0.8 * flat[edge, hit[0], 0]
    np.testing.assert_array_equal(lit[0, 0], [255, 255, 255])  # background untouched
