"""Synthetic Pix3D: the real layout, every JSON field, and images rendered with the JSON pose."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import scipy.io
import trimesh
from PIL import Image

from data_pipelines.synthetic.__main__ import main as synthetic_main
from data_pipelines.synthetic.pix3d import PIX3D_CATEGORIES, write_pix3d

FIELDS = {
    "img": str, "category": str, "img_size": list, "2d_keypoints": list, "mask": str,
    "img_source": str, "model": str, "model_raw": type(None), "model_source": str,
    "3d_keypoints": str, "voxel": str, "rot_mat": list, "trans_mat": list,
    "focal_length": float, "cam_position": list, "inplane_rotation": float, "truncated": bool,
    "occluded": bool, "slightly_occluded": bool, "bbox": list,
}  # fmt: skip


@pytest.fixture(scope="module")
def pix3d(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("pix3d"))
    images = write_pix3d(root, 3, seed=1, num_views=4, image_size=48, log=lambda m: None)
    return root, images, json.load(open(os.path.join(root, "pix3d.json")))


def test_layout_and_fields(pix3d):
    root, images, entries = pix3d
    assert len(entries) == 12 and [e["img"] for e in entries] == images
    for e in entries:
        assert set(e) == set(FIELDS)
        for key, kind in FIELDS.items():
            assert isinstance(e[key], kind), (key, e[key])
        assert e["category"] in PIX3D_CATEGORIES
        assert e["img"].startswith(f"img/{e['category']}/") and e["img"][-4:] in (".jpg", ".png")
        assert e["mask"] == f"mask/{e['category']}/{os.path.basename(e['img'])[:-4]}.png"
        model_dir = os.path.dirname(e["model"])
        assert model_dir.startswith(f"model/{e['category']}/") and e["model"].endswith("model.obj")
        assert e["3d_keypoints"] == f"{model_dir}/3d_keypoints.txt"
        assert e["voxel"] == f"{model_dir}/voxel.mat"
        img = Image.open(os.path.join(root, e["img"]))
        mask = Image.open(os.path.join(root, e["mask"]))
        assert list(img.size) == e["img_size"] == list(mask.size) and mask.mode == "L"
        assert set(np.unique(np.asarray(mask))) <= {0, 255}
        rot, t = np.array(e["rot_mat"]), np.array(e["trans_mat"])
        np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-9)
        np.testing.assert_allclose(-rot.T @ t, e["cam_position"], atol=1e-9)
        x0, y0, x1, y1 = e["bbox"]
        ys, xs = np.nonzero(np.asarray(mask))
        assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max(), ys.max())
    modes = {Image.open(os.path.join(root, e["img"])).mode for e in entries}
    assert {"RGB", "L", "RGBA"} <= modes
    assert len({tuple(e["img_size"]) for e in entries}) >= 3
    assert len({e["model"] for e in entries}) == 3  # several images per model
    voxel = scipy.io.loadmat(os.path.join(root, entries[0]["voxel"]))["voxel"]
    assert voxel.shape == (128, 128, 128) and 0 < voxel.sum() < voxel.size


def _project(points, e):
    """Pix3D's convention, written out independently: X_cam = R X + t, u = W/2 - f x / z,
    v = H/2 - f y / z, f = focal_length * W / 32."""
    cam = points @ np.array(e["rot_mat"]).T + np.array(e["trans_mat"])
    width, height = e["img_size"]
    f = e["focal_length"] * width / 32.0
    return np.stack([width / 2 - f * cam[:, 0] / cam[:, 2], height / 2 - f * cam[:, 1] / cam[:, 2]],
                    axis=1)  # fmt: skip


def test_images_are_rendered_with_the_json_pose(pix3d):
    root, _, entries = pix3d
    for e in entries:
        model = trimesh.load(os.path.join(root, e["model"]), force="mesh", process=False)
        assert model.visual.kind == "vertex"  # vertex colours are read back
        mask = np.asarray(Image.open(os.path.join(root, e["mask"]))) > 0
        points = trimesh.sample.sample_surface(model, 500, seed=0)[0]
        ij = np.floor(_project(points, e)).astype(int)
        ok = (ij >= 0).all(1) & (ij[:, 0] < mask.shape[1]) & (ij[:, 1] < mask.shape[0])
        grown = mask | np.roll(mask, 1, 0) | np.roll(mask, -1, 0) | np.roll(mask, 1, 1)
        grown |= np.roll(mask, -1, 1)
        assert ok.all() and grown[ij[:, 1], ij[:, 0]].mean() > 0.99
        # The silhouette is the model's: mask pixels far from every projected point are rare.
        assert mask.sum() <= grown.sum()
        key3d = np.loadtxt(os.path.join(root, e["3d_keypoints"]))
        expected = _project(key3d, e)
        for annotator in np.array(e["2d_keypoints"]):
            seen = annotator[:, 0] >= 0
            assert seen.any()
            assert np.abs(annotator[seen] - expected[seen]).max() < 8.0  # click noise 1.5 px


def test_cli_writes_pix3d(tmp_path, capsys):
    synthetic_main(["--layout=pix3d", f"--out={tmp_path}", "--num_objects=1", "--image_size=32"])
    assert "wrote 2 images in the pix3d layout" in capsys.readouterr().out
    assert len(json.load(open(tmp_path / "pix3d.json"))) == 2
