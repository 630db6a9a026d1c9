"""Textured rendering: our rasterizer, interpolated UVs and a bilinear texture lookup."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from nd3d_jax.render.camera import Camera
from nd3d_jax.render.rasterize import Fragments, interpolate, rasterize


def bilinear_taps(image_hw: tuple[int, int], xy: jax.Array):
    """The four texels around continuous pixel coordinates xy (..., 2) (centres at +0.5),
    clamped to the image: rows (..., 4), columns (..., 4) and bilinear weights (..., 4)."""
    height, width = image_hw
    p = xy - 0.5
    p0 = jnp.floor(p)
    f = p - p0
    x0, y0 = p0[..., 0].astype(jnp.int32), p0[..., 1].astype(jnp.int32)
    cols = jnp.stack([x0, x0 + 1, x0, x0 + 1], axis=-1)
    rows = jnp.stack([y0, y0, y0 + 1, y0 + 1], axis=-1)
    fx, fy = f[..., 0:1], f[..., 1:2]
    weights = jnp.concatenate([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], axis=-1)
    return jnp.clip(rows, 0, height - 1), jnp.clip(cols, 0, width - 1), weights


def sample_bilinear(image: jax.Array, xy: jax.Array) -> jax.Array:
    """Bilinear lookup (clamp to edge) of image (H, W, C) at pixel coordinates xy (..., 2)."""
    rows, cols, weights = bilinear_taps(image.shape[:2], xy)
    return jnp.sum(image[rows, cols] * weights[..., None], axis=-2)


def textured_image(frags: Fragments, faces, uvs, texture, background=1.0) -> jax.Array:
    """The colours (H, W, 3) of rasterized fragments: UVs (V, 2) in the atlas convention (u
    right, v down, texel row = v * S) looked up bilinearly in texture (S, S, 3); `background`
    (a scalar or an RGB triple) where nothing is hit."""
    uv = interpolate(frags, faces, uvs)
    size = jnp.array([texture.shape[1], texture.shape[0]], jnp.float32)
    rgb = sample_bilinear(texture, uv * size)
    bg = jnp.broadcast_to(jnp.asarray(background, rgb.dtype), rgb.shape)
    return jnp.where(frags.mask[..., None], rgb, bg)


@functools.partial(jax.jit, static_argnames=("work_budget", "tile"))
def render_textured(
    camera: Camera,
    vertices: jax.Array,
    faces: jax.Array,
    uvs: jax.Array,
    texture: jax.Array,
    background=1.0,
    face_mask: jax.Array | None = None,
    work_budget: int | None = None,
    tile: int = 8,
) -> jax.Array:
    """One view (H, W, 3) of a textured mesh (see `textured_image`); `jax.vmap` it over a
    camera batch."""
    frags = rasterize(camera, vertices, faces, face_mask, tile=tile, work_budget=work_budget)
    return textured_image(frags, faces, uvs, texture, background)


def render_views(cameras: Camera, vertices, faces, uvs, texture, background=1.0, face_mask=None):
    """`render_textured` for a batch of cameras: (K, H, W, 3)."""
    return jax.vmap(
        lambda cam: render_textured(cam, vertices, faces, uvs, texture, background, face_mask)
    )(cameras)
