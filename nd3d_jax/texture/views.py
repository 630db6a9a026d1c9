"""Whole meshes rendered by our rasterizer at K cameras, unlit over white: a textured mesh (as
`generate` writes it) or one with vertex colours (a ground truth, a baseline's output).

The turntable and preview sheet of `generate` and the images the metrics compare (`evaluate`
draws the ground truth and the generated object at the same cameras, so the metrics see colour
and shape, not two renderers) all come from here. Arrays are padded to bucket sizes
(`render.rasterize.bucket`): meshes of similar size share one compiled program.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import trimesh

from nd3d_jax.errors import UserError
from nd3d_jax.render.camera import Camera
from nd3d_jax.render.maps import check_work, color_image, plan_views, rasterize_views, to_uint8
from nd3d_jax.render.rasterize import bucket
from nd3d_jax.texture.render import textured_image


def _pad(a: np.ndarray, n: int) -> np.ndarray:
    return np.pad(a, [(0, n - len(a))] + [(0, 0)] * (a.ndim - 1))


def _mesh_arrays(mesh: trimesh.Trimesh, what: str):
    v = np.asarray(mesh.vertices, np.float32)
    f = np.asarray(mesh.faces, np.int32)
    if not len(f) or not np.isfinite(v).all():
        raise UserError(f"{what}: the mesh has no faces or non-finite vertices")
    nv, nf = bucket(len(v)), bucket(len(f))
    return v, f, nv, nf


def render_colored(mesh: trimesh.Trimesh, cameras: Camera, what: str = "mesh",
                   with_mask: bool = False):  # fmt: skip
    """(K, H, W, 3) uint8 views of a mesh with vertex colours (grey when it has none); with
    `with_mask`, also the (K, H, W) bool coverage."""
    v, f, nv, nf = _mesh_arrays(mesh, what)
    visual = getattr(mesh, "visual", None)
    if visual is not None and visual.kind == "vertex":
        colors = np.asarray(visual.vertex_colors[:, :3], np.float32) / 255.0
    else:
        colors = np.full((len(v), 3), 0.6, np.float32)
    arrays = _pad(v, nv), _pad(f, nf), np.arange(nf) < len(f)
    raster = plan_views(cameras, *arrays)
    images, mask, work = _draw_colored(cameras, *arrays, _pad(colors, nv), **raster)
    check_work(work, raster, what)
    images = to_uint8(np.asarray(images))
    return (images, np.asarray(mask)) if with_mask else images


@functools.partial(jax.jit, static_argnames=("tile", "work_budget"))
def _draw_colored(cams, vertices, faces, face_mask, colors, tile: int, work_budget: int):
    frags = rasterize_views(cams, vertices, faces, face_mask, tile=tile, work_budget=work_budget)
    images = jax.vmap(lambda fr: color_image(fr, faces, colors))(frags)
    return images, frags.mask, frags.num_work


def textured_arrays(mesh: trimesh.Trimesh, what: str = "mesh"):
    """Vertices, faces, UVs (atlas convention: v down) and the texture in [0, 1] of a textured
    trimesh (`generate`'s GLB as `trimesh.load(..., force="mesh")` reads it)."""
    visual = getattr(mesh, "visual", None)
    material = getattr(visual, "material", None)
    image = getattr(material, "baseColorTexture", None) or getattr(material, "image", None)
    uv = getattr(visual, "uv", None)
    if uv is None or image is None:
        raise UserError(f"{what}: not a textured mesh (no UVs or no base colour texture)")
    uv = np.asarray(uv, np.float32)
    uv = np.stack([uv[:, 0], 1.0 - uv[:, 1]], axis=-1)  # trimesh keeps v up; rows go down
    texture = np.asarray(image.convert("RGB"), np.float32) / 255.0
    return np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces, np.int32), uv, texture


def render_textured(mesh: trimesh.Trimesh, cameras: Camera, what: str = "mesh") -> np.ndarray:
    """(K, H, W, 3) uint8 views of a textured mesh (bilinear texture lookup)."""
    v, f, uv, texture = textured_arrays(mesh, what)
    _, _, nv, nf = _mesh_arrays(mesh, what)
    arrays = _pad(v, nv), _pad(f, nf), np.arange(nf) < len(f)
    raster = plan_views(cameras, *arrays)
    images, work = _draw_textured(cameras, *arrays, _pad(uv, nv), texture, **raster)
    check_work(work, raster, what)
    return to_uint8(np.asarray(images))


@functools.partial(jax.jit, static_argnames=("tile", "work_budget"))
def _draw_textured(cams, vertices, faces, face_mask, uvs, texture, tile: int, work_budget: int):
    frags = rasterize_views(cams, vertices, faces, face_mask, tile=tile, work_budget=work_budget)
    images = jax.vmap(lambda fr: textured_image(fr, faces, uvs, texture))(frags)
    return images, frags.num_work


def is_textured(mesh: trimesh.Trimesh) -> bool:
    visual = getattr(mesh, "visual", None)
    return getattr(visual, "kind", None) == "texture" and getattr(visual, "uv", None) is not None


def render_mesh(mesh: trimesh.Trimesh, cameras: Camera, what: str = "mesh") -> np.ndarray:
    """A textured mesh (ours) or one with vertex colours (e.g. a baseline's): (K, H, W, 3)."""
    if is_textured(mesh):
        return render_textured(mesh, cameras, what)
    return render_colored(mesh, cameras, what)


def load_mesh_file(path: str) -> trimesh.Trimesh:
    """A generated GLB/OBJ/PLY as one trimesh; a `UserError` naming the file otherwise."""
    try:
        mesh = trimesh.load(path, force="mesh", process=False)
    except Exception as e:  # noqa: BLE001 - trimesh raises many kinds on bad files
        raise UserError(f"{path}: cannot read the mesh ({type(e).__name__}: {e})") from e
    if not isinstance(mesh, trimesh.Trimesh) or not len(mesh.faces):
        raise UserError(f"{path}: holds no triangle mesh")
    return mesh
