"""Synthetic OmniObject3D: the published on-disk layout, filled with procedural objects.

    raw_scans/<cat>/<cat>_<NNN>/Scan/{Scan.obj, Scan.mtl, Scan.jpg}     textured scan, +y up
    blender_renders/<cat>/<cat>_<NNN>/render/images/r_<i>.png            RGBA renders
    blender_renders/<cat>/<cat>_<NNN>/render/transforms.json             cameras
    point_clouds/ply_files/<N>/<cat>/<cat>_<NNN>/pcd_<N>.ply             N surface points

The renders follow the dataset's Blender script (`tools/render_blender.py`): the OBJ is
imported the Blender way (+y up in the file becomes +z up: (x, y, z) -> (x, -z, y)), scaled by
`scale = 0.99 / max |coordinate|` (stored per frame), and seen through Blender's default 50 mm
lens (36 mm sensor) by a camera at (0, 4, 0.5) parented to an empty at the origin that turns by
Euler angles (|arccos(1 - 2u) - pi/2|, 0, 2 pi u'): random views of the upper hemisphere, each
camera kept looking at the origin and upright by a TRACK_TO constraint (no roll).
`transform_matrix` is Blender's camera-to-world matrix (OpenGL axes) and `file_path` the image
name without folder or extension (the script's newer form), or the path it rendered to on the
authors' machine (the older form, `file_path="absolute"`), as in the real `transforms.json`.
`pack_download` lays a written set out as the download comes: per-category tarballs under
`raw/`, some unpacked as the dataset's `batch_untar.sh` does.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
import trimesh
from PIL import Image

from data_pipelines.synthetic.shapes import CATEGORIES, make_object, with_faults
from nd3d_jax.render.camera import look_at, pinhole
from nd3d_jax.render.maps import color_image, rasterize_views
from nd3d_jax.render.rasterize import vertex_normals

CAMERA_ANGLE_X = 2 * math.atan(18.0 / 50.0)  # Blender's default 50 mm lens, 36 mm sensor
CAMERA_LOCATION = (0.0, 4.0, 0.5)  # before the random rotation, as in the dataset's script
POINT_COUNTS = (1024, 4096)


def blender_import(obj_vertices: np.ndarray) -> np.ndarray:
    """OBJ (+y up) to Blender world (+z up) coordinates, as Blender's OBJ importer does."""
    x, y, z = np.asarray(obj_vertices, np.float64).T
    return np.stack([x, -z, y], axis=-1)


def render_scale(world_vertices: np.ndarray) -> float:
    """The dataset script's normalisation: the largest |coordinate| becomes 0.99."""
    return 0.99 / float(np.abs(world_vertices).max())


def _texture_atlas(mesh: trimesh.Trimesh, cell: int = 4):
    """Per-face texture: each face gets a `cell`-pixel square of its colour in a grid atlas.

    Returns (uv (F, 3, 2) in [0, 1] with v up, RGB atlas image uint8).
    """
    n = len(mesh.faces)
    side = int(math.ceil(math.sqrt(n)))
    size = side * cell
    colors = mesh.visual.face_colors[:, :3]
    atlas = np.zeros((side, side, 3), np.uint8)
    atlas.reshape(-1, 3)[:n] = colors
    atlas = np.repeat(np.repeat(atlas, cell, 0), cell, 1)
    row, col = np.divmod(np.arange(n), side)
    # A small triangle inside each cell (1 px margin), v measured from the bottom.
    x0, y0 = (col * cell + 1) / size, (row * cell + 1) / size
    d = (cell - 2) / size
    corners = np.stack([[x0, y0], [x0 + d, y0], [x0, y0 + d]], axis=1)  # (2, 3, F) -> (F,3,2)
    uv = np.transpose(corners, (2, 1, 0)).astype(np.float64)
    uv[..., 1] = 1.0 - uv[..., 1]
    return uv, atlas


