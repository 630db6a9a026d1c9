"""Synthetic Pix3D: the published on-disk layout, filled with procedural objects.

    pix3d.json                                   one entry per image, every field of the real file
    img/<cat>/<NNNN>.{jpg,png}                   photos: mixed formats and sizes, some grayscale
                                                 or RGBA, rendered with the entry's pose
    mask/<cat>/<NNNN>.png                        8-bit 0/255 silhouettes
    model/<cat>/<MODEL>/model.obj                +y up, centred, with vertex colours
    model/<cat>/<MODEL>/{3d_keypoints.txt, voxel.mat}

Poses follow the real file's convention (see `data_pipelines.cameras`): `rot_mat`/`trans_mat`
take OBJ coordinates to camera coordinates, `focal_length` is in mm on a 32 mm sensor,
`cam_position = -rot_mat^T trans_mat`; `inplane_rotation` is the camera's roll about its optical
axis. Several images share each model, as in the real data set (395 models, 10,069 images).
"""

from __future__ import annotations

import json
import math
import os

import jax.numpy as jnp
import numpy as np
import scipy.io
import scipy.ndimage
import trimesh
from PIL import Image

from data_pipelines.cameras import pix3d_c2w, pix3d_focal_pixels
from data_pipelines.synthetic.omniobject3d import render_rgba
from data_pipelines.synthetic.shapes import make_object, with_faults
from nd3d_jax.render.camera import Camera

PIX3D_CATEGORIES = ("bed", "bookcase", "chair", "desk", "misc", "sofa", "table", "tool", "wardrobe")
VOXEL_RESOLUTION = 128  # the real voxel.mat holds a 128^3 grid under the key 'voxel'
# (width, height) aspect factors times `image_size`: real photos range from 256 to 1024 px.
_SIZE_FACTORS = ((1.0, 1.0), (1.25, 1.0), (1.0, 1.25), (1.5, 1.125))
# Image i is saved as _FORMATS[i % 6]: mostly RGB JPEG, some PNG, grayscale JPEG, RGBA PNG.
_FORMATS = (("jpg", "RGB"), ("jpg", "RGB"), ("png", "RGB"), ("jpg", "RGB"), ("jpg", "L"),
            ("png", "RGBA"))  # fmt: skip


def model_frame(mesh: trimesh.Trimesh, rng: np.random.Generator) -> trimesh.Trimesh:
    """Our +z-up object as a Pix3D model: +y up, bounding box centred, longest side 0.6-1."""
    x, y, z = np.asarray(mesh.vertices).T
    v = np.stack([x, z, -y], axis=-1)
    lo, hi = v.min(0), v.max(0)
    v = (v - (lo + hi) / 2) * (rng.uniform(0.6, 1.0) / (hi - lo).max())
    out = trimesh.Trimesh(v, mesh.faces, process=False)
    out.visual.vertex_colors = mesh.visual.vertex_colors
    return out


def filled_voxels(mesh: trimesh.Trimesh, pitch: float, seed: int = 0) -> np.ndarray:
    """Solid occupancy (bool, voxel centres at bounds[0] + i pitch): the voxels that dense
    surface samples (8 per voxel face area) fall in, with their enclosed holes filled (what
    trimesh's `voxelized(pitch).fill()` gives, without subdividing the mesh to the pitch)."""
    count = int(8 * mesh.area / pitch**2) + 1
    points = trimesh.sample.sample_surface(mesh, count, seed=seed)[0]
    index = np.floor((points - mesh.bounds[0]) / pitch + 0.5).astype(np.int64)
    shell = np.zeros(tuple(index.max(0) + 1), bool)
    shell[tuple(index.T)] = True
    return scipy.ndimage.binary_fill_holes(shell)


