import numpy as np
import pytest
import trimesh

from nd3d_jax.geometry.mesh_ops import (
    MeshError,
    export_mesh,
    load_mesh,
    sample_faces,
    sample_key_points,
    sample_surface,
    validate_mesh,
)
from nd3d_jax.metrics.chamfer import chamfer_distance, f_score, mesh_chamfer


@pytest.mark.parametrize("suffix", [".obj", ".ply", ".glb"])
def test_export_and_load_round_trip(tmp_path, suffix):
    mesh = trimesh.creation.box(extents=(1.0, 2.0, 3.0))
    path = export_mesh(mesh, tmp_path / "sub" / f"box{suffix}")
    back = load_mesh(path)
    assert back.volume == pytest.approx(6.0, rel=1e-6)
    assert len(back.faces) == 12


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.obj"):
        load_mesh(tmp_path / "missing.obj")
    corrupt = tmp_path / "corrupt.obj"
    corrupt.write_bytes(b"\x00\xff garbage v 1 2\nf 1 2 3 9\n\x89PNG")
    with pytest.raises(MeshError, match="corrupt.obj") as err:
        load_mesh(corrupt)
    assert "ModuleNotFound" not in str(err.value)  # a real parse failure, not a missing decoder
    no_faces = tmp_path / "points.obj"
    no_faces.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    with pytest.raises(MeshError, match="points.obj"):
        load_mesh(no_faces)
    nan = tmp_path / "nan.obj"
    nan.write_text("v 0 0 0\nv nan 0 0\nv 0 1 0\nf 1 2 3\n")
    with pytest.raises(MeshError, match="NaN"):
        load_mesh(nan)
    with pytest.raises(ValueError, match="unsupported mesh format"):
        export_mesh(trimesh.creation.box(), tmp_path / "box.stl")


def test_validate_mesh_zero_faces():
    with pytest.raises(MeshError, match="no faces"):
        validate_mesh(trimesh.Trimesh(np.zeros((3, 3)), np.zeros((0, 3), np.int64)), "empty")


def test_sample_surface_is_on_the_surface_and_area_weighted():
    # Two unit squares side by side, one 3x larger: samples split 1 : 3 by area.
    verts = np.array(
        [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [1, 0, 0], [4, 0, 0], [4, 1, 0], [1, 1, 0]],
        float,
    )
    faces = np.array([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]])
    mesh = trimesh.Trimesh(verts, faces, process=False)
    points, normals = sample_surface(mesh, 40000, seed=0)
    assert points.shape == (40000, 3) and points.dtype == np.float32
    np.testing.assert_allclose(points[:, 2], 0.0)
    np.testing.assert_allclose(normals, np.tile([0, 0, 1.0], (40000, 1)))
    assert np.mean(points[:, 0] > 1) == pytest.approx(0.75, abs=0.01)
    same = sample_surface(mesh, 100, seed=3)[0]
    np.testing.assert_array_equal(same, sample_surface(mesh, 100, seed=3)[0])


def test_key_points_follow_the_one_in_100_rule():
    big = trimesh.creation.icosphere(subdivisions=7, radius=0.5)  # 163842 vertices
    kp = sample_key_points(big, 1024, 100)  # 163842 >= 1024 * 100: the vertex rule applies
    assert kp.shape == (1024, 3)
    stride = {tuple(v) for v in big.vertices[::100].astype(np.float32).tolist()}
    assert all(tuple(p) in stride for p in kp.tolist())
    assert len(np.unique(kp, axis=0)) == 1024
    small = trimesh.creation.icosphere(subdivisions=3, radius=0.5)  # 642 vertices: fallback
    kp = sample_key_points(small, 2048, 100, seed=1)
    assert kp.shape == (2048, 3)
    assert len(np.unique(kp, axis=0)) == 2048  # surface samples, not repeated vertices
    np.testing.assert_allclose(np.linalg.norm(kp, axis=1), 0.5, atol=0.02)


def test_sample_faces_features_and_padding():
    box = trimesh.creation.box(extents=(2.0, 2.0, 2.0))  # 12 faces -> 2 samples (1 in 10)
    s = sample_faces(box, num_faces=512, stride=10, seed=0)
    assert s.features.shape == (512, 7) and s.mask.sum() == 2
    assert not s.features[~s.mask].any() and np.all(s.face_index[~s.mask] == -1)
    idx = s.face_index[s.mask]
    np.testing.assert_allclose(s.features[s.mask, :3], box.face_normals[idx], atol=1e-6)
    np.testing.assert_allclose(s.features[s.mask, 3], 2.0)  # each box triangle: area 2
    np.testing.assert_allclose(s.features[s.mask, 4:], box.triangles_center[idx], atol=1e-6)
    big = trimesh.creation.icosphere(subdivisions=5)  # 20480 faces -> 2048 candidates -> 512
    s = sample_faces(big, seed=1)
    assert s.mask.all() and len(np.unique(s.face_index)) == 512
    assert np.all(np.diff(s.face_index) % 10 == 0)  # all on the one-in-10 lattice


def test_chamfer_and_f_score_by_hand():
    a = np.array([[0.0, 0, 0], [1, 0, 0]])
    b = np.array([[0.0, 0, 0.5]])
    # a->b: 0.5 and sqrt(1.25); b->a: 0.5.
    assert chamfer_distance(a, b) == pytest.approx((0.5 + np.sqrt(1.25)) / 2 + 0.5)
    # threshold 0.6: precision 1/2, recall 1 -> 2/3.
    assert f_score(a, b, 0.6) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="non-empty"):
        chamfer_distance(a, np.zeros((0, 3)))
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=1.0)
    bigger = trimesh.creation.icosphere(subdivisions=4, radius=1.1)
    assert mesh_chamfer(sphere, bigger) == pytest.approx(0.2, abs=0.01)