def subdivided(mesh: trimesh.Trimesh, target: int) -> trimesh.Trimesh:
    """The same surface with each face split in four until it has about `target` faces (from
    half to twice as many), each new face keeping its parent's colour."""
    vertices, faces = np.asarray(mesh.vertices), np.asarray(mesh.faces)
    colors = np.asarray(mesh.visual.face_colors)
    while 2 * len(faces) < target:
        vertices, faces, children = trimesh.remesh.subdivide(vertices, faces, return_index=True)
        parent = np.empty(len(faces), np.int64)
        for face, new in children.items():  # {old face: its new faces}
            parent[new] = face
        colors = colors[parent]
    out = trimesh.Trimesh(vertices, faces, process=False)
    out.visual.face_colors = colors
    return out


def write_scan(mesh: trimesh.Trimesh, scan_dir: str) -> None:
    """Writes Scan.obj (+y up, with UVs), Scan.mtl and the Scan.jpg texture atlas."""
    os.makedirs(scan_dir, exist_ok=True)
    uv, atlas = _texture_atlas(mesh)
    x, y, z = np.asarray(mesh.vertices).T
    obj_vertices = np.stack([x, z, -y], axis=-1)  # our +z up -> the file's +y up
    lines = ["# synthetic OmniObject3D scan", "mtllib Scan.mtl"]
    lines += [f"v {a:.6f} {b:.6f} {c:.6f}" for a, b, c in obj_vertices]
    lines += [f"vt {u:.6f} {v:.6f}" for u, v in uv.reshape(-1, 2)]
    lines.append("usemtl material_0")
    for i, (a, b, c) in enumerate(np.asarray(mesh.faces) + 1):
        t = 3 * i + 1
        lines.append(f"f {a}/{t} {b}/{t + 1} {c}/{t + 2}")
    with open(os.path.join(scan_dir, "Scan.obj"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(scan_dir, "Scan.mtl"), "w") as f:
        f.write("newmtl material_0\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nmap_Kd Scan.jpg\n")
    Image.fromarray(atlas).save(os.path.join(scan_dir, "Scan.jpg"), quality=95)


def camera_poses(num_views: int, rng: np.random.Generator) -> np.ndarray:
    """(num_views, 4, 4) Blender camera-to-world matrices, as the dataset's script draws them
    (UPPER_VIEWS): the empty's Euler angles (x, 0, z), x = |arccos(1 - 2u) - pi/2| (uniform
    over the upper hemisphere) and z uniform in [0, 2 pi), carry the camera from
    CAMERA_LOCATION; TRACK_TO (-Z at the origin, +Y up towards world +Z) sets its rotation."""
    u = rng.uniform(0, 1, (num_views, 2))
    x, z = np.abs(np.arccos(1 - 2 * u[:, 0]) - np.pi / 2), 2 * np.pi * u[:, 1]
    cx, sx, cz, sz = np.cos(x), np.sin(x), np.cos(z), np.sin(z)
    zeros, ones = np.zeros_like(x), np.ones_like(x)
    rx = np.stack([ones, zeros, zeros, zeros, cx, -sx, zeros, sx, cx], -1).reshape(-1, 3, 3)
    rz = np.stack([cz, -sz, zeros, sz, cz, zeros, zeros, zeros, ones], -1).reshape(-1, 3, 3)
    eye = (rz @ rx) @ np.asarray(CAMERA_LOCATION)  # Blender's XYZ Euler: R = Rz Ry Rx
    return np.asarray(look_at(eye), np.float64)


def _bucket(n: int) -> int:
    return max(256, 1 << (int(n) - 1).bit_length())


@jax.jit
def _draw(cams, v, f, face_mask, colors):
    light = jnp.array([0.4, -0.3, 0.85]) / jnp.linalg.norm(jnp.array([0.4, -0.3, 0.85]))
    n = vertex_normals(v, f)  # padded faces (0, 0, 0) add nothing
    shade = 0.3 + 0.7 * jnp.maximum(n @ light, 0.0) + 0.15 * jnp.maximum(-(n @ light), 0.0)
    shaded = colors * shade[:, None]
    frags = rasterize_views(cams, v, f, face_mask)
    rgb = jax.vmap(lambda fr: color_image(fr, f, shaded, background=(0.0, 0.0, 0.0)))(frags)
    return jnp.concatenate([rgb, frags.mask[..., None].astype(jnp.float32)], axis=-1)


def render_rgba(cams, vertices, faces, colors) -> np.ndarray:
    """RGBA uint8 renders (K, H, W, 4) of a vertex-coloured mesh through a batch of cameras:
    two-sided Lambert shading under one sun, transparent background. Vertices and faces are
    padded to powers of two, so objects share one compiled program per image size."""
    nv, nf = len(vertices), len(faces)
    v, c = np.zeros((_bucket(nv), 3), np.float32), np.zeros((_bucket(nv), 3), np.float32)
    v[:nv], c[:nv] = vertices, colors
    f = np.zeros((_bucket(nf), 3), np.int32)
    f[:nf] = faces
    rgba = np.asarray(_draw(cams, v, f, np.arange(len(f)) < nf, c))
    return (np.clip(rgba, 0, 1) * 255 + 0.5).astype(np.uint8)


RENDER_BATCH = 8  # views per rendering program: any view count reuses one compiled program


def render_views(world_vertices, faces, colors, c2w, size: int) -> np.ndarray:
    """The dataset's square renders (K, size, size, 4) with its field of view, drawn
    RENDER_BATCH at a time (the last batch padded)."""
    c2w = np.asarray(c2w, np.float32)
    out = []
    for start in range(0, len(c2w), RENDER_BATCH):
        batch = c2w[start : start + RENDER_BATCH]
        padded = np.concatenate([batch, np.repeat(batch[-1:], RENDER_BATCH - len(batch), 0)])
        cams = pinhole(jnp.asarray(padded), size, size, fov=CAMERA_ANGLE_X)
        out.append(render_rgba(cams, world_vertices, faces, colors)[: len(batch)])
    return np.concatenate(out)


def write_object(
    root: str,
    category: str,
    index: int,
    seed: int,
    num_views: int = 24,
    image_size: int = 128,
    faults: tuple[str, ...] = (),
    file_path: str = "relative",
    scan_faces: int = 0,
) -> str:
    """Writes one object in all three parts of the layout; returns its name `<cat>_<NNN>`.
    The scan has `faults` (of `shapes.FAULTS`), and about `scan_faces` faces if given (the
    real scans' ~330k: `subdivided`); renders and point clouds show the
    intact object. `file_path`: "relative" ("r_0") or "absolute" (where the authors rendered
    it)."""
    name = f"{category}_{index:03d}"
    mesh = make_object(category, seed)
    scan = with_faults(mesh, faults, seed) if faults else mesh
    if scan_faces:
        scan = subdivided(scan, scan_faces)
    write_scan(scan, os.path.join(root, "raw_scans", category, name, "Scan"))

    # Renders, exactly as the dataset's script frames the imported scan.
    x, y, z = np.asarray(mesh.vertices).T
    world = blender_import(np.stack([x, z, -y], axis=-1))  # == our +z-up vertices
    scale = render_scale(world)
    rng = np.random.default_rng([seed, 1])
    c2w = camera_poses(num_views, rng)
    colors = mesh.visual.vertex_colors[:, :3] / 255.0
    rgba = render_views(world * scale, mesh.faces, colors, c2w, image_size)
    render_dir = os.path.join(root, "blender_renders", category, name, "render")
    os.makedirs(os.path.join(render_dir, "images"), exist_ok=True)
    frames = []
    authors = f"/mnt/omniobject3d/raw_scans/{category}/{name}/render"  # not on this machine
    for i in range(num_views):
        Image.fromarray(rgba[i], "RGBA").save(os.path.join(render_dir, "images", f"r_{i}.png"))
        frames.append(
            {
                "file_path": f"{authors}/r_{i}" if file_path == "absolute" else f"r_{i}",
                "rotation": 2 * math.pi / num_views,
                "transform_matrix": c2w[i].tolist(),
                "scale": scale,
            }
        )
    with open(os.path.join(render_dir, "transforms.json"), "w") as f:
        json.dump({"camera_angle_x": CAMERA_ANGLE_X, "frames": frames}, f, indent=4)

    # Point clouds sampled on the scan's surface, in the OBJ file's coordinates.
    obj_mesh = trimesh.Trimesh(np.stack([x, z, -y], axis=-1), mesh.faces, process=False)
    for n in POINT_COUNTS:
        points, face_idx = trimesh.sample.sample_surface(obj_mesh, n, seed=seed)
        cloud = trimesh.PointCloud(points, colors=mesh.visual.face_colors[face_idx])
        out = os.path.join(root, "point_clouds", "ply_files", str(n), category, name)
        os.makedirs(out, exist_ok=True)
        cloud.export(os.path.join(out, f"pcd_{n}.ply"))
    return name


def write_omniobject3d(
    out_dir: str,
    num_objects: int,
    seed: int = 0,
    num_views: int = 24,
    image_size: int = 128,
    categories: tuple[str, ...] = CATEGORIES,
    log=print,
    faults: dict[int, tuple[str, ...]] | None = None,
    file_path: str = "relative",
) -> list[str]:
    """Writes `num_objects` objects, cycling through `categories`; returns `<cat>/<name>`s.
    `faults` {object index: names from `shapes.FAULTS`} gives those scans real scans' faults."""
    if num_objects < 1:
        raise ValueError(f"num_objects must be >= 1, got {num_objects}")
    written = []
    for i in range(num_objects):
        category = categories[i % len(categories)]
        name = write_object(out_dir, category, i // len(categories) + 1, seed * 100003 + i,
                            num_views, image_size, (faults or {}).get(i, ()),
                            file_path)  # fmt: skip
        written.append(f"{category}/{name}")
        log(f"[omniobject3d {i + 1}/{num_objects}] {category}/{name}")
    return written


SOURCES = ("raw_scans", "blender_renders")  # what the builder reads, per-category tarballs


def pack_download(root: str, out: str, *, nested=(), untarred=()) -> str:
    """Lays the set written under `root` out as the download comes, in `out/raw/`:
    `<source>/<cat>.tar.gz` for each category of raw_scans/ and blender_renders/, holding
    `<cat>/<obj>/...` for categories in `nested`, else `<obj>/...`; categories in `untarred`
    are also unpacked beside their tarball as `batch_untar.sh` does (`mkdir <cat>; tar -xf
    <cat>.tar.gz -C <cat>`: `<cat>/<cat>/<obj>` when nested). Returns `out`."""
    for source in SOURCES:
        dst = os.path.join(out, "raw", source)
        os.makedirs(dst, exist_ok=True)
        for cat in sorted(os.listdir(os.path.join(root, source))):
            tarball = os.path.join(dst, f"{cat}.tar.gz")
            with tarfile.open(tarball, "w:gz") as tar:
                for obj in sorted(os.listdir(os.path.join(root, source, cat))):
                    arcname = f"{cat}/{obj}" if cat in nested else obj
                    tar.add(os.path.join(root, source, cat, obj), arcname=arcname)
            if cat in untarred:
                os.makedirs(os.path.join(dst, cat))
                with tarfile.open(tarball) as tar:
                    tar.extractall(os.path.join(dst, cat), filter="data")
    clouds = os.path.join(root, "point_clouds")
    if os.path.isdir(clouds):
        shutil.copytree(clouds, os.path.join(out, "raw", "point_clouds"))
    return out
