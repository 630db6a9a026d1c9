"""Our UV unwrapper (texture/charts.py) and the atlas measures (texture/atlas_quality.py): the
measures against hand-computed atlases; the unwrapper's atlas on a marching-tets mesh with thin
parts, a mesh of many components, a decimated scan and a sheet that folds over itself in every
axis projection: no overlap, every face a positive UV area, distortion within bounds."""

import numpy as np
import pytest
import trimesh

from data_pipelines.synthetic.shapes import make_object, with_faults
from nd3d_jax.errors import UserError
from nd3d_jax.geometry import analytic
from nd3d_jax.geometry.extract import mesh_from_sdf
from nd3d_jax.texture import TextureSettings, unwrap
from nd3d_jax.texture.atlas_quality import atlas_quality, coverage

SIZE = 256


def quality(atlas):
    return atlas_quality(atlas.vertices, atlas.faces, atlas.uvs, atlas.size)


# ------------------------------------------------------------------ the measures, by hand
def test_quality_of_hand_made_atlases():
    # A unit square in 3D mapped onto [0.25, 0.75]^2 of a 16-texel texture: the texel centres
    # (j + 0.5) / 16 inside are j = 4..11 on both axes, 64 of 256; no distortion.
    square = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], float)
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    uv = 0.25 + 0.5 * np.stack([square[:, 0], 1 - square[:, 1]], 1)  # v down: not mirrored
    q = atlas_quality(square, faces, uv, 16)
    assert q.utilisation == 64 / 256 and q.charts == 1
    assert (q.overlap_texels, q.fold_texels, q.degenerate_faces, q.flipped_faces) == (0, 0, 0, 0)
    assert q.mirrored_charts == 0
    assert q.area_distortion == pytest.approx(1.0) and q.angle_distortion == pytest.approx(1.0)
    # The same image mirrored: a mirrored chart, nothing else changes.
    assert atlas_quality(square, faces, uv * [-1, 1] + [1, 0], 16).mirrored_charts == 1

    # Two faces of equal area, one flat, one tilted by theta, projected onto the xy plane:
    # s1 = 1, s2 = cos(theta), so angle distortion (1 + 1 / cos) / 2 and area ratios 1 / c,
    # cos / c with c = (1 + cos) / 2.
    theta = 0.6
    c, s = np.cos(theta), np.sin(theta)
    tri = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [2, 0, 0], [2 + c, 0, s], [2, 1, 0]])
    faces = np.array([[0, 1, 2], [3, 4, 5]])
    uv = np.stack([tri[:, 0], 1 - tri[:, 1]], 1) / 4
    q = atlas_quality(tri, faces, uv, 64)
    mean = (1 + c) / 2
    assert q.angle_distortion == pytest.approx((1 + 1 / c) / 2, rel=1e-9)
    assert q.area_distortion == pytest.approx((1 / mean + mean / c) / 2, rel=1e-9)

    # Overlaps: a second chart on top of the first counts its texels as overlap; a face of the
    # same chart folded back over its neighbour counts as a fold and as flipped.
    two = np.concatenate([square, square])
    faces2 = np.array([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]])
    q = atlas_quality(two, faces2, 0.25 + 0.5 * two[:, :2], 16)
    assert q.overlap_texels == 64 and q.fold_texels == 0 and q.charts == 2
    fold = np.array([[0.2, 0.2], [0.8, 0.2], [0.2, 0.8], [0.4, 0.4]])  # face 2 folds over 1
    q = atlas_quality(np.zeros((4, 3)) + np.eye(4, 3), np.array([[0, 1, 2], [2, 1, 3]]), fold, 32)
    count, _ = coverage(fold, np.array([[2, 1, 3]]), 32)
    assert q.fold_texels == count.sum() > 0 and q.flipped_faces == 1 and q.overlap_texels == 0


def test_coverage_counts_each_centre_once():
    """A Delaunay triangulation of random points covers its convex hull: every texel centre
    inside exactly once (half-open edges), none outside; each triangle its own area."""
    from scipy.spatial import Delaunay

    points = np.random.default_rng(0).uniform(size=(200, 2))
    tri = Delaunay(points)
    count, _ = coverage(points, tri.simplices, 96)
    centres = (np.stack(np.meshgrid(np.arange(96), np.arange(96)), -1) + 0.5) / 96
    inside = tri.find_simplex(centres.reshape(-1, 2)).reshape(96, 96) >= 0  # (x, y) = (j, i)
    np.testing.assert_array_equal(count, inside)
    one, _ = coverage(points, tri.simplices[:1], 96)
    (ax, ay), (bx, by) = points[tri.simplices[0, 1:]] - points[tri.simplices[0, 0]]
    area = abs(ax * by - ay * bx) / 2
    assert abs(one.sum() - area * 96 * 96) < 2 * 96 * np.ptp(points[tri.simplices[0]], 0).sum()


# ------------------------------------------------------------------ the unwrapper
def check_atlas(mesh, size=SIZE, padding=2):
    """Unwraps `mesh` with our unwrapper and checks what every atlas must satisfy."""
    settings = TextureSettings(size=size, padding=padding, max_faces=0)
    atlas, base = unwrap(mesh, settings)
    assert base is mesh
    np.testing.assert_array_equal(atlas.source_vertex[atlas.faces], np.asarray(mesh.faces))
    np.testing.assert_array_equal(atlas.vertices, np.float32(mesh.vertices)[atlas.source_vertex])
    assert atlas.uvs.dtype == np.float32 and atlas.uvs.min() >= 0 and atlas.uvs.max() <= 1
    q = quality(atlas)
    # No texel claimed twice, every face of positive 3D area a positive (not mirrored) UV area.
    assert (q.overlap_texels, q.fold_texels, q.degenerate_faces, q.flipped_faces) == (0, 0, 0, 0)
    assert q.mirrored_charts == 0
    return atlas, q


