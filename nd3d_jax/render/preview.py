"""Preview renders of any mesh: K views on a ring around the object, tiled in a grid."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from nd3d_jax.render.camera import pinhole, ring_poses
from nd3d_jax.render.maps import (
    check_work,
    color_image,
    grid_layout,
    normal_map,
    plan_views,
    rasterize_views,
    to_uint8,
)
from nd3d_jax.render.rasterize import vertex_normals

KINDS = ("normal", "depth", "color", "shaded")
FOV = 0.8  # radians; the ring radius frames the unit cube's bounding sphere


def normalise(vertices: np.ndarray) -> np.ndarray:
    """Centre the bounding box at the origin and scale its longest side to 1."""
    lo, hi = vertices.min(0), vertices.max(0)
    return (vertices - (lo + hi) / 2) / max(float((hi - lo).max()), 1e-12)


def render_preview(mesh, size: int = 512, views: int = 4, kind: str = "normal", up: str = "y"):
    """The preview grid as a uint8 (rows H, cols W, 3) array. `kind`: world normals, depth,
    vertex colours (grey when the mesh has none), or those colours lit by a headlight."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}, use one of {KINDS}")
    unit = normalise(np.asarray(mesh.vertices))
    # Far enough that the bounding sphere fits the field of view, with a 5% margin.
    radius = float(np.linalg.norm(unit, axis=1).max()) / math.sin(FOV / 2) * 1.05
    cams = pinhole(ring_poses(views, radius, up_axis="xyz".index(up)), size, size, fov=FOV)
    faces = np.asarray(mesh.faces, np.int32)
    visual = getattr(mesh, "visual", None)
    colors = (
        visual.vertex_colors[:, :3] / 255.0 if getattr(visual, "kind", "") == "vertex" else None
    )

    def pad(a, n):  # host arrays: jnp.asarray would compile a copy program per shape
        return np.pad(a, ((0, n - len(a)), (0, 0)))

    # padded to power-of-two sizes: meshes of similar size share one compiled program
    nv, nf = _bucket(len(unit)), _bucket(len(faces))
    arrays = pad(unit, nv).astype(np.float32), pad(faces, nf), np.arange(nf) < len(faces)
    raster = plan_views(cams, *arrays)
    img, num_work = _draw(cams, *arrays,
                          None if colors is None else pad(colors, nv).astype(np.float32),
                          kind, **raster)  # fmt: skip
    check_work(num_work, raster, "preview")
    rows = int(math.floor(math.sqrt(views)))
    while views % rows:
        rows -= 1
    return to_uint8(grid_layout(np.asarray(img), rows=rows))


def _bucket(n: int) -> int:
    return max(256, 1 << max(0, math.ceil(math.log2(max(n, 1)))))


@functools.partial(jax.jit, static_argnames=("kind", "tile", "work_budget"))
def _draw(cams, vertices, faces, face_mask, colors, kind: str, tile: int, work_budget: int):
    """The K views (K, H, W, 3) and the rasterizer's work; `colors` None: grey shading."""
    colors = grey_shading(vertices, faces) if colors is None else colors
    frags = rasterize_views(cams, vertices, faces, face_mask, tile=tile, work_budget=work_budget)
    if kind == "normal":
        img = jax.vmap(lambda f: (normal_map(f, vertices, faces) + 1) / 2)(frags)
        img = jnp.where(frags.mask[..., None], img, 1.0)
    elif kind == "depth":
        d = frags.depth
        near = jnp.min(jnp.where(frags.mask, d, jnp.inf))
        far = jnp.max(d)
        img = jnp.where(frags.mask, 1.0 - 0.8 * (d - near) / (far - near + 1e-9), 0.0)
        img = jnp.repeat(img[..., None], 3, axis=-1)
    else:
        img = jax.vmap(lambda f: color_image(f, faces, colors))(frags)
        if kind == "shaded":  # a headlight: the colours lit from each camera
            n = jax.vmap(lambda f: normal_map(f, vertices, faces))(frags)
            to_camera = cams.c2w[:, None, None, :3, 2]  # OpenGL cameras look along -z
            light = 0.35 + 0.65 * jnp.clip(jnp.sum(n * to_camera, -1), 0.0, 1.0)
            img = jnp.where(frags.mask[..., None], img * light[..., None], img)
    return img, frags.num_work


def grey_shading(vertices, faces) -> jax.Array:
    """Grey vertex colours (V, 3) lit by a fixed light from both sides: shows the shape of a
    mesh without colours."""
    n = vertex_normals(vertices, faces)
    light = jnp.array([0.3, 0.5, 0.8]) / jnp.linalg.norm(jnp.array([0.3, 0.5, 0.8]))
    shade = 0.35 + 0.65 * jnp.abs(n @ light)
    return jnp.repeat(shade[:, None], 3, axis=1)
