import numpy as np
import pytest

from data_pipelines.synthetic.shapes import CATEGORIES, make_object


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
