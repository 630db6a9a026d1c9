import json
import math

import numpy as np
import pytest
import trimesh
from PIL import Image

from data_pipelines.synthetic.__main__ import main
from data_pipelines.synthetic.omniobject3d import (
    POINT_COUNTS,
    blender_import,
    camera_poses,
    render_scale,
    write_omniobject3d,
)
from nd3d_jax.render.camera import pinhole, project


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp("oo3d")
    write_omniobject3d(str(out), 2, seed=1, num_views=3, image_size=64, log=lambda _: None)
    return out


def test_layout(root):
    for cat in ("bed", "bookcase"):
        name = f"{cat}_001"
        scan = root / "raw_scans" / cat / name / "Scan"
        assert {p.name for p in scan.iterdir()} == {"Scan.obj", "Scan.mtl", "Scan.jpg"}
        render = root / "blender_renders" / cat / name / "render"
        assert sorted(p.name for p in (render / "images").iterdir()) == [
            "r_0.png",
            "r_1.png",
            "r_2.png",
        ]
        for n in POINT_COUNTS:
            ply = root / "point_clouds" / "ply_files" / str(n) / cat / name / f"pcd_{n}.ply"
            assert len(trimesh.load(ply).vertices) == n


def test_transforms_match_the_renders(root):
    render = root / "blender_renders" / "bed" / "bed_001" / "render"
    meta = json.loads((render / "transforms.json").read_text())
    assert set(meta) == {"camera_angle_x", "frames"}
    scan = trimesh.load(root / "raw_scans" / "bed" / "bed_001" / "Scan" / "Scan.obj", force="mesh")
    world = blender_import(scan.vertices)
    points = trimesh.sample.sample_surface(trimesh.Trimesh(world, scan.faces), 2000, seed=0)[0]
    for frame in meta["frames"]:
        assert set(frame) == {"file_path", "rotation", "transform_matrix", "scale"}
        assert frame["scale"] == pytest.approx(render_scale(world))
        # render_blender.py's camera: (0, 4, 0.5) turned about the origin onto the upper
        # hemisphere, looking at the origin (TRACK_TO), upright: no roll about the view axis
        c2w = np.asarray(frame["transform_matrix"])
        eye = c2w[:3, 3]
        assert np.linalg.norm(eye) == pytest.approx(math.sqrt(16.25), rel=1e-5)
        assert eye[2] >= 0.5 * math.cos(math.pi / 2) - 1e-6  # z = 4 sin x + 0.5 cos x >= 0
        np.testing.assert_allclose(-c2w[:3, 2], -eye / np.linalg.norm(eye), atol=1e-5)
        assert abs(c2w[2, 0]) < 1e-5 and c2w[2, 1] > 0  # camera x horizontal, its y up
        image = np.asarray(Image.open(render / "images" / f"{frame['file_path']}.png"))
        assert image.shape == (64, 64, 4) and image.dtype == np.uint8
        cam = pinhole(np.asarray(frame["transform_matrix"]), 64, 64, fov=meta["camera_angle_x"])
        uv, depth = (np.asarray(a) for a in project(cam, points * frame["scale"]))
        assert np.all(depth > 0)
        px = np.floor(uv).astype(int)
        inside = np.all((px >= 0) & (px < 64), axis=1)
        # Every surface point projects into the rendered silhouette (alpha > 0), up to one
        # pixel: thin parts cover no pixel centre at 64 px, so the silhouette is dilated once.
        assert inside.mean() > 0.99
        alpha = np.pad(image[..., 3] > 0, 1)
        dilated = np.max([alpha[i : i + 64, j : j + 64] for i in range(3) for j in range(3)], 0)
        assert np.mean(dilated[px[inside, 1], px[inside, 0]]) > 0.99
        assert 0.005 < np.mean(image[..., 3] > 0) < 0.9


def test_cameras_cover_the_upper_hemisphere_as_the_script_draws_them():
    """The script's elevations: x = |arccos(1 - 2u) - pi/2| (uniform on the hemisphere's
    area: P(x < t) = sin t), then + atan(0.5 / 4) from the camera's start (0, 4, 0.5)."""
    eye = camera_poses(4000, np.random.default_rng(0))[:, :3, 3]
    # x back from the elevation (right below x = 83 degrees, where the camera passes the top)
    x = np.arcsin(eye[:, 2] / np.linalg.norm(eye, axis=1)) - math.atan2(0.5, 4.0)
    for t in (0.3, 0.7, 1.2):
        assert np.mean(x < t) == pytest.approx(math.sin(t), abs=0.03)
    azimuth = np.arctan2(eye[:, 1], eye[:, 0])
    assert np.histogram(azimuth, 8)[0].min() > 400  # uniform azimuths


def test_textured_scan_keeps_the_colours(root):
    scan = trimesh.load(root / "raw_scans" / "bookcase" / "bookcase_001" / "Scan" / "Scan.obj")
    assert isinstance(scan.visual, trimesh.visual.TextureVisuals)
    colors = scan.visual.to_color().vertex_colors[:, :3]
    assert colors.std() > 0 and len(np.unique(colors, axis=0)) > 1


def test_cli(tmp_path, capsys):
    main(["--layout=omniobject3d", f"--out={tmp_path}", "--num_objects=1", "--num_views=1",
          "--image_size=32"])  # fmt: skip
    assert "wrote 1 objects" in capsys.readouterr().out
    assert (tmp_path / "raw_scans" / "bed" / "bed_001" / "Scan" / "Scan.obj").is_file()
    with pytest.raises(SystemExit):
        main(["--layout=omniobject3d", f"--out={tmp_path}", "--num_objects=0"])