def test_sphere_is_the_box_projection():
    """On a sphere every normal direction is equally common: the charts are the 6 cube faces
    and the distortion is the box projection's, E[1 / m] and E[max(m / E m, E m / m)] with m
    the largest |component| of a uniformly random unit normal (Monte Carlo, 1e6 samples)."""
    n = np.random.default_rng(0).normal(size=(1_000_000, 3))
    m = np.abs(n).max(1) / np.linalg.norm(n, axis=1)
    _, q = check_atlas(trimesh.creation.icosphere(subdivisions=3))
    assert q.charts == 6
    assert q.angle_distortion == pytest.approx(np.mean(1 / m), rel=0.005)  # 1.221
    assert q.area_distortion == pytest.approx(np.mean(np.maximum(m / m.mean(), m.mean() / m)),
                                              rel=0.005)  # fmt: skip
    assert q.utilisation > 0.5


def table_sdf(p):
    """A table: a 1.2 x 0.7 x 0.08 top on four 0.1-thick legs (thin parts at 32^3 cells)."""
    d = analytic.box((0.6, 0.35, 0.04))(p - np.array([0.0, 0.0, 0.3], np.float32))
    for sx in (-1, 1):
        for sy in (-1, 1):
            leg = analytic.box((0.05, 0.05, 0.3))
            d = np.minimum(d, leg(p - np.array([sx * 0.5, sy * 0.25, -0.04], np.float32)))
    return d


def test_marching_tets_mesh_with_thin_parts():
    """Marching tets at 32^3 (the refinement's grid program of tests/test_refine.py)."""
    mesh = mesh_from_sdf(lambda p: np.asarray(table_sdf(np.asarray(p))), 32)
    assert len(mesh.faces) > 3000
    _, q = check_atlas(mesh)
    # Flat sides: far below the sphere's 1.22 / 1.11 (uniformly spread normals).
    assert q.angle_distortion < 1.1 and q.area_distortion < 1.1
    assert q.utilisation > 0.45


def test_many_components():
    """60 small boxes, spheres and cylinders at random places and angles."""
    rng = np.random.default_rng(1)
    parts = []
    for i in range(60):
        part = [
            trimesh.creation.box(extents=rng.uniform(0.05, 0.2, 3)),
            trimesh.creation.icosphere(subdivisions=1, radius=rng.uniform(0.03, 0.1)),
            trimesh.creation.cylinder(rng.uniform(0.02, 0.06), rng.uniform(0.05, 0.3)),
        ][i % 3]
        part.apply_transform(trimesh.transformations.random_rotation_matrix(rng.random(3)))
        part.apply_translation(rng.uniform(-1, 1, 3))
        parts.append(part)  # fmt: skip
    mesh = trimesh.util.concatenate(parts)
    _, q = check_atlas(mesh)
    assert q.charts >= 60 * 3
    assert q.angle_distortion < 1.25 and q.area_distortion < 1.15  # the sphere's, + 3%


def test_decimated_scan():
    """A synthetic sofa made scan-like (subdivided, jittered, holes) and quadric-decimated:
    irregular slivers, a non-watertight surface."""
    mesh = make_object("sofa", 3)
    v, f = trimesh.remesh.subdivide_to_size(mesh.vertices, mesh.faces, 0.05)
    rng = np.random.default_rng(2)
    scan = trimesh.Trimesh(v + rng.normal(0, 0.004, v.shape), f)
    scan.visual.vertex_colors = np.tile([200, 100, 50, 255], (len(scan.vertices), 1))
    scan = with_faults(scan, ["holes"], seed=2)
    scan = scan.simplify_quadric_decimation(face_count=3000)
    mesh = trimesh.Trimesh(scan.vertices, scan.faces)
    assert not mesh.is_watertight and len(mesh.faces) <= 3000
    _, q = check_atlas(mesh)
    assert q.angle_distortion < 1.25 and q.area_distortion < 1.15


def test_a_sheet_folding_over_itself():
    """A helical ramp (1.5 turns) faces +z everywhere, and its projection along z covers
    itself: charts must be cut until nothing overlaps."""
    r, phi = np.meshgrid(np.linspace(0.3, 1.0, 6), np.linspace(0, 3 * np.pi, 120))
    v = np.stack([r * np.cos(phi), r * np.sin(phi), 0.1 * phi], -1).reshape(-1, 3)
    i = np.arange(119)[:, None] * 6 + np.arange(5)[None]
    quads = np.stack([i, i + 1, i + 7, i + 6], -1).reshape(-1, 4)
    mesh = trimesh.Trimesh(v, np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]]))
    _, q = check_atlas(mesh)
    assert q.charts >= 2


def test_more_charts_than_texels():
    """300 separate tetrahedra (1200 charts) cannot be 3 texels apart in 16 x 16 texels."""
    tet = trimesh.creation.box().convex_hull
    tet = trimesh.Trimesh(tet.vertices[:4], [[0, 1, 2], [0, 3, 1], [0, 2, 3], [1, 3, 2]])
    mesh = trimesh.util.concatenate([tet.copy().apply_translation([2 * i, 0, 0])
                                     for i in range(300)])  # fmt: skip
    with pytest.raises(UserError, match="texture.size"):
        unwrap(mesh, TextureSettings(size=16, padding=3, max_faces=0))
