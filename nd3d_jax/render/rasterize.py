"""A pure-JAX triangle rasterizer with static shapes (runs on CPU, GPU and TPU alike).

Each face is cut into K x K pixel tiles over its screen bounding box; the (face, tile) pairs
form a work list with a static budget (its true length is returned, overflow is flagged), and
the list is processed in fixed-size chunks inside `lax.scan`, so memory stays bounded however
many faces there are. `work_counts` gives the exact list length for each K in one cheap pass and
`plan` the K and budget of least cost, so callers that can afford one host round trip (texture
baking) size the list exactly. Two passes over the chunks: a scatter-min of depth into the
z-buffer, then a scatter-max of face ids among the candidates at that depth (ties go to the
larger id, deterministically); layouts with no overlap (UV atlases) skip the first.
Barycentrics are then recomputed per pixel for the winning face, perspective-correct, so
attributes interpolate differentiably (visibility is not).

Coverage follows pixel centres, with inclusive edges; faces with a vertex closer than `near` are
skipped (no clipping), as are degenerate ones.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nd3d_jax.render.camera import Camera, project


class Fragments(NamedTuple):
    face_id: jax.Array  # (H, W) int32 nearest face, -1 where nothing is hit
    bary: jax.Array  # (H, W, 3) perspective-correct barycentrics (0 in the background)
    depth: jax.Array  # (H, W) depth along the viewing axis (0 in the background)
    num_work: jax.Array  # () int32 (face, tile) pairs needed; > budget means overflow
    work_budget: int

    @property
    def mask(self) -> jax.Array:
        return self.face_id >= 0

    @property
    def overflow(self) -> jax.Array:
        return self.num_work > self.work_budget


def default_work_budget(num_faces: int, height: int, width: int, tile: int) -> int:
    """One tile per face plus eight layers of full-image coverage by large faces."""
    return num_faces + 8 * (-(-height // tile)) * (-(-width // tile))


def _edge(a, b, p):
    """Twice the signed area of (a, b, p); broadcasts over leading axes."""
    return (b[..., 0] - a[..., 0]) * (p[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (
        p[..., 0] - a[..., 0]
    )


def _sum3(a):
    """a[..., 0] + a[..., 1] + a[..., 2]: XLA's CPU backend runs sums over a size-3 last axis
    several times slower than this."""
    return a[..., 0] + a[..., 1] + a[..., 2]


def _screen_bary(tri_uv, p):
    """Screen-space barycentrics of points p (..., 2) in triangles tri_uv (..., 3, 2)."""
    a, b, c = tri_uv[..., 0, :], tri_uv[..., 1, :], tri_uv[..., 2, :]
    area = _edge(a, b, c)
    safe = jnp.where(jnp.abs(area) > 1e-12, area, 1.0)
    w0, w1, w2 = _edge(b, c, p), _edge(c, a, p), _edge(a, b, p)
    return jnp.stack([w0, w1, w2], axis=-1) / safe[..., None]


def _perspective_bary(lam, tri_z, orthographic: bool):
    """Screen barycentrics -> barycentrics in 3D (weights by 1/z for a pinhole camera)."""
    if orthographic:
        return lam
    w = lam / tri_z
    return w / _sum3(w)[..., None]


class _Boxes(NamedTuple):
    tri_uv: jax.Array  # (F, 3, 2) screen positions of the corners
    tri_z: jax.Array  # (F, 3) their depths
    lo: jax.Array  # (F, 2) first pixel column/row whose centre the bounding box covers
    hi: jax.Array  # (F, 2) last one, clipped to the image
    valid: jax.Array  # (F,) the face can cover a pixel centre


def _boxes(camera: Camera, vertices, faces, face_mask, near: float) -> _Boxes:
    height, width = camera.height, camera.width
    uv, z = project(camera, vertices)
    tri_uv, tri_z = uv[faces], z[faces]
    valid = jnp.all(tri_z > near, axis=-1) & (jnp.abs(_edge(*jnp.unstack(tri_uv, axis=1))) > 1e-12)
    if face_mask is not None:
        valid &= face_mask
    lo = jnp.ceil(jnp.min(tri_uv, axis=1) - 0.5).astype(jnp.int32)
    hi = jnp.floor(jnp.max(tri_uv, axis=1) - 0.5).astype(jnp.int32)
    lo = jnp.maximum(lo, 0)
    hi = jnp.minimum(hi, jnp.array([width - 1, height - 1]))
    valid &= jnp.all(hi >= lo, axis=-1)
    return _Boxes(tri_uv, tri_z, lo, hi, valid)


def _tiles_xy(boxes: _Boxes, tile: int) -> jax.Array:
    """(F, 2) tiles of `tile` pixels across each face's box (0 for skipped faces)."""
    return jnp.where(boxes.valid[:, None], -(-(boxes.hi - boxes.lo + 1) // tile), 0)


TILES = (1, 2, 4, 8)
# A work item's fixed cost (finding its face and tile, gathering the face) in units of one
# candidate pixel's: fitted to CPU timings of UV-atlas and view passes at 256-1024 px.
ITEM_COST = 12.0


def work_counts(
    camera: Camera, vertices, faces, face_mask=None, *, tiles=TILES, near: float = 1e-3
) -> jax.Array:
    """The (face, tile) pairs `rasterize` needs for each tile size in `tiles`: (len(tiles),)
    int32. Cheap (one pass over the faces), so callers size work lists exactly: see `plan`."""
    boxes = _boxes(camera, vertices, faces, face_mask, near)
    return jnp.stack([jnp.sum(jnp.prod(_tiles_xy(boxes, t), axis=-1)) for t in tiles])


def plan(counts, tiles=TILES) -> tuple[int, int]:
    """(tile, work_budget) of least estimated cost for the counts of `work_counts` ((T,), or
    (..., T) for a batch: the maximum per tile): an item costs ITEM_COST + tile^2 candidate
    pixels; the budget is the count rounded up to a shared bucket (2^k or 1.5 x 2^k)."""
    counts = np.asarray(counts).reshape(-1, len(tiles)).max(axis=0)
    costs = [(int(c) * (ITEM_COST + t * t), t, int(c)) for t, c in zip(tiles, counts, strict=True)]
    _, tile, count = min(costs)
    return tile, bucket(count, minimum=128)


def bucket(n: int, minimum: int = 1024) -> int:
    """Padded sizes 2^k or 1.5 * 2^k (>= minimum), so meshes share compiled programs."""
    b = max(minimum, 1 << max(0, math.ceil(math.log2(max(n, 1)))))
    return b * 3 // 4 if b * 3 // 4 >= max(n, minimum) else b


def rasterize(
    camera: Camera,
    vertices: jax.Array,
    faces: jax.Array,
    face_mask: jax.Array | None = None,
    *,
    tile: int = 8,
    work_budget: int | None = None,
    chunk: int = 4096,
    near: float = 1e-3,
    depth_test: bool = True,
) -> Fragments:
    """Rasterizes one mesh (V, 3) / (F, 3) with one camera; `jax.vmap` it for batches.

    `face_mask` (F,) drops padded faces, so meshes of different sizes batch at one shape.
    `depth_test=False` skips the z-buffer pass for meshes whose faces never overlap on screen
    or lie at one depth (UV atlases): the larger face id wins shared edges, as with it.
    """
    height, width = camera.height, camera.width
    num_faces = faces.shape[0]
    if work_budget is None:
        work_budget = default_work_budget(num_faces, height, width, tile)
    chunk = min(chunk, -(-work_budget // 128) * 128)  # small meshes: no padded chunk work
    work_budget = -(-work_budget // chunk) * chunk  # whole chunks

    boxes = _boxes(camera, vertices, faces, face_mask, near)
    tri_uv, tri_z, lo, hi = boxes.tri_uv, boxes.tri_z, boxes.lo, boxes.hi
    tiles_xy = _tiles_xy(boxes, tile)  # (F, 2)
    n_tiles = tiles_xy[:, 0] * tiles_xy[:, 1]
    ends = jnp.cumsum(n_tiles)
    num_work = ends[-1]

    offs = jnp.stack(jnp.meshgrid(jnp.arange(tile), jnp.arange(tile), indexing="xy"), -1)
    offs = offs.reshape(-1, 2)  # (K^2, 2) as (dx, dy)

    def candidates(item):
        """(chunk,) work items -> pixel index, depth (inf where not covered), face id."""
        f = jnp.minimum(jnp.searchsorted(ends, item, side="right"), num_faces - 1)
        t = item - (ends[f] - n_tiles[f])
        tx, ty = t % tiles_xy[f, 0], t // jnp.maximum(tiles_xy[f, 0], 1)
        origin = lo[f] + tile * jnp.stack([tx, ty], axis=-1)
        pix = origin[:, None, :] + offs[None]  # (C, K^2, 2)
        lam = _screen_bary(tri_uv[f][:, None], pix.astype(jnp.float32) + 0.5)
        inside = jnp.all(lam >= 0, axis=-1) & jnp.all(pix <= hi[f][:, None], axis=-1)
        inside &= (item < num_work)[:, None]
        bary = _perspective_bary(lam, tri_z[f][:, None], camera.orthographic)
        depth = _sum3(bary * tri_z[f][:, None])
        flat = jnp.where(inside, pix[..., 1] * width + pix[..., 0], height * width)
        return flat.reshape(-1), jnp.where(inside, depth, jnp.inf).reshape(-1), f

    items = jnp.arange(work_budget, dtype=jnp.int32).reshape(-1, chunk)

    def depth_pass(zbuf, item):
        flat, depth, _ = candidates(item)
        return zbuf.at[flat].min(depth, mode="drop"), None

    if depth_test:
        zbuf, _ = jax.lax.scan(depth_pass, jnp.full(height * width, jnp.inf), items)

    def id_pass(ids, item):
        flat, depth, f = candidates(item)
        win = depth == zbuf[jnp.minimum(flat, height * width - 1)] if depth_test else flat >= 0
        fid = jnp.broadcast_to(f[:, None], (chunk, tile * tile)).reshape(-1)
        return ids.at[jnp.where(win, flat, height * width)].max(fid, mode="drop"), None

    face_id, _ = jax.lax.scan(id_pass, jnp.full(height * width, -1, jnp.int32), items)
    face_id = face_id.reshape(height, width)

    # Barycentrics of the winning face at each pixel centre.
    hit = face_id >= 0
    fid = jnp.maximum(face_id, 0)
    jj, ii = jnp.meshgrid(jnp.arange(width), jnp.arange(height), indexing="xy")
    centre = jnp.stack([jj, ii], axis=-1).astype(jnp.float32) + 0.5
    lam = _screen_bary(tri_uv[fid], centre)
    bary = _perspective_bary(lam, tri_z[fid], camera.orthographic)
    bary = jnp.where(hit[..., None], bary, 0.0)
    if depth_test:
        depth = zbuf.reshape(height, width)
    else:
        depth = _sum3(bary * tri_z[fid])
    depth = jnp.where(hit, depth, 0.0)
    return Fragments(face_id, bary, depth, num_work.astype(jnp.int32), work_budget)


def interpolate(fragments: Fragments, faces: jax.Array, attributes: jax.Array) -> jax.Array:
    """Per-vertex attributes (V, C) at every pixel (H, W, C), 0 in the background.

    Differentiable w.r.t. `attributes` (and through the barycentrics, vertex positions).
    """
    fid = jnp.maximum(fragments.face_id, 0)
    corner = attributes[faces[fid]]  # (H, W, 3, C)
    value = _sum3(jnp.moveaxis(fragments.bary[..., None] * corner, -2, -1))
    return jnp.where(fragments.mask[..., None], value, 0.0)


def face_normals(vertices: jax.Array, faces: jax.Array) -> jax.Array:
    """Unit normals (F, 3) by the right-hand rule on each face's winding."""
    tri = vertices[faces]
    n = jnp.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    return n / jnp.maximum(jnp.linalg.norm(n, axis=-1, keepdims=True), 1e-12)


def vertex_normals(vertices: jax.Array, faces: jax.Array) -> jax.Array:
    """Area-weighted vertex normals (V, 3)."""
    tri = vertices[faces]
    n = jnp.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # length = 2 x area
    acc = jnp.zeros_like(vertices).at[faces.reshape(-1)].add(jnp.repeat(n, 3, axis=0))
    return acc / jnp.maximum(jnp.linalg.norm(acc, axis=-1, keepdims=True), 1e-12)
