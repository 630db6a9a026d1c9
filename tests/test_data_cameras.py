"""Dataset camera conventions -> OpenGL cameras, checked by projecting points both ways."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from scipy.spatial.transform import Rotation

from data_pipelines import cameras
from data_pipelines.images import square_image
from nd3d_jax.render.camera import Camera, look_at, project


def _project(c2w, focal, principal, points, size=(64, 48)):
    cam = Camera(jnp.asarray(c2w, jnp.float32), jnp.float32(focal),
                 jnp.asarray(principal, jnp.float32), *size)  # fmt: skip
    uv, depth = project(cam, jnp.asarray(points, jnp.float32))
    return np.asarray(uv), np.asarray(depth)


def _pix3d_reference(points, rot, t, focal_mm, width, height):
    cam = points @ rot.T + t
    f = focal_mm * width / 32.0
    return np.stack([width / 2 - f * cam[:, 0] / cam[:, 2], height / 2 - f * cam[:, 1] / cam[:, 2]],
                    axis=1), cam[:, 2]  # fmt: skip


def test_pix3d_pose_projects_like_the_dataset():
    rng = np.random.default_rng(0)
    rot = Rotation.from_euler("xyz", [0.3, -0.7, 0.1]).as_matrix()
    t = np.array([0.05, -0.02, 2.0])
    pts = rng.uniform(-0.4, 0.4, (50, 3))
    width, height, focal_mm = 64, 48, 35.0
    want, depth = _pix3d_reference(pts, rot, t, focal_mm, width, height)
    f = cameras.pix3d_focal_pixels(focal_mm, width)
    uv, d = _project(cameras.pix3d_c2w(rot, t), f, [width / 2, height / 2], pts)
    np.testing.assert_allclose(uv, want, atol=1e-3)
    np.testing.assert_allclose(d, depth, atol=1e-5)
    # In the unit-cube frame X' = (X - c) s the same pixels come out.
    centre, scale = np.array([0.1, 0.2, -0.1]), 1.7
    uv2, _ = _project(cameras.pix3d_c2w(rot, t, centre, scale), f, [32, 24], (pts - centre) * scale)
    np.testing.assert_allclose(uv2, want, atol=1e-3)
    r2, t2 = cameras.pix3d_pose_from_c2w(cameras.pix3d_c2w(rot, t))
    np.testing.assert_allclose(r2, rot, atol=1e-12)
    np.testing.assert_allclose(t2, t, atol=1e-12)


def test_blender_camera_in_the_obj_frame():
    rng = np.random.default_rng(1)
    obj_pts = rng.uniform(-1, 1, (40, 3))
    render_scale, centre, scale = 0.4, np.array([0.2, -0.1, 0.3]), 0.8
    world = render_scale * obj_pts @ cameras.BLENDER_IMPORT.T  # what Blender renders
    c2w = np.asarray(look_at(np.array([0.5, -3.0, 1.0])), np.float64)  # Blender: +z up
    want, depth = _project(c2w, 50.0, [32, 24], world)
    assert (depth > 0).all() and np.abs(want).max() < 200
    pose = cameras.blender_c2w_to_obj_frame(c2w, render_scale, centre, scale)
    got, _ = _project(pose, 50.0, [32, 24], (obj_pts - centre) * scale)
    np.testing.assert_allclose(got, want, atol=1e-3)
    np.testing.assert_allclose(pose[:3, :3] @ pose[:3, :3].T, np.eye(3), atol=1e-6)


def test_pad_resize_intrinsics_follow_the_pixels():
    width, height, size = 40, 24, 32
    image = np.zeros((height, width), np.uint8)
    image[5, 30] = 255  # a pixel centre at (30.5, 5.5)
    focal, principal = cameras.square_pad_resize_intrinsics(100.0, width, height, size)
    k = size / width
    assert focal == 100.0 * k
    np.testing.assert_allclose(principal, [20 * k, (12 + 8) * k])
    out = square_image(np.repeat(image[..., None], 3, -1), size)[..., 0].astype(float)
    ys, xs = np.mgrid[:size, :size]
    centroid = np.array([(xs * out).sum(), (ys * out).sum()]) / out.sum() + 0.5
    np.testing.assert_allclose(centroid, [30.5 * k, (5.5 + 8) * k], atol=0.15)


def test_flip_mirrors_the_image_coordinates():
    rng = np.random.default_rng(2)
    pts = rng.uniform(-0.5, 0.5, (30, 3))
    c2w = np.eye(4)
    c2w[:3, :3] = Rotation.from_euler("xyz", [0.2, 0.5, -0.3]).as_matrix()
    c2w[:3, 3] = c2w[:3, :3] @ np.array([0.0, 0.0, 3.0])
    principal = np.array([30.0, 20.0])
    uv, depth = _project(c2w, 60.0, principal, pts)
    flipped = cameras.flip_c2w(c2w)
    assert np.linalg.det(flipped[:3, :3]) > 0
    uv2, depth2 = _project(flipped, 60.0, [64 - 30.0, 20.0], pts * [-1, 1, 1])
    np.testing.assert_allclose(uv2[:, 0], 64 - uv[:, 0], atol=1e-3)
    np.testing.assert_allclose(uv2[:, 1], uv[:, 1], atol=1e-3)
    np.testing.assert_allclose(depth2, depth, atol=1e-5)