def write_model(mesh: trimesh.Trimesh, model_dir: str, faults=(), seed: int = 0) -> np.ndarray:
    """model.obj (vertex colours, with `faults` of `shapes.FAULTS`), 3d_keypoints.txt (box
    corners) and voxel.mat (of the intact mesh); returns the 3D key points."""
    os.makedirs(model_dir, exist_ok=True)
    colors = mesh.visual.vertex_colors[:, :3] / 255.0
    lines = ["# synthetic Pix3D model"]
    lines += [f"v {a:.6f} {b:.6f} {c:.6f} {r:.4f} {g:.4f} {bb:.4f}"
              for (a, b, c), (r, g, bb) in zip(mesh.vertices, colors, strict=True)]  # fmt: skip
    faces = with_faults(mesh, faults, seed).faces if faults else mesh.faces
    lines += [f"f {a} {b} {c}" for a, b, c in np.asarray(faces) + 1]
    with open(os.path.join(model_dir, "model.obj"), "w") as f:
        f.write("\n".join(lines) + "\n")
    lo, hi = mesh.bounds
    corners = np.array([[(lo, hi)[i][0], (lo, hi)[j][1], (lo, hi)[k][2]]
                        for i in (0, 1) for j in (0, 1) for k in (0, 1)])  # fmt: skip
    np.savetxt(os.path.join(model_dir, "3d_keypoints.txt"), corners, fmt="%.6f")
    grid = np.zeros((VOXEL_RESOLUTION,) * 3, np.uint8)
    filled = filled_voxels(mesh, float((hi - lo).max()) / (VOXEL_RESOLUTION - 1), seed)
    filled = filled[:VOXEL_RESOLUTION, :VOXEL_RESOLUTION, :VOXEL_RESOLUTION]
    off = [(VOXEL_RESOLUTION - s) // 2 for s in filled.shape]
    grid[tuple(slice(o, o + s) for o, s in zip(off, filled.shape, strict=True))] = filled
    scipy.io.savemat(os.path.join(model_dir, "voxel.mat"), {"voxel": grid}, do_compression=True)
    return corners


def sample_pose(mesh: trimesh.Trimesh, width: int, height: int, rng: np.random.Generator):
    """A Pix3D annotation (rot_mat, trans_mat, focal_length mm, cam_position, inplane) framing
    the model at 60-85% of the image's shorter side, seen from 5-35 degrees above."""
    focal_mm = rng.uniform(28.0, 45.0)
    half_tan = 0.5 * 32.0 / focal_mm * min(width, height) / width
    radius = 0.5 * float(np.linalg.norm(mesh.extents))
    dist = radius / (half_tan * rng.uniform(0.6, 0.85))
    az, el = rng.uniform(0, 2 * np.pi), np.radians(rng.uniform(5.0, 35.0))
    cam = dist * np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
    # Look-at in Pix3D camera axes (+z forward, +x left, +y up), then roll about +z.
    fwd = -cam / np.linalg.norm(cam)
    left = np.cross([0.0, 1.0, 0.0], fwd)
    left /= np.linalg.norm(left)
    look = np.stack([left, np.cross(fwd, left), fwd])
    roll = rng.uniform(-0.1, 0.1)
    c, s = math.cos(roll), math.sin(roll)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ look
    return rot, -rot @ cam, focal_mm, cam, roll


def render_photo(mesh, rot, trans, focal_mm, width, height, rng):
    """(RGB uint8 photo over a random gradient background, 0/255 mask) for one annotation."""
    c2w = pix3d_c2w(rot, trans)
    # drawn on a square power-of-two canvas and cropped (pixel (i, j) is the same either way),
    # so photos of every size share a few compiled programs
    canvas = 1 << (max(width, height) - 1).bit_length()
    cam = Camera(
        c2w=jnp.asarray(c2w[None], jnp.float32),
        focal=jnp.full((1,), pix3d_focal_pixels(focal_mm, width), jnp.float32),
        principal=jnp.array([[width / 2, height / 2]], jnp.float32),
        width=canvas,
        height=canvas,
    )
    colors = mesh.visual.vertex_colors[:, :3] / 255.0
    rgba = render_rgba(cam, mesh.vertices, mesh.faces, colors)[0, :height, :width]
    top, bottom = rng.uniform(0.3, 1.0, 3), rng.uniform(0.2, 0.9, 3)
    ramp = np.linspace(0.0, 1.0, height)[:, None, None]
    background = (top * (1 - ramp) + bottom * ramp) * 255.0
    alpha = rgba[..., 3:] / 255.0
    rgb = rgba[..., :3] * alpha + background * (1 - alpha)
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8), np.where(alpha[..., 0] > 0.5, 255, 0)


