"""Rendered maps from fragments: normal, depth and colour images, and the K-view grid layout."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange

from nd3d_jax.render.camera import Camera
from nd3d_jax.render.rasterize import (
    Fragments,
    interpolate,
    plan,
    rasterize,
    vertex_normals,
    work_counts,
)


def rasterize_views(
    cameras: Camera,
    vertices: jax.Array,
    faces: jax.Array,
    face_mask: jax.Array | None = None,
    **kwargs,
) -> Fragments:
    """One mesh seen by a batch of cameras (leading axis of every camera field)."""
    return jax.vmap(lambda cam: rasterize(cam, vertices, faces, face_mask, **kwargs))(cameras)


def views_work_counts(cameras: Camera, vertices, faces, face_mask) -> jax.Array:
    """`work_counts` for a batch of cameras: (K, T)."""
    return jax.vmap(lambda cam: work_counts(cam, vertices, faces, face_mask))(cameras)


def plan_views(cameras: Camera, vertices, faces, face_mask) -> dict:
    """`rasterize_views`' tile and exact work budget for these cameras and mesh (one cheap
    program and a host round trip): `rasterize_views(..., **plan_views(...))`."""
    tile, budget = plan(_views_work_counts_jit(cameras, vertices, faces, face_mask))
    return {"tile": tile, "work_budget": budget}


_views_work_counts_jit = jax.jit(views_work_counts)


def check_work(num_work, raster: dict, what: str) -> None:
    """Raises when a pass sized by `plan_views` needed more work than it was given (the counts
    are exact, so this is a bug, not a user error)."""
    if (need := int(np.max(num_work))) > raster["work_budget"]:
        raise RuntimeError(f"{what}: rasterizer work {need} over its budget {raster}")


def normal_map(
    fragments: Fragments,
    vertices: jax.Array,
    faces: jax.Array,
    background: float = 0.0,
    smooth: bool = True,
) -> jax.Array:
    """World-space unit normals per pixel (H, W, 3): interpolated vertex normals (or the flat
    face normal), `background` where nothing is hit. Map to colours with `(n + 1) / 2`."""
    if smooth:
        n = interpolate(fragments, faces, vertex_normals(vertices, faces))
    else:
        tri = vertices[faces[jnp.maximum(fragments.face_id, 0)]]
        n = jnp.cross(tri[..., 1, :] - tri[..., 0, :], tri[..., 2, :] - tri[..., 0, :])
    n = n / jnp.maximum(jnp.linalg.norm(n, axis=-1, keepdims=True), 1e-12)
    return jnp.where(fragments.mask[..., None], n, background)


def depth_map(fragments: Fragments, background: float = 0.0) -> jax.Array:
    """Depth along the viewing axis (H, W), `background` where nothing is hit."""
    return jnp.where(fragments.mask, fragments.depth, background)


def color_image(
    fragments: Fragments,
    faces: jax.Array,
    vertex_colors: jax.Array,
    background=(1.0, 1.0, 1.0),
) -> jax.Array:
    """Interpolated vertex colours (H, W, C) over a constant background colour."""
    rgb = interpolate(fragments, faces, vertex_colors)
    bg = jnp.broadcast_to(jnp.asarray(background, rgb.dtype), rgb.shape)
    return jnp.where(fragments.mask[..., None], rgb, bg)


def grid_layout(images, rows: int = 2, cols: int | None = None):
    """Tiles K views (K, H, W, C) into one (rows H, cols W, C) image, row-major."""
    k = images.shape[0]
    cols = cols or -(-k // rows)
    if rows * cols != k:
        raise ValueError(f"grid_layout: {k} views do not fill a {rows}x{cols} grid")
    return rearrange(images, "(r c) h w ch -> (r h) (c w) ch", r=rows, c=cols)


def grid_split(grid, rows: int = 2, cols: int = 2):
    """The inverse of `grid_layout`: (rows H, cols W, C) -> (rows cols, H, W, C)."""
    return rearrange(grid, "(r h) (c w) ch -> (r c) h w ch", r=rows, c=cols)


def to_uint8(image) -> np.ndarray:
    """[0, 1] floats -> uint8 (clipped), on the host."""
    return (np.clip(np.asarray(image, np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
