import numpy as np
import pytest
import trimesh

from data_pipelines.synthetic.shapes import CATEGORIES, FAULTS, make_object, with_faults


@pytest.mark.parametrize("category", CATEGORIES)
def test_every_category_is_a_coloured_mesh_on_the_floor(category):
    mesh = make_object(category, seed=3)
    assert len(mesh.faces) > 10 and np.isfinite(mesh.vertices).all()
    assert mesh.bounds[0, 2] == pytest.approx(0.0, abs=1e-9)
    assert 0.05 < mesh.extents.max() < 3.0
    colors = mesh.visual.vertex_colors
    assert colors.shape == (len(mesh.vertices), 4) and colors[:, 3].min() == 255


def test_deterministic_and_varied():
    a, b = make_object("chair", 7), make_object("chair", 7)
    np.testing.assert_array_equal(a.vertices, b.vertices)
    np.testing.assert_array_equal(a.visual.vertex_colors, b.visual.vertex_colors)
    c = make_object("chair", 8)
    assert not np.allclose(a.extents, c.extents)
    with pytest.raises(ValueError, match="unknown category"):
        make_object("spaceship", 0)


def test_faults_of_real_meshes():
    mesh = make_object("vase", 2)  # closed parts: volume defined
    count = len(mesh.faces)
    inverted = with_faults(mesh, ("inverted",))
    assert inverted.volume == pytest.approx(-mesh.volume)
    np.testing.assert_array_equal(inverted.vertices, mesh.vertices)
    np.testing.assert_array_equal(inverted.visual.vertex_colors, mesh.visual.vertex_colors)
    mixed = with_faults(mesh, ("mixed",), seed=1)
    reversed_ = (mixed.faces == mesh.faces[:, ::-1]).all(1)
    assert 0.3 < reversed_.mean() < 0.5 and ((mixed.faces == mesh.faces).all(1) | reversed_).all()
    holes = with_faults(mesh, ("holes",), seed=1)
    assert len(holes.faces) == count - count // 100 and not holes.is_watertight
    small = np.sort(mesh.area_faces)[count // 4 - 1]  # the holes are among the smallest faces
    gone = {tuple(f) for f in mesh.faces.tolist()} - {tuple(f) for f in holes.faces.tolist()}
    assert len(gone) == count // 100
    assert max(trimesh.triangles.area(mesh.vertices[list(gone)])) <= small
    duplicates = with_faults(mesh, ("duplicates",), seed=1)
    assert len(duplicates.faces) == count + count // 20
    extra, faces = duplicates.faces[count:].tolist(), mesh.faces.tolist()
    assert all(f in faces for f in extra[0::2])  # copies, and every other one reversed
    assert all(f[::-1] in faces for f in extra[1::2])
    a = with_faults(mesh, FAULTS, seed=3)
    np.testing.assert_array_equal(a.faces, with_faults(mesh, FAULTS, seed=3).faces)
    with pytest.raises(ValueError, match="unknown faults"):
        with_faults(mesh, ("melted",))
