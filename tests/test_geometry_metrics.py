"""Mesh R-CNN geometry metrics (nd3d_jax.metrics.geometry): spheres, cubes, scale, errors."""

import numpy as np
import pytest
import trimesh

from nd3d_jax.errors import UserError
from nd3d_jax.metrics.geometry import mesh_metrics, point_metrics


def _sphere(r):
    return trimesh.creation.icosphere(subdivisions=4, radius=r)


def test_concentric_spheres():
    r1, r2 = 1.0, 1.2
    m = mesh_metrics(_sphere(r1), _sphere(r2), samples=10000, taus=(0.1, 0.3), scale="none")
    # Every nearest distance is >= r2 - r1 and only slightly larger (sampling gap, faceting).
    assert m["chamfer_l2"] == pytest.approx(2 * (r2 - r1) ** 2, rel=0.05)
    assert m["normal_consistency"] > 0.99 and m["normal_consistency_signed"] > 0.99
    assert m["f1@0.1"] == 0.0 and m["precision@0.1"] == 0.0
    assert m["f1@0.3"] == pytest.approx(1.0, abs=1e-6)


def test_translated_unit_cube():
    # Unit cube A vs B = A shifted by d = 0.1 along x. Per-face E[d^2] for A's samples (hand
    # computation, area-weighted over 6 faces): x=-0.5 face 0.01; x=+0.5 face (inside B)
    # E[min(0.1, u, v)^2] with u, v ~ U[0, 0.5] = int_0^0.1 2t (1-2t)^2 dt = 0.0075333;
    # 4 side faces: zero except x < -0.4 (fraction 0.1, d ~ U[0, 0.1]) -> 0.1 * 0.01 / 3.
    per_dir = (0.01 + (0.01 - 8 / 3 * 1e-3 + 2e-4) + 4 * 0.1 * 0.01 / 3) / 6
    a = trimesh.creation.box()
    b = a.copy()
    b.apply_translation([0.1, 0.0, 0.0])
    m = mesh_metrics(a, b, samples=20000, taus=(0.05, 0.2), scale="none")
    assert m["chamfer_l2"] == pytest.approx(2 * per_dir, rel=0.05)
    # Within 0.05: x=+0.5 face P(min(u,v) < 0.05) = 1 - 0.9^2; side faces x > -0.45 -> 0.95.
    frac = (0.0 + 0.19 + 4 * 0.95) / 6
    assert m["precision@0.05"] == pytest.approx(frac, abs=0.02)
    assert m["recall@0.05"] == pytest.approx(frac, abs=0.02)
    assert m["f1@0.2"] == pytest.approx(1.0, abs=1e-6)


def test_scale_convention():
    gt = trimesh.creation.box(extents=(1.0, 0.5, 0.25))  # longest bbox edge 1 -> factor 10
    pred = _sphere(0.45)
    none = mesh_metrics(pred, gt, samples=3000, scale="none")
    rcnn = mesh_metrics(pred, gt, samples=3000, scale="mesh_rcnn")
    assert rcnn["chamfer_l2"] == pytest.approx(100 * none["chamfer_l2"], rel=1e-9)
    assert rcnn["normal_consistency"] == pytest.approx(none["normal_consistency"], abs=1e-12)
    # Scaling pred and gt by 3 leaves the normalised metrics unchanged; unnormalised Chamfer x9.
    pred3, gt3 = pred.copy(), gt.copy()
    pred3.apply_scale(3.0)
    gt3.apply_scale(3.0)
    rcnn3 = mesh_metrics(pred3, gt3, samples=3000, scale="mesh_rcnn")
    for key, value in rcnn.items():
        assert rcnn3[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    none3 = mesh_metrics(pred3, gt3, samples=3000, scale="none")
    assert none3["chamfer_l2"] == pytest.approx(9 * none["chamfer_l2"], rel=1e-9)


def test_identical_meshes():
    mesh = trimesh.creation.box()
    m = mesh_metrics(mesh, mesh, samples=5000)
    # Only the sampling gap remains: two independent uniform samples of area A (600 in the
    # edge-10 frame), N each -> E[nn d^2] = A / (pi N) per direction.
    assert m["chamfer_l2"] == pytest.approx(2 * 600 / (np.pi * 5000), rel=0.1)
    pts, nrm = trimesh.sample.sample_surface(mesh, 500, seed=0)
    same = point_metrics(pts, mesh.face_normals[nrm], pts, mesh.face_normals[nrm], taus=(1e-9,))
    assert same["chamfer_l2"] == 0.0 and same["normal_consistency"] == pytest.approx(1.0)
    assert m["normal_consistency"] > 0.95  # only pairs across the box edges disagree
    # P(nn distance < t) = 1 - exp(-pi rho t^2), rho = N / A (2D Poisson sampling).
    for t in (0.1, 0.3, 0.5):
        assert m[f"f1@{t}"] == pytest.approx(1 - np.exp(-np.pi * 5000 / 600 * t * t), abs=0.03)


def test_point_metrics_hand_computed():
    a = np.array([[0.0, 0, 0], [1, 0, 0]])
    na = np.array([[0.0, 0, 1], [0, 0, 1]])
    b = np.array([[0.0, 0, 0.2]])
    nb = np.array([[0.0, 1, 1]])
    m = point_metrics(a, na, b, nb, taus=(0.5,))
    # a->b: d^2 = 0.04, 1.04 (mean 0.54); b->a: 0.04.
    assert m["chamfer_l2"] == pytest.approx(0.58)
    assert m["normal_consistency"] == pytest.approx(1 / np.sqrt(2))
    # precision 1/2, recall 1 -> f1 = 2/3.
    assert m["f1@0.5"] == pytest.approx(2 / 3, abs=1e-6)


def test_errors():
    box = trimesh.creation.box()
    with pytest.raises(UserError, match="empty"):
        mesh_metrics(trimesh.Trimesh(), box)
    with pytest.raises(UserError, match="empty"):
        mesh_metrics(box, trimesh.Trimesh(vertices=np.eye(3), faces=np.zeros((0, 3), int)))
    bad = box.copy()
    bad.vertices[0, 0] = np.nan
    with pytest.raises(UserError, match="NaN"):
        mesh_metrics(bad, box)
    with pytest.raises(UserError, match="scale"):
        mesh_metrics(box, box, scale="unit")
    with pytest.raises(UserError, match="points_a"):
        point_metrics(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros((1, 3)), np.zeros((1, 3)))
