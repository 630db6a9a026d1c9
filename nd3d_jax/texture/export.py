"""Textured mesh export: glTF 2.0 binary (PBR baseColorTexture) and OBJ + MTL + PNG.

Like `nd3d_jax.prior.mesh.export_coarse`, Z-up meshes are rotated to glTF's Y-up with
`Z_UP_TO_Y_UP`. The texture holds the generated views' colours as they are: glTF and MTL both
read colour textures as sRGB, which is what the diffusion model produced, so no conversion.
trimesh keeps UVs in the OBJ convention (v up) and flips v when it writes glTF.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import trimesh
from PIL import Image

from nd3d_jax.errors import UserError
from nd3d_jax.texture.atlas import UVAtlas

UPS = ("z", "y")
# The same rotation as `nd3d_jax.prior.mesh.Z_UP_TO_Y_UP` (not imported: the prior package
# loads Shap-E): (x, y, z) -> (x, z, -y).
Z_UP_TO_Y_UP = trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0])


def textured_trimesh(atlas: UVAtlas, texture_uint8, name: str = "baked") -> trimesh.Trimesh:
    """The atlas mesh with a PBR material whose baseColorTexture is `texture_uint8` (S, S, 3),
    the atlas's UVs and its smooth (seam-welded) vertex normals."""
    image = np.asarray(texture_uint8)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise UserError(f"texture must be a uint8 (S, S, 3) image, got {image.dtype} {image.shape}")
    uv_obj = np.stack([atlas.uvs[:, 0], 1.0 - atlas.uvs[:, 1]], axis=-1)  # v up for trimesh
    material = trimesh.visual.material.PBRMaterial(
        name=name,
        baseColorTexture=Image.fromarray(image),
        metallicFactor=0.0,
        roughnessFactor=1.0,
    )
    return trimesh.Trimesh(
        vertices=atlas.vertices,
        faces=atlas.faces,
        vertex_normals=atlas.normals,
        visual=trimesh.visual.TextureVisuals(uv=uv_obj, material=material),
        process=False,
    )


def _oriented(mesh: trimesh.Trimesh, up: str) -> trimesh.Trimesh:
    if up not in UPS:
        raise UserError(f"up={up!r}: must be one of {UPS} (the mesh's up axis)")
    normals = np.array(mesh.vertex_normals, np.float64)  # a copy (trimesh's is read-only)
    out = mesh.copy()
    if up == "z":
        rot = Z_UP_TO_Y_UP[:3, :3]
        out.vertices = np.asarray(mesh.vertices, np.float64) @ rot.T
        normals = normals @ rot.T
    length = np.linalg.norm(normals, axis=-1, keepdims=True)
    # glTF requires unit normals: a vertex only on degenerate faces (decimation leaves some)
    # has none, so it gets +Y
    normals = np.where(length > 1e-8, normals / np.maximum(length, 1e-12), [0.0, 1.0, 0.0])
    out.vertex_normals = normals
    return out


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # once, at import (setting it is process-wide, not thread-safe)


def _atomic_write(path: str, data: bytes) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's files are private; ours are ordinary files
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def export_glb(mesh: trimesh.Trimesh, path: str, up: str = "z") -> str:
    """glTF 2.0 binary, Y-up: POSITION, NORMAL, TEXCOORD_0 and a PBR baseColorTexture (PNG).
    `up`: the mesh's up axis ("z" is rotated to Y-up). Written atomically."""
    if not str(path).lower().endswith(".glb"):
        raise UserError(f"{path}: textured meshes are written as .glb here (or use export_obj)")
    data = trimesh.exchange.gltf.export_glb(_oriented(mesh, up), include_normals=True)
    _atomic_write(str(path), data)
    return str(path)


def export_obj(mesh: trimesh.Trimesh, folder: str, name: str = "mesh", up: str = "z") -> str:
    """`folder/name.obj` with `name.mtl` and the texture PNG beside it (Y-up like the GLB);
    returns the OBJ's path. Each file is written atomically."""
    text, assets = trimesh.exchange.obj.export_obj(
        _oriented(mesh, up),
        include_normals=True,
        include_texture=True,
        return_texture=True,
        mtl_name=f"{name}.mtl",
    )
    for file_name, data in assets.items():
        _atomic_write(os.path.join(folder, file_name), data)
    path = os.path.join(folder, f"{name}.obj")
    _atomic_write(path, text.encode("utf-8"))
    return path
