"""Dataset camera conventions -> the project's camera (NumPy only, used by writers and builders).

The project's camera (`nd3d_jax.render.camera`): a 4x4 camera-to-world pose in OpenGL axes
(looking down -Z, +Y up, +X right), a focal length and principal point in pixels, pixel
(i, j) covering [j, j+1) x [i, i+1).

Pix3D (`pix3d.json`): a model point X in OBJ coordinates goes to camera coordinates
`R X + t` (`rot_mat`, `trans_mat`), in which the camera looks down +Z with +X to the image's
left and +Y up; `focal_length` is in mm on a 32 mm wide sensor (the dataset's Blender `demo.py`:
`sensor_fit='HORIZONTAL', sensor_width=32`, camera at the origin turned by pi about Y), so
u = W/2 - f x/z, v = H/2 - f y/z with f = focal_length * W / 32. Checked on the released
annotations: `cam_position == -R^T t` to machine precision, and the 3D key points reproject onto
the 2D key points with this sign convention (12 px mean on a 395 px image, against >= 59 px for
the other three sign choices).

OmniObject3D (`transforms.json`): `transform_matrix` is Blender's camera-to-world matrix (OpenGL
axes) in Blender world coordinates, where the scan was imported (+y up in the OBJ becomes +z:
(x, y, z) -> (x, -z, y)) and scaled by the frame's `scale`; `camera_angle_x` is the horizontal
field of view.
"""

from __future__ import annotations

import math

import numpy as np

PIX3D_SENSOR_WIDTH_MM = 32.0
_PIX3D_TO_GL = np.diag([-1.0, 1.0, -1.0])  # Pix3D camera axes (x left, y up, z forward)
# Blender's OBJ import, world = BLENDER_IMPORT @ obj: (x, y, z) -> (x, -z, y).
BLENDER_IMPORT = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


def pose_matrix(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = rotation, translation
    return out


def pix3d_focal_pixels(focal_length_mm: float, width: int) -> float:
    return float(focal_length_mm) * width / PIX3D_SENSOR_WIDTH_MM


def pix3d_c2w(rot_mat, trans_mat, centre=(0.0, 0.0, 0.0), scale: float = 1.0) -> np.ndarray:
    """OpenGL camera-to-world pose of a Pix3D annotation, in the frame where the model is
    `(X - centre) * scale` (scaling the scene about the camera leaves the image unchanged)."""
    rot = np.asarray(rot_mat, np.float64)
    t = scale * (rot @ np.asarray(centre, np.float64) + np.asarray(trans_mat, np.float64))
    w2c = pose_matrix(_PIX3D_TO_GL @ rot, _PIX3D_TO_GL @ t)
    return np.linalg.inv(w2c)


def pix3d_pose_from_c2w(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rot_mat, trans_mat) of an OpenGL camera-to-world pose (the inverse of `pix3d_c2w`)."""
    w2c = np.linalg.inv(np.asarray(c2w, np.float64))
    return _PIX3D_TO_GL @ w2c[:3, :3], _PIX3D_TO_GL @ w2c[:3, 3]


def blender_c2w_to_obj_frame(transform_matrix, render_scale: float, centre, scale: float):
    """An OmniObject3D camera (Blender world) in the frame where the OBJ model is
    `(X - centre) * scale`: undo the frame's `scale`, then Blender's OBJ import."""
    c2w = np.asarray(transform_matrix, np.float64)
    inv_import = BLENDER_IMPORT.T
    rot = inv_import @ c2w[:3, :3]
    pos = scale * (inv_import @ c2w[:3, 3] / render_scale - np.asarray(centre, np.float64))
    return pose_matrix(rot, pos)


def focal_from_angle(camera_angle_x: float, width: int) -> float:
    return 0.5 * width / math.tan(0.5 * float(camera_angle_x))


def square_pad_resize_intrinsics(focal: float, width: int, height: int, size: int):
    """Focal and principal point after padding a (height, width) image to a centred square and
    resizing it to `size` (what `preprocess.square_image` does to the pixels)."""
    side = max(width, height)
    k = size / side
    ox, oy = (side - width) // 2, (side - height) // 2
    return focal * k, np.array([(width / 2 + ox) * k, (height / 2 + oy) * k])


_FLIP_X = np.diag([-1.0, 1.0, 1.0, 1.0])


def flip_c2w(c2w: np.ndarray) -> np.ndarray:
    """The pose that sees the world mirrored across x = 0 as the horizontally flipped image.

    With points p -> F p (F = diag(-1, 1, 1)), the pose F c2w F keeps a proper rotation and
    negates camera-space x, so u -> 2 c_x - u: flip the image, the principal point
    (c_x -> W - c_x), the shape and the camera together and everything stays consistent.
    """
    return _FLIP_X @ np.asarray(c2w) @ _FLIP_X
