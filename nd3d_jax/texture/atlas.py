"""UV atlases (paper stage M4): texture settings, unwrapping, UV-space rasterization.

An atlas is the refined mesh split at chart seams, with one UV per vertex in [0, 1]^2 in the
glTF convention: u to the right, v DOWN, so texel (row i, column j) of an S x S texture covers
v in [i/S, (i+1)/S) and u in [j/S, (j+1)/S), centres at +0.5 (our rasterizer's pixel rule).

Two unwrappers (`TextureSettings.unwrapper`): "charts", ours (`texture/charts.py`: planar
charts from the normals, outline packing; linear in the faces, about 0.1 s at 20k faces), and
"xatlas" (conformal charts, bitmap packing; its cost grows faster than linearly, 0.7 s at 8k
faces, 3.5 s at 20k on one core). Meshes above `TextureSettings.max_faces` are decimated first
(quadric decimation); the texture is then baked on the decimated mesh.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import trimesh
import xatlas

from data_pipelines.shape_samples import quadric_decimation
from nd3d_jax.config_check import Choice, Float, Int, Seq, check_fields
from nd3d_jax.errors import UserError
from nd3d_jax.render.camera import orthographic
from nd3d_jax.render.rasterize import (
    bucket,
    face_normals,
    interpolate,
    plan,
    rasterize,
    work_counts,
)
from nd3d_jax.texture.charts import unwrap_charts

UNWRAPPERS = ("charts", "xatlas")


@dataclasses.dataclass(frozen=True)
class TextureSettings:
    """Every knob of unwrapping and baking.

    size: texture side in texels.
    unwrapper: "charts" (ours, `texture/charts.py`) or "xatlas".
    padding: texels between charts: exactly, for "charts"; for "xatlas" asked of its packer
        (`PackOptions.padding`), whose atlas is then scaled uniformly to fit `size`, so the gaps
        end up padding * size / packed side.
    max_faces: decimate meshes with more faces before unwrapping (0: never).
    cos_power: a view's weight at a texel is cos(normal, to-camera)^cos_power.
    min_cos: views seeing a face at a grazing angle (cos below this) give it no colour.
    silhouette_erode: the width of each view's silhouette rim as a fraction of the view side
        (1/256: one pixel at 256 px, none at 32 px); the diffusion model blends rim pixels with
        the background, so they weigh `rim_weight` and paint only what no inner pixel sees.
    rim_weight: the rim pixels' weight (0: they never paint).
    depth_tolerance: relative depth slack of the visibility test: a view pixel shows a texel when
        it shows the texel's face, or a surface within depth_tolerance * depth of the texel's
        depth (plus the depth change across one pixel at the face's slant).
    view_weights: one weight per view (empty: all 1), e.g. to favour the front view.
    dilate: texels each chart is grown outward into the gaps (so bilinear and mipmap lookups
        never read background); the remaining gap texels get the mean chart colour.
    fill_rings: unseen texels take the nearest painted surface's colour up to this many mesh
        edges away (0: never), then the fill (the coarse colours).
    """

    size: int = 1024
    unwrapper: str = "charts"
    padding: int = 4
    max_faces: int = 20000
    cos_power: float = 2.0
    min_cos: float = 0.1
    silhouette_erode: float = 1 / 256
    rim_weight: float = 0.01
    depth_tolerance: float = 0.01
    view_weights: tuple[float, ...] = ()
    dilate: int = 8
    fill_rings: int = 16

    # Each field's range (types come from the annotations): checked here and, for the `texture`
    # section of a config, by nd3d_jax.config_check before any command runs.
    LIMITS = dict(
        size=Int(16, 16384), unwrapper=Choice(*UNWRAPPERS), padding=Int(0, note="below size / 4"),
        max_faces=Int(100, also=(0,), note="0: never decimate"), cos_power=Float(0),
        min_cos=Float(0, 1, high_open=True), depth_tolerance=Float(0),
        silhouette_erode=Float(0, 0.5, high_open=True, note="a fraction of the view side"),
        rim_weight=Float(0, 1), view_weights=Seq(Float(0), note="not all 0"), dilate=Int(0),
        fill_rings=Int(0),
    )  # fmt: skip

    def __post_init__(self):
        check_fields(self, "texture settings")
        pad, weights = self.padding, tuple(self.view_weights)
        if pad >= self.size // 4:
            raise UserError(f"texture settings: padding={pad} not below size/4 = {self.size // 4}")
        if weights and max(weights) <= 0:
            raise UserError(f"texture settings: view_weights={weights} are all 0")


@dataclasses.dataclass
class UVAtlas:
    """A mesh with a UV chart layout (vertices split at chart seams)."""

    vertices: np.ndarray  # (V, 3) float32
    faces: np.ndarray  # (F, 3) int32, in the unwrapped mesh's face order
    uvs: np.ndarray  # (V, 2) float32 in [0, 1]; u right, v down (row = v * size)
    source_vertex: np.ndarray  # (V,) int32 index into the unwrapped mesh's vertices
    size: int
    normals: np.ndarray | None = None  # (V, 3) smooth unit normals of the welded mesh

    def __post_init__(self):
        if self.normals is None:  # area-weighted, summed over the split copies of each vertex
            tri = self.vertices[self.faces].astype(np.float64)
            area_n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
            acc = np.zeros((int(self.source_vertex.max()) + 1, 3))
            np.add.at(acc, self.source_vertex[self.faces].reshape(-1), np.repeat(area_n, 3, 0))
            acc /= np.maximum(np.linalg.norm(acc, axis=-1, keepdims=True), 1e-12)
            self.normals = acc[self.source_vertex].astype(np.float32)


def decimate(mesh: trimesh.Trimesh, max_faces: int) -> trimesh.Trimesh:
    """Quadric decimation to at most `max_faces` faces (the mesh itself when it has fewer)."""
    if max_faces == 0 or len(mesh.faces) <= max_faces:
        return mesh
    out = quadric_decimation(mesh, max_faces)
    return trimesh.Trimesh(out.vertices, out.faces, process=True)


def unwrap(
    mesh: trimesh.Trimesh, settings: TextureSettings | None = None
) -> tuple[UVAtlas, trimesh.Trimesh]:
    """Charts packed into a `settings.size` square by `settings.unwrapper`: the atlas and the
    (decimated) mesh it was built on (its vertices are what `UVAtlas.source_vertex` indexes)."""
    settings = settings or TextureSettings()
    if len(mesh.faces) == 0:
        raise UserError("texture: the mesh has no faces to unwrap")
    base = decimate(mesh, settings.max_faces)
    vertices = np.asarray(base.vertices, np.float32)
    if settings.unwrapper == "charts":
        try:
            vmap, indices, uvs = unwrap_charts(base.vertices, base.faces, settings.size,
                                               settings.padding)  # fmt: skip
        except ValueError as e:  # more charts than texels
            raise UserError(f"texture: {e}; raise texture.size or lower texture.padding") from e
    else:
        vmap, indices, uvs = _xatlas(vertices, np.asarray(base.faces, np.uint32), settings)
    return (
        UVAtlas(
            vertices=vertices[vmap],
            faces=np.asarray(indices, np.int32),
            uvs=np.clip(uvs, 0.0, 1.0).astype(np.float32),
            source_vertex=np.asarray(vmap, np.int32),
            size=settings.size,
        ),
        base,
    )


def _xatlas(vertices: np.ndarray, faces: np.ndarray, settings: TextureSettings):
    """xatlas's (vertex map, faces, uvs in [0, 1], v down) for the mesh."""
    atlas = xatlas.Atlas()
    atlas.add_mesh(vertices, faces)
    pack = xatlas.PackOptions()
    pack.resolution = settings.size
    pack.padding = settings.padding
    pack.bilinear = True
    atlas.generate(xatlas.ChartOptions(), pack)
    for _ in range(3):  # its estimated scale rarely overflows `size`: then pack smaller, again
        if atlas.atlas_count == 1:
            break
        pack.texels_per_unit = 0.7 * atlas.texels_per_unit
        atlas.generate(xatlas.ChartOptions(), pack)
    if atlas.atlas_count != 1:
        raise RuntimeError(f"xatlas packed {atlas.atlas_count} atlases, expected one")
    vmap, indices, uvs = atlas[0]
    # xatlas normalises u by its width and v by its height, which only approximate `size`:
    # back to packer texels, then one uniform scale into the square.
    w, h = atlas.width, atlas.height
    return vmap, indices, np.asarray(uvs, np.float64) * np.array([w, h]) / max(w, h)


class TexelFragments(NamedTuple):
    face_id: jax.Array  # (S, S) int32, -1 outside every chart
    bary: jax.Array  # (S, S, 3)
    position: jax.Array  # (S, S, 3) world position of each texel centre (0 outside)
    normal: jax.Array  # (S, S, 3) smooth unit normal (0 outside)
    face_normal: jax.Array  # (S, S, 3) the face's geometric normal (0 outside)
    num_work: jax.Array  # () rasterizer work items needed (> budget: overflow)


def uv_camera(size: int):
    """An orthographic camera over the UV square: world (u, 1 - v, 0) lands on pixel (u, v) * S."""
    c2w = np.eye(4, dtype=np.float32)
    c2w[:3, 3] = (0.5, 0.5, 1.0)
    return orthographic(c2w, size, size, extent=1.0)


def uv_plane(uvs):
    """Atlas UVs (V, 2) as points (V, 3) that `uv_camera` sees at their texels."""
    return jnp.concatenate([uvs[:, :1], 1.0 - uvs[:, 1:2], jnp.zeros_like(uvs[:, :1])], -1)


def texel_fragments_padded(vertices, faces, uvs, normals, face_mask, size: int, budget: int,
                           tile: int = 8):  # fmt: skip
    """`texel_fragments` on padded arrays (traceable; `size`, `budget` and `tile` static).
    Charts never overlap and all lie at one depth: no z-buffer pass."""
    frags = rasterize(uv_camera(size), uv_plane(uvs), faces, face_mask, work_budget=budget,
                      tile=tile, depth_test=False)  # fmt: skip
    hit = frags.mask[..., None]
    n = interpolate(frags, faces, normals)
    n = n / jnp.maximum(jnp.linalg.norm(n, axis=-1, keepdims=True), 1e-12)
    fn = face_normals(vertices, faces)[jnp.maximum(frags.face_id, 0)]
    return TexelFragments(
        face_id=frags.face_id,
        bary=frags.bary,
        position=interpolate(frags, faces, vertices),
        normal=jnp.where(hit, n, 0.0),
        face_normal=jnp.where(hit, fn, 0.0),
        num_work=frags.num_work,
    )


def padded_arrays(atlas: UVAtlas):
    """The atlas's arrays padded to bucket sizes, with the (F,) face mask."""
    nv, nf = len(atlas.vertices), len(atlas.faces)
    bv, bf = bucket(nv), bucket(nf)

    def pad(a, n):
        return np.pad(a, [(0, n - len(a))] + [(0, 0)] * (a.ndim - 1))

    return jax.device_put(  # (jnp.asarray would compile a copy program per shape)
        dict(
            vertices=pad(atlas.vertices, bv).astype(np.float32),
            faces=pad(atlas.faces, bf).astype(np.int32),
            uvs=pad(atlas.uvs, bv).astype(np.float32),
            normals=pad(atlas.normals, bv).astype(np.float32),
            face_mask=np.arange(bf) < nf,
        )
    )


_texel_jit = jax.jit(texel_fragments_padded, static_argnames=("size", "budget", "tile"))


@functools.partial(jax.jit, static_argnames=("size",))
def uv_work_counts(uvs, faces, face_mask, size: int):
    """`work_counts` of the UV-space rasterization at each tile size of `TILES`."""
    return work_counts(uv_camera(size), uv_plane(uvs), faces, face_mask)


def texel_fragments(atlas: UVAtlas) -> TexelFragments:
    """UV-space rasterization of the atlas at its texture size: which face, where in 3D and with
    which normal each texel centre lies (jitted, padded to bucket sizes)."""
    arrays = padded_arrays(atlas)
    counts = uv_work_counts(arrays["uvs"], arrays["faces"], arrays["face_mask"], atlas.size)
    tile, budget = plan(counts)
    out = _texel_jit(**arrays, size=atlas.size, budget=budget, tile=tile)
    if int(out.num_work) > budget:  # the count and the pass disagree only by rounding
        out = _texel_jit(**arrays, size=atlas.size, budget=bucket(int(out.num_work)), tile=tile)
    return out
