"""Per-shape and per-example preparation jobs (run in worker processes; NumPy/PIL/trimesh only).

Each job returns `("ok", key, value)` or `("skip", key, reason, path, detail)`, never raises
for bad data, so one broken file costs one example and the pool keeps going.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import zlib

import numpy as np

from data_pipelines import cameras, grid_views
from data_pipelines.images import (
    BadExample,
    alpha_mask,
    background_mask,
    has_alpha,
    read_image,
    square_image,
    to_rgb,
)
from data_pipelines.mesh_repair import repair_orientation
from data_pipelines.shape_samples import (
    condition_mesh,
    shape_samples,
    texture_image,
    unit_cube_transform,
)
from nd3d_jax.geometry.mesh_ops import MeshError, load_mesh


@dataclasses.dataclass(frozen=True)
class Spec:
    """What one example holds; the builder config's numbers, passed to every worker."""

    image_size: int = 512  # paper, "Data preprocessing": every image resized to 512 x 512
    num_surface: int = 4096
    num_sdf_near: int = 4096
    num_sdf_uniform: int = 2048
    grid_rows: int = 2  # OmniObject3D K-view grid (DESIGN: 2 x 2 views in one 512 x 512 image)
    grid_cols: int = 2
    input_view: int = 0  # OmniObject3D render used as the input image
    # OmniObject3D grid views (`grid_views`): "ring", the renders nearest generation's K-camera
    # ring (configs/generate.py `cameras`: 20 degrees up, the first facing +Z) turned by a
    # seeded per-object azimuth offset in +-view_azimuth_jitter_deg (45: half the 2 x 2 ring's
    # spacing, every rotation alike); or "frames", frame numbers spread evenly (the old choice)
    view_selection: str = "ring"
    view_elevation_deg: float = 20.0
    view_azimuth_jitter_deg: float = 45.0
    view_seed: int = 0
    caption_template: str = "a photo of a {category}"
    # the condition mesh: the paper samples "1 face per 10, totaling 512", so 5120 faces
    mesh_faces: int = 5120
    # the plausible share of near-surface SDF queries inside the shape: about half lie inside a
    # closed surface (fewer for thin parts); 0 or 1 means the sign is broken
    inside_fraction: tuple[float, float] = (0.05, 0.95)

    def caption(self, category: str) -> str:
        return self.caption_template.format(category=category.replace("_", " "))


def _mesh_reason(error: Exception) -> str:
    text = str(error)
    if isinstance(error, FileNotFoundError):
        return "missing mesh"
    if "NaN or inf" in text:
        return "NaN vertices"
    if "no faces" in text or "no triangle mesh" in text:
        return "empty mesh"
    return "unreadable mesh"


def _run(key, fn, *args):
    try:
        return ("ok", key, fn(*args))
    except BadExample as e:
        return ("skip", key, e.reason, e.path, e.detail)


TEXTURE_NOT_LOADED = "texture not loaded (one plain colour)"
NO_ALPHA = "render without alpha (mask from the background colour)"


def _shape(path: str, spec: Spec, seed: int, textured: bool = False) -> dict:
    try:
        mesh = load_mesh(path)
    except (MeshError, FileNotFoundError) as e:
        raise BadExample(_mesh_reason(e), path, str(e).removeprefix(f"{path}: ")) from e
    # a scan whose .mtl does not lead trimesh to its image (OmniObject3D: Scan.mtl -> Scan.jpg)
    # gets one plain colour everywhere: said, and counted per shape
    texture_warnings = [TEXTURE_NOT_LOADED] if textured and texture_image(mesh) is None else []
    centre, scale = unit_cube_transform(np.asarray(mesh.vertices))
    unit = mesh.copy()
    unit.vertices = (np.asarray(mesh.vertices) - centre) * scale
    # faces consistent and outward before anything reads them: normals, SDF, condition mesh
    repaired = repair_orientation(unit)
    if len(repaired.faces) == 0:
        raise BadExample("empty mesh", path, "every face is degenerate")
    s = shape_samples(repaired.mesh, num_surface=spec.num_surface, num_near=spec.num_sdf_near,
                      num_uniform=spec.num_sdf_uniform, seed=seed)  # fmt: skip
    try:
        vertices, faces, colors = condition_mesh(repaired.mesh, spec.mesh_faces)
    except ValueError as e:
        raise BadExample("empty mesh", path, str(e)) from e
    mesh_arrays = {"mesh_vertices": vertices, "mesh_faces": faces, "mesh_colors": colors}
    inside = float((s.sdf_values[: spec.num_sdf_near] < 0).mean())
    return {"centre": centre, "scale": scale, **s._asdict(), **mesh_arrays,
            "path": path, "inside_fraction": inside,
            "warnings": texture_warnings + repaired.warnings()}  # fmt: skip


