"""Texture baking (paper stage M4): K generated views back-projected onto the UV atlas.

Gather, not scatter: every texel centre (its 3D point p, face f and normals from the UV-space
rasterization) is projected into each view k and the view's colour is read bilinearly, tap by
tap. A tap counts only where the view shows that surface: the view's rasterized face there is f,
or its depth is within tol = depth_tolerance * d + (d / focal) * tan(theta) of the texel's depth
d (theta: the face's slant, so the slack covers the depth change across one pixel), and the tap
lies inside the view's object mask eroded by `silhouette_erode` pixels. Nothing behind the
visible surface or across an occlusion edge gets paint. Pixels within `silhouette_erode` x the
view side of the background (the rim, which the diffusion model blends with the background)
weigh `rim_weight`: they paint only what no inner pixel sees, so thin parts a few pixels wide
still get their colour while wide ones never take the rim's.

    w_k(p) = view_weight_k * max(cos_k, 0)^cos_power * coverage_k(p),   cos_k(f) >= min_cos
    colour(p) = sum_k w_k c_k(p) / sum_k w_k

with cos_k the cosine between the smooth normal and the direction to camera k, and
coverage_k the bilinear weight of the taps that passed (times their rim weight). Chart texels no
view sees take the colour of the nearest painted surface: each face's mean painted colour
spread to its corners, then `fill_rings` rings outward over the mesh's edges (welded across
seams); beyond that the `fill` colours (per atlas vertex, the coarse colours) interpolated.
Charts are then dilated into the gaps.

Three programs: the rasterizer's work counts (each pass gets its tile size and an exact work
list), the UV pass (which texels lie on charts; their count sets the next program's size), then
the bake over the chart texels only, their values held as separate x, y, z arrays so every
per-texel step is elementwise (on CPU, 3-4x faster than (N, 3) arrays; 0.2-0.3 s at 1024 px
and 20k faces on 2 cores, from 2.6 s).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nd3d_jax.errors import UserError
from nd3d_jax.render.camera import Camera, project_columns
from nd3d_jax.render.maps import views_work_counts
from nd3d_jax.render.rasterize import bucket, face_normals, plan, rasterize
from nd3d_jax.texture.atlas import (
    TextureSettings,
    UVAtlas,
    padded_arrays,
    texel_fragments_padded,
    uv_work_counts,
)


class BakeResult(NamedTuple):
    texture: jax.Array  # (S, S, 3) float in [0, 1]
    weight: jax.Array  # (S, S) sum of view weights (0: no view sees the texel)
    seen: jax.Array  # (S, S) bool, a view gave the texel its colour
    chart: jax.Array  # (S, S) bool, the texel centre lies on a chart (inside a UV triangle)
    visible: jax.Array  # (S, S) bool, a view's camera sees the texel's surface (front-facing,
    #   unoccluded, in the image; no silhouette or grazing threshold): what could be painted
    num_work: jax.Array  # (2,) rasterizer work items needed: UV pass, most of the view passes


def coverage(result: BakeResult) -> dict[str, float]:
    """Texture coverage: the share of chart texels painted from the views, and of the texels
    some view sees (`visible`) that got paint."""
    seen, chart, visible = (np.asarray(a) for a in (result.seen, result.chart, result.visible))
    visible = visible & chart
    return {
        "painted": float(seen[chart].mean()) if chart.any() else 0.0,
        "visible_painted": float(seen[visible].mean()) if visible.any() else 0.0,
    }


def rim_levels(settings_erode: float, width: int) -> int:
    """Pixels of rim for `silhouette_erode` (a fraction of the view side) at this view width."""
    return int(np.floor(settings_erode * width + 1e-6))


def erode(mask: jax.Array, radius: int) -> jax.Array:
    """Binary erosion (H, W) by a (2r + 1)^2 square (outside the image counts as background)."""
    if radius == 0:
        return mask
    padded = jnp.pad(mask.astype(jnp.float32), radius)  # outside the image: background
    window = (2 * radius + 1, 2 * radius + 1)
    out = jax.lax.reduce_window(padded, 1.0, jax.lax.min, window, (1, 1), "VALID")
    return out > 0.5


def dilate_colors(color: jax.Array, known: jax.Array, steps: int) -> jax.Array:
    """Grows known texels outward `steps` rings: each new texel is the mean of its known
    8-neighbours; texels still unknown afterwards get the mean known colour."""

    def ring(_, state):
        c, k = state
        kf = k.astype(c.dtype)[..., None]
        cp = jnp.pad(c * kf, ((1, 1), (1, 1), (0, 0)))
        kp = jnp.pad(kf, ((1, 1), (1, 1), (0, 0)))
        h, w = k.shape
        total = sum(
            cp[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
            if dy or dx
        )
        count = sum(
            kp[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
            if dy or dx
        )
        new = ~k & (count[..., 0] > 0)
        c = jnp.where(new[..., None], total / jnp.maximum(count, 1.0), c)
        return c, k | new

    color, grown = jax.lax.fori_loop(0, steps, ring, (color, known))
    kf = known.astype(color.dtype)[..., None]
    mean = jnp.sum(color * kf, axis=(0, 1)) / jnp.maximum(jnp.sum(kf), 1.0)
    return jnp.where(grown[..., None], color, mean)


def _take(table: jax.Array, index: jax.Array) -> jax.Array:
    """table[index] for indices known to be in bounds (no clamping: ~2x faster on CPU)."""
    return table.at[index].get(mode="promise_in_bounds")


Vec3 = tuple[jax.Array, jax.Array, jax.Array]  # x, y, z components, each (n,)


def _dot(a: Vec3, b: Vec3) -> jax.Array:
    """Per-texel dot products, written out: XLA's CPU backend runs reductions over a size-3
    axis ~10x slower than these elementwise sums."""
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _unit(a: Vec3) -> Vec3:
    inv = 1.0 / jnp.maximum(jnp.sqrt(_dot(a, a)), 1e-12)
    return a[0] * inv, a[1] * inv, a[2] * inv


class _Texels(NamedTuple):
    """The chart texels, compacted to a static count n (padding entries: `valid` False); vectors
    as three (n,) components, so every per-texel step is elementwise along n."""

    index: jax.Array  # (n,) flat texel index row * S + column (S * S for padding)
    valid: jax.Array  # (n,)
    face: jax.Array  # (n,) face id (0 for padding)
    bary: Vec3  # barycentrics of the texel centre in its face's UV triangle
    position: Vec3  # world position
    normal: Vec3  # smooth unit normal
    face_normal: Vec3  # the face's geometric normal


def _texels(face_id, vertices, faces, uvs, normals, n: int) -> _Texels:
    """The chart texels of a UV-space face-id map (S, S) and their surface points."""
    size = face_id.shape[0]
    fid = face_id.reshape(-1)
    index = jnp.nonzero(fid >= 0, size=n, fill_value=size * size)[0].astype(jnp.int32)
    valid = index < size * size
    face = jnp.where(valid, _take(fid, jnp.minimum(index, size * size - 1)), 0)
    corner = [_take(faces[:, k], face) for k in range(3)]
    u = ((index % size).astype(jnp.float32) + 0.5) / size
    v = ((index // size).astype(jnp.float32) + 0.5) / size
    (u0, u1, u2), (v0, v1, v2) = ([_take(uvs[:, j], c) for c in corner] for j in range(2))
    area = (u1 - u0) * (v2 - v0) - (v1 - v0) * (u2 - u0)
    area = jnp.where(jnp.abs(area) > 1e-20, area, 1.0)
    b0 = ((u2 - u1) * (v - v1) - (v2 - v1) * (u - u1)) / area
    b1 = ((u0 - u2) * (v - v2) - (v0 - v2) * (u - u2)) / area
    bary = (b0, b1, 1.0 - b0 - b1)

    def lerp(table) -> Vec3:  # (V, 3) per-vertex values at the texels
        return tuple(sum(bary[k] * _take(table[:, j], corner[k]) for k in range(3))
                     for j in range(3))  # fmt: skip

    fn = face_normals(vertices, faces)
    fn = tuple(_take(fn[:, j], face) for j in range(3))
    return _Texels(index, valid, face, bary, lerp(vertices), _unit(lerp(normals)), fn)


def _view_sample(camera: Camera, frags, image, texels: _Texels, min_cos, depth_tol, rim_weight,
                 radius: int):  # fmt: skip
    """One view's colour (3 x (n,)), coverage, cosine and visibility (n,) at the texels:
    elementwise over the texels, the four bilinear taps unrolled."""
    p = texels.position
    u, v, d = project_columns(camera, p)
    height, width = frags.face_id.shape
    if camera.orthographic:
        to_cam = tuple(jnp.broadcast_to(camera.c2w[j, 2], d.shape) for j in range(3))
        footprint = 1.0 / camera.focal
    else:
        to_cam = _unit(tuple(camera.c2w[j, 3] - p[j] for j in range(3)))
        footprint = d / camera.focal
    cos_s = _dot(texels.normal, to_cam)
    cos_f = _dot(texels.face_normal, to_cam)
    cos_floor = jnp.maximum(cos_f, jnp.maximum(min_cos, 1e-3))
    tan = jnp.sqrt(jnp.maximum(1.0 - cos_floor**2, 0.0)) / cos_floor
    tol = depth_tol * d + footprint * tan  # (n,)

    # One lookup per tap for the face and the pixel's weight: key = face * 4 + class (0:
    # background, 1: rim, 2: inner), for meshes of up to 2^29 faces.
    mask = frags.face_id >= 0
    inner = erode(mask, radius)
    key = (frags.face_id * 4 + jnp.where(inner, 2, 1)).reshape(-1)
    depth_map = frags.depth.reshape(-1)
    rgb = image.reshape(-1, 3)
    x, y = u - 0.5, v - 0.5  # bilinear taps around the pixel centres (clamped to the image)
    x0, y0 = jnp.floor(x), jnp.floor(y)
    fx, fy = x - x0, y - y0
    x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
    weights, pixels, sees = [], [], False
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        pix = jnp.clip(y0 + dy, 0, height - 1) * width + jnp.clip(x0 + dx, 0, width - 1)
        tap = (fx if dx else 1.0 - fx) * (fy if dy else 1.0 - fy)
        tap_key = _take(key, pix)
        near = jnp.abs(_take(depth_map, pix) - d) <= tol
        shows = (tap_key >= 0) & ((tap_key >> 2 == texels.face) | near)
        sees |= shows & (tap > 0)
        weights.append(jnp.where(shows, tap * jnp.where(tap_key & 2, 1.0, rim_weight), 0.0))
        pixels.append(pix)
    # Computed once: XLA would otherwise redo the taps in each colour channel's sum.
    weights, pixels = jax.lax.optimization_barrier((weights, pixels))
    den = sum(weights)
    num = sum(w[:, None] * _take(rgb, pix) for w, pix in zip(weights, pixels, strict=True))
    inside = (u >= 0) & (u <= width) & (v >= 0) & (v <= height)
    in_view = (d > 0) & inside & texels.valid
    visible = in_view & (cos_f > 0) & sees
    coverage = jnp.where(in_view & (cos_f >= min_cos), den, 0.0)
    return num / jnp.maximum(den, 1e-12)[:, None], coverage, jnp.maximum(cos_s, 0.0), visible


def nearest_painted(color, seen, face_id, faces, face_mask, source, num_faces, rings: int):
    """Colours of the nearest painted surface at the atlas vertices: (V, 3) and a (V,) mask.

    Each face's mean painted texel colour (texels: `color` (N, 3), `seen` and `face_id` (N,))
    goes to its corners' welded vertices (`source`), then unpainted vertices take the mean of
    their painted neighbours, `rings` times."""
    nv = source.shape[0]
    fid = jnp.where(seen, face_id, num_faces)  # unseen texels into a dump segment
    f_sum = jax.ops.segment_sum(color, fid, num_faces + 1)[:num_faces]
    f_cnt = jax.ops.segment_sum(jnp.ones_like(fid, color.dtype), fid, num_faces + 1)[:num_faces]
    f_cnt = jnp.where(face_mask, f_cnt, 0.0)
    f_col = f_sum / jnp.maximum(f_cnt, 1.0)[:, None]
    painted_face = (f_cnt > 0).astype(color.dtype)
    corners = source[faces]  # (F, 3) welded ids
    v_sum = jax.ops.segment_sum(jnp.repeat(f_col * painted_face[:, None], 3, 0),
                                corners.reshape(-1), nv)  # fmt: skip
    v_cnt = jax.ops.segment_sum(jnp.repeat(painted_face, 3), corners.reshape(-1), nv)
    known = v_cnt > 0
    v_col = v_sum / jnp.maximum(v_cnt, 1.0)[:, None]
    edges = jnp.concatenate([corners[:, [0, 1]], corners[:, [1, 2]], corners[:, [2, 0]]])
    live = jnp.tile(face_mask, 3)
    a = jnp.concatenate([edges[:, 0], edges[:, 1]])
    b = jnp.concatenate([edges[:, 1], edges[:, 0]])
    live = jnp.concatenate([live, live]).astype(color.dtype)

    def ring(_, state):
        col, k = state
        kb = k[b].astype(color.dtype) * live
        s = jax.ops.segment_sum(col[b] * kb[:, None], a, nv)
        n = jax.ops.segment_sum(kb, a, nv)
        new = ~k & (n > 0)
        return jnp.where(new[:, None], s / jnp.maximum(n, 1.0)[:, None], col), k | new

    v_col, known = jax.lax.fori_loop(0, rings, ring, (v_col, known))
    return v_col[source], known[source]


@functools.partial(jax.jit, static_argnames=("size", "budget", "tile"))
def _uv_pass(vertices, faces, uvs, normals, face_mask, *, size: int, budget: int, tile: int):
    """The atlas's face-id map (S, S), its chart texel count and the rasterizer's work (the
    texel fragments' other maps are not computed: XLA drops what is not returned)."""
    tex = texel_fragments_padded(vertices, faces, uvs, normals, face_mask, size, budget, tile)
    return tex.face_id, jnp.sum(tex.face_id >= 0), tex.num_work


@functools.partial(
    jax.jit,
    static_argnames=("num_texels", "view_budget", "view_tile", "cos_power", "radius", "dilate",
                     "use_fill", "fill_rings"),
)  # fmt: skip
def bake_arrays(
    face_id,
    vertices,
    faces,
    uvs,
    normals,
    face_mask,
    source,
    fill,
    cameras: Camera,
    views,
    view_weights,
    min_cos,
    depth_tol,
    rim_weight,
    *,
    cos_power: float,
    num_texels: int,
    view_budget: int,
    view_tile: int = 8,
    radius: int,
    dilate: int,
    use_fill: bool,
    fill_rings: int,
) -> BakeResult:
    """The bake on padded atlas arrays (V, ...) / (F, 3) with `face_mask` (F,) and `source`
    (V,) welded vertex ids, given the atlas's UV face-id map (S, S) with at most `num_texels`
    chart texels: one compiled program per bucket size, texture size and view shape.
    `fill` (V, 3) is used when `use_fill`, else unseen texels take the mean seen colour."""
    size = face_id.shape[0]
    tx = _texels(face_id, vertices, faces, uvs, normals, num_texels)

    def step(acc, view):
        camera, image, vw = view
        frags = rasterize(camera, vertices, faces, face_mask, work_budget=view_budget,
                          tile=view_tile)  # fmt: skip
        color, coverage, cos, vis = _view_sample(camera, frags, image, tx, min_cos, depth_tol,
                                                 rim_weight, radius)  # fmt: skip
        power = (jax.lax.integer_pow(cos, int(cos_power)) if float(cos_power).is_integer()
                 else jnp.power(cos, cos_power))  # fmt: skip
        w = vw * power * coverage
        num, den, visible, work = acc
        num = num + w[:, None] * color
        return (num, den + w, visible | vis, jnp.maximum(work, frags.num_work)), None

    zeros = jnp.zeros(num_texels)
    init = (jnp.zeros((num_texels, 3)), zeros, jnp.zeros(num_texels, bool), jnp.int32(0))
    (num, den, visible, work), _ = jax.lax.scan(step, init, (cameras, views, view_weights))
    seen = (den > 1e-12) & tx.valid
    color = num / jnp.maximum(den, 1e-12)[:, None]  # (n, 3)
    mean = jnp.sum(color * seen[:, None], axis=0) / jnp.maximum(jnp.sum(seen), 1.0)
    base = fill if use_fill else jnp.where(jnp.any(seen), mean, 0.5) * jnp.ones_like(fill)
    if fill_rings:  # the nearest painted surface first, then the fill
        near, known = nearest_painted(color, seen, tx.face, faces, face_mask, source,
                                      faces.shape[0], fill_rings)  # fmt: skip
        base = jnp.where(known[:, None], near, base)
    corner = [_take(faces[:, k], tx.face) for k in range(3)]
    unseen = jnp.stack([sum(tx.bary[k] * _take(base[:, j], corner[k]) for k in range(3))
                        for j in range(3)], axis=-1)  # fmt: skip
    texel = jnp.clip(jnp.where(seen[:, None], color, unseen), 0.0, 1.0)

    def scatter(values, empty):  # (n, ...) at the texels -> (S, S, ...)
        out = jnp.full((size * size, *values.shape[1:]), empty, values.dtype)
        return out.at[tx.index].set(values, mode="drop").reshape(size, size, *values.shape[1:])

    chart = face_id >= 0
    texture = dilate_colors(scatter(texel, 0.0), chart, dilate)
    return BakeResult(
        texture=texture,
        weight=scatter(jnp.where(seen, den, 0.0), 0.0),
        seen=scatter(seen, False),
        chart=chart,
        visible=scatter(visible, False),
        num_work=work,
    )


def texel_bucket(count: int, size: int) -> int:
    """Chart texels rounded up to a sixteenth of the texture (atlases fill 40-70% of it): at most
    16 bake programs per texture size, and under 1/16 of the texture's texels wasted."""
    step = max(size * size // 16, 256)
    return max(-(-count // step), 1) * step


def bake(
    atlas: UVAtlas,
    cameras: Camera,
    views,
    fill=None,
    settings: TextureSettings | None = None,
) -> BakeResult:
    """Bakes K views (K, H, W, 3) in [0, 1] seen by `cameras` (a batch of K, width W, height H)
    into an `atlas.size` texture. `fill` (V, 3) in [0, 1], one colour per atlas vertex (see
    `atlas_colors`), paints the chart texels no view sees (None: their mean seen colour).

    Three programs: the rasterizer's work counts (so each pass gets its tile size and an exact
    work list), the UV pass (which texels lie on charts), then the bake over those texels."""
    settings = settings or TextureSettings()
    # host views stay host arrays until the program (no copy program per shape)
    views = (
        views.astype(jnp.float32) if isinstance(views, jax.Array) else np.asarray(views, np.float32)
    )
    if views.ndim != 4 or views.shape[-1] != 3:
        raise UserError(f"texture bake: views must be (K, H, W, 3) RGB, got {views.shape}")
    k, height, width = views.shape[:3]
    if cameras.c2w.shape != (k, 4, 4) or (cameras.height, cameras.width) != (height, width):
        raise UserError(
            f"texture bake: {k} views of {height}x{width} pixels need a batch of {k} cameras of "
            f"that size, got poses {cameras.c2w.shape} at {cameras.height}x{cameras.width}"
        )
    weights = settings.view_weights or (1.0,) * k
    if len(weights) != k:
        raise UserError(f"texture bake: {len(weights)} view_weights for {k} views")
    arrays = padded_arrays(atlas)
    nv = len(atlas.vertices)
    source = np.zeros(len(arrays["vertices"]), np.int32)  # padded vertices: unused ids
    source[:nv] = atlas.source_vertex
    if fill is not None:
        fill = np.asarray(fill, np.float32)
        if fill.shape != (nv, 3):
            raise UserError(f"texture bake: fill must be ({nv}, 3), one per atlas vertex")
        fill = np.pad(np.clip(fill, 0.0, 1.0), ((0, len(arrays["vertices"]) - nv), (0, 0)))
    size = atlas.size
    uv_counts, view_counts = _work_counts(arrays["vertices"], arrays["faces"], arrays["uvs"],
                                          arrays["face_mask"], cameras, size)  # fmt: skip
    (uv_tile, uv_budget), (view_tile, view_budget) = plan(uv_counts), plan(view_counts)
    uv_args = (arrays["vertices"], arrays["faces"], arrays["uvs"], arrays["normals"],
               arrays["face_mask"])  # fmt: skip
    face_id, num_texels, uv_work = _uv_pass(*uv_args, size=size, budget=uv_budget, tile=uv_tile)
    if int(uv_work) > uv_budget:  # the count and the pass disagree only by rounding
        face_id, num_texels, uv_work = _uv_pass(*uv_args, size=size, budget=bucket(int(uv_work)),
                                                tile=uv_tile)  # fmt: skip
    for _ in range(2):  # a second try only when a view pass needed more than its count said
        out = bake_arrays(
            face_id,
            **arrays,
            source=source,
            fill=np.zeros(arrays["vertices"].shape, np.float32) if fill is None else fill,
            cameras=cameras,
            views=views,
            view_weights=np.asarray(weights, np.float32),
            cos_power=float(settings.cos_power),
            min_cos=jnp.float32(settings.min_cos),
            depth_tol=jnp.float32(settings.depth_tolerance),
            rim_weight=jnp.float32(settings.rim_weight),
            num_texels=texel_bucket(int(num_texels), size),
            view_budget=view_budget,
            view_tile=view_tile,
            radius=rim_levels(settings.silhouette_erode, width),
            dilate=settings.dilate,
            use_fill=fill is not None,
            fill_rings=settings.fill_rings,
        )
        if int(out.num_work) <= view_budget:
            return out._replace(num_work=np.array([int(uv_work), int(out.num_work)]))
        view_budget = bucket(int(out.num_work))
    raise RuntimeError(f"texture bake: rasterizer work {int(out.num_work)} over budget")


@functools.partial(jax.jit, static_argnames=("size",))
def _work_counts(vertices, faces, uvs, face_mask, cameras: Camera, size: int):
    """Rasterizer work per tile size: the UV pass's (T,) and the K views' (K, T)."""
    views = views_work_counts(cameras, vertices, faces, face_mask)
    return uv_work_counts(uvs, faces, face_mask, size), views


def atlas_colors(atlas: UVAtlas, colors) -> np.ndarray:
    """Per-vertex colours of the unwrapped mesh (its V_src, C) -> per atlas vertex (V, C)."""
    return np.asarray(colors)[atlas.source_vertex]


def transfer_colors(source_vertices, source_colors, points) -> np.ndarray:
    """Colours at `points` (N, 3) from the nearest of `source_vertices` (M, 3): carries a
    coarse mesh's vertex colours onto the (decimated, unwrapped) mesh as a bake `fill`."""
    from scipy.spatial import cKDTree

    _, idx = cKDTree(np.asarray(source_vertices, np.float64)).query(np.asarray(points))
    return np.asarray(source_colors)[idx]