def keypoints_2d(corners, rot, trans, focal_mm, width, height, rng, annotators=3):
    """Per annotator, the 3D key points projected with the pose plus click noise; points off
    the image are [-1, -1] as in the real file."""
    cam = corners @ rot.T + trans
    f = pix3d_focal_pixels(focal_mm, width)
    uv = np.stack(
        [width / 2 - f * cam[:, 0] / cam[:, 2], height / 2 - f * cam[:, 1] / cam[:, 2]], 1
    )
    out = []
    for _ in range(annotators):
        noisy = uv + rng.normal(0.0, 1.5, uv.shape)
        off = (noisy < 0).any(1) | (noisy[:, 0] >= width) | (noisy[:, 1] >= height)
        out.append(np.where(off[:, None], -1.0, noisy).tolist())
    return out


def write_pix3d(
    out_dir: str,
    num_objects: int,
    seed: int = 0,
    num_views: int = 2,
    image_size: int = 128,
    categories: tuple[str, ...] = PIX3D_CATEGORIES,
    log=print,
    faults: dict[int, tuple[str, ...]] | None = None,
) -> list[str]:
    """Writes `num_objects` models with `num_views` photos each; returns the image paths.

    `faults` {model index: names from `shapes.FAULTS`} writes those models' OBJ files with the
    faults of real models (the photos show the intact object, as real photos do)."""
    if num_objects < 1 or num_views < 1:
        raise ValueError(f"num_objects and num_views must be >= 1, got {num_objects}, {num_views}")
    entries, counters = [], {}
    for i in range(num_objects):
        category = categories[i % len(categories)]
        rng = np.random.default_rng([seed, i])
        mesh = model_frame(make_object(category, seed * 7919 + i), rng)
        model_name = f"SYN_{category.upper()}_{i // len(categories) + 1}"
        model_rel = f"model/{category}/{model_name}"
        corners = write_model(mesh, os.path.join(out_dir, model_rel),
                              (faults or {}).get(i, ()), seed=seed * 7919 + i)  # fmt: skip
        for _ in range(num_views):
            counters[category] = counters.get(category, 0) + 1
            ident = f"{counters[category]:04d}"
            sw, sh = _SIZE_FACTORS[len(entries) % len(_SIZE_FACTORS)]
            width, height = int(round(image_size * sw)), int(round(image_size * sh))
            rot, trans, focal_mm, cam_pos, roll = sample_pose(mesh, width, height, rng)
            photo, mask = render_photo(mesh, rot, trans, focal_mm, width, height, rng)
            ext, mode = _FORMATS[len(entries) % len(_FORMATS)]
            img_rel, mask_rel = f"img/{category}/{ident}.{ext}", f"mask/{category}/{ident}.png"
            for rel in (img_rel, mask_rel):
                os.makedirs(os.path.dirname(os.path.join(out_dir, rel)), exist_ok=True)
            Image.fromarray(photo).convert(mode).save(os.path.join(out_dir, img_rel))
            Image.fromarray(mask.astype(np.uint8), "L").save(os.path.join(out_dir, mask_rel))
            ys, xs = np.nonzero(mask)
            bbox = [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]
            entries.append({
                "img": img_rel,
                "category": category,
                "img_size": [width, height],
                "2d_keypoints": keypoints_2d(corners, rot, trans, focal_mm, width, height, rng),
                "mask": mask_rel,
                "img_source": "synthetic",
                "model": f"{model_rel}/model.obj",
                "model_raw": None,
                "model_source": "synthetic",
                "3d_keypoints": f"{model_rel}/3d_keypoints.txt",
                "voxel": f"{model_rel}/voxel.mat",
                "rot_mat": rot.tolist(),
                "trans_mat": trans.tolist(),
                "focal_length": focal_mm,
                "cam_position": cam_pos.tolist(),
                "inplane_rotation": roll,
                "truncated": bool(bbox[0] == 0 or bbox[1] == 0 or bbox[2] == width - 1
                                  or bbox[3] == height - 1),  # fmt: skip
                "occluded": False,
                "slightly_occluded": False,
                "bbox": bbox,
            })  # fmt: skip
        log(f"[pix3d {i + 1}/{num_objects}] {model_rel} ({num_views} images)")
    with open(os.path.join(out_dir, "pix3d.json"), "w") as f:
        json.dump(entries, f, indent=1)
    return [e["img"] for e in entries]