def plausible_sign(shape: dict, spec: Spec) -> str | None:
    """None if the shape's near-surface inside fraction is plausible, else why not."""
    lo, hi = spec.inside_fraction
    fraction = shape["inside_fraction"]
    if lo <= fraction <= hi:
        return None
    return f"{fraction:.1%} of the near-surface SDF queries inside, expected {lo:.0%} to {hi:.0%}"


def prepare_shape(job) -> tuple:
    """job = (shape_id, mesh path, Spec[, textured]): the unit-cube transform and the shape's
    samples; `textured` (OmniObject3D's scans) warns when the texture image does not load."""
    shape_id, path, spec, *textured = job
    return _run(shape_id, _shape, path, spec, zlib.crc32(shape_id.encode()), *textured)


def _shape_features(shape: dict) -> dict:
    keys = ("points", "normals", "colors", "sdf_points", "sdf_values")
    keys += ("mesh_vertices", "mesh_faces", "mesh_colors")
    return {k: shape[k] for k in keys}


def _camera(c2w, focal, principal) -> dict:
    return {"c2w": np.asarray(c2w, np.float32), "focal": np.float32(focal),
            "principal": np.asarray(principal, np.float32)}  # fmt: skip


def _finite(value, shape, what: str, where: str) -> np.ndarray:
    try:
        array = np.asarray(value, np.float64)
    except (TypeError, ValueError) as e:
        raise BadExample("bad annotation", where, f"{what} is not numeric") from e
    if array.shape != shape or not np.isfinite(array).all():
        raise BadExample("bad annotation", where, f"{what} must be finite with shape {shape}")
    return array


def _pix3d(item: dict, shape: dict, spec: Spec) -> dict:
    root, entry = item["root"], item["entry"]
    where = f"{os.path.join(root, 'pix3d.json')} [{item['key']}]"
    rot = _finite(entry.get("rot_mat"), (3, 3), "rot_mat", where)
    trans = _finite(entry.get("trans_mat"), (3,), "trans_mat", where)
    focal_mm = float(_finite(entry.get("focal_length"), (), "focal_length", where))
    if focal_mm <= 0:
        raise BadExample("bad annotation", where, f"focal_length {focal_mm} <= 0")
    image_path = os.path.join(root, entry["img"])
    image = read_image(image_path)
    mask_path = os.path.join(root, entry["mask"])
    mask = read_image(mask_path, what="mask")
    if mask.size != image.size:
        raise BadExample("mask size mismatch", mask_path, f"mask {mask.size}, image {image.size}")
    width, height = image.size
    focal, principal = cameras.square_pad_resize_intrinsics(
        cameras.pix3d_focal_pixels(focal_mm, width), width, height, spec.image_size
    )
    c2w = cameras.pix3d_c2w(rot, trans, shape["centre"], shape["scale"])
    mask_array = np.asarray(mask.convert("L")) > 127
    return {
        "image": square_image(to_rgb(image), spec.image_size),
        "mask": square_image(mask_array, spec.image_size, mask=True)[..., None].astype(np.uint8),
        "category": entry["category"],
        "caption": spec.caption(entry["category"]),
        "shape_id": item["shape_id"],
        "key": item["key"],
        "camera": _camera(c2w, focal, principal),
        **_shape_features(shape),
    }


def prepare_pix3d(job) -> tuple:
    """job = (item, shape dict, Spec) for one Pix3D image."""
    item, shape, spec = job
    return _run(item["key"], _pix3d, item, shape, spec)


def _read_transforms(path: str) -> tuple[float, list]:
    if not os.path.isfile(path):
        raise BadExample("missing transforms.json", path)
    try:
        with open(path) as f:
            meta = json.load(f)
        angle, frames = float(meta["camera_angle_x"]), list(meta["frames"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BadExample("bad transforms.json", path, f"{type(e).__name__}: {e}") from e
    if not frames or not 0 < angle < math.pi:
        raise BadExample("bad transforms.json", path, "no frames or camera_angle_x out of range")
    return angle, frames


def _frame(frame, where: str) -> tuple[str, np.ndarray, float]:
    """(image file name, Blender camera-to-world, render scale) of one transforms.json frame.
    `file_path` is the name without extension ("r_0", new) or a path on the authors' machine
    ("/.../render/r_0", old): the name is all that is read, under render/images/."""
    try:
        name = os.path.basename(str(frame["file_path"]))
        c2w = _finite(frame["transform_matrix"], (4, 4), "transform_matrix", where)
        render_scale = float(frame.get("scale", 1.0))
    except (KeyError, TypeError, ValueError) as e:
        raise BadExample("bad transforms.json", where, f"{type(e).__name__}: {e}") from e
    if not render_scale > 0:
        raise BadExample("bad transforms.json", where, f"scale {render_scale} is not positive")
    return (name if name.endswith(".png") else name + ".png"), c2w, render_scale


def _render(render_dir: str, name: str, pose, angle: float, size: int):
    """One OmniObject3D render composited on white and resized, its mask and camera, and
    whether it had alpha (without it, the mask is what differs from the background colour)."""
    image = read_image(os.path.join(render_dir, "images", name))
    focal, principal = cameras.square_pad_resize_intrinsics(
        cameras.focal_from_angle(angle, image.width), image.width, image.height, size
    )
    if has_alpha(image):
        rgb, mask = to_rgb(image), alpha_mask(image)
    else:
        rgb = np.array(image.convert("RGB"))
        mask = background_mask(rgb)
        rgb[~mask] = 255
    rgb, mask = square_image(rgb, size), square_image(mask, size, mask=True)
    return rgb, mask, _camera(pose, focal, principal), has_alpha(image)


def grid_view_indices(item: dict, poses: np.ndarray, spec: Spec) -> list[int]:
    """The renders that fill the K-view grid (`Spec.view_selection`), input view excluded."""
    count = spec.grid_rows * spec.grid_cols
    if spec.view_selection == "frames":
        return grid_views.frame_views(len(poses), spec.input_view, count)
    offset = grid_views.azimuth_offset(item["key"], spec.view_seed, spec.view_azimuth_jitter_deg)
    return grid_views.nearest_to_ring(poses, count, spec.view_elevation_deg, offset,
                                      exclude=(spec.input_view,))  # fmt: skip


def _omniobject3d(item: dict, shape: dict, spec: Spec) -> dict:
    render_dir = item["render_dir"]
    where = os.path.join(render_dir, "transforms.json")
    angle, frames = _read_transforms(where)
    count = spec.grid_rows * spec.grid_cols
    if len(frames) < count + 1 or spec.input_view >= len(frames):
        raise BadExample("too few renders", where, f"{len(frames)} frames, need {count + 1}")
    parsed = [_frame(frame, where) for frame in frames]
    poses = np.stack([cameras.blender_c2w_to_obj_frame(c2w, scale, shape["centre"], shape["scale"])
                      for _, c2w, scale in parsed])  # fmt: skip
    rgb, mask, camera, alpha = _render(render_dir, parsed[spec.input_view][0],
                                       poses[spec.input_view], angle, spec.image_size)  # fmt: skip
    tile = spec.image_size // spec.grid_cols
    views = [_render(render_dir, parsed[i][0], poses[i], angle, tile)
             for i in grid_view_indices(item, poses, spec)]  # fmt: skip
    rows = [np.concatenate([v[0] for v in views[r * spec.grid_cols : (r + 1) * spec.grid_cols]], 1)
            for r in range(spec.grid_rows)]  # fmt: skip
    stack = lambda k: np.stack([v[2][k] for v in views])  # noqa: E731
    alpha = alpha and all(v[3] for v in views)
    return {
        "image": rgb,
        "mask": mask[..., None].astype(np.uint8),
        "category": item["category"],
        "caption": spec.caption(item["category"]),
        "shape_id": item["shape_id"],
        "key": item["key"],
        "camera": camera,
        "views": np.concatenate(rows, 0),
        "view_cameras": {
            "c2w": stack("c2w"),
            "focal": stack("focal"),
            "principal": stack("principal"),
        },  # fmt: skip
        **_shape_features(shape),
        "warnings": [] if alpha else [NO_ALPHA],  # counted per shape, not a feature
    }


def prepare_omniobject3d(job) -> tuple:
    """job = (item, shape dict, Spec) for one OmniObject3D object."""
    item, shape, spec = job
    return _run(item["key"], _omniobject3d, item, shape, spec)
