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
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nd3d_jax.errors import UserError
from nd3d_jax.render.camera import Camera, project
from nd3d_jax.render.rasterize import default_work_budget, rasterize
from nd3d_jax.texture.atlas import (
    TextureSettings,
    UVAtlas,
    bucket,
    padded_arrays,
    texel_fragments_padded,
)
from nd3d_jax.texture.render import bilinear_taps


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


def _view_sample(camera: Camera, frags, image, tex, chart, min_cos, depth_tol, rim_weight,
                 radius: int):  # fmt: skip
    """One view's colour (N, 3), coverage (N,), cosine (N,) and visibility (N,) at the N
    texels (flattened)."""
    p = tex.position.reshape(-1, 3)
    n = tex.normal.reshape(-1, 3)
    fn = tex.face_normal.reshape(-1, 3)
    fid = tex.face_id.reshape(-1)
    xy, d = project(camera, p)
    height, width = frags.face_id.shape
    rows, cols, taps = bilinear_taps((height, width), xy)  # (N, 4)

    if camera.orthographic:
        to_cam = jnp.broadcast_to(camera.c2w[:3, 2], p.shape)
        footprint = 1.0 / camera.focal
    else:
        to_cam = camera.c2w[:3, 3] - p
        to_cam = to_cam / jnp.maximum(jnp.linalg.norm(to_cam, axis=-1, keepdims=True), 1e-12)
        footprint = d / camera.focal
    cos_s = jnp.sum(n * to_cam, axis=-1)
    cos_f = jnp.sum(fn * to_cam, axis=-1)
    cos_floor = jnp.maximum(cos_f, jnp.maximum(min_cos, 1e-3))
    tan = jnp.sqrt(jnp.maximum(1.0 - cos_floor**2, 0.0)) / cos_floor
    tol = depth_tol * d + footprint * tan  # (N,)

    mask = frags.face_id >= 0
    inner = erode(mask, radius)
    pixel_weight = jnp.where(inner, 1.0, jnp.where(mask, rim_weight, 0.0))
    tap_face, tap_depth = frags.face_id[rows, cols], frags.depth[rows, cols]
    shows = mask[rows, cols] & (
        (tap_face == fid[:, None]) | (jnp.abs(tap_depth - d[:, None]) <= tol[:, None])
    )
    inside = (xy[:, 0] >= 0) & (xy[:, 0] <= width) & (xy[:, 1] >= 0) & (xy[:, 1] <= height)
    in_view = (d > 0) & inside & chart.reshape(-1)
    visible = in_view & (cos_f > 0) & jnp.any(shows & (taps > 0), axis=-1)
    wt = taps * shows * pixel_weight[rows, cols]
    coverage = jnp.where(in_view & (cos_f >= min_cos), jnp.sum(wt, axis=-1), 0.0)
    color = jnp.sum(image[rows, cols] * wt[..., None], axis=1) / jnp.maximum(
        jnp.sum(wt, axis=-1, keepdims=True), 1e-12
    )
    return color, coverage, jnp.maximum(cos_s, 0.0), visible


def nearest_painted(color, seen, face_id, faces, face_mask, source, num_faces, rings: int):
    """Colours of the nearest painted surface at the atlas vertices: (V, 3) and a (V,) mask.

    Each face's mean painted texel colour goes to its corners' welded vertices (`source`),
    then unpainted vertices take the mean of their painted neighbours, `rings` times."""
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


@functools.partial(
    jax.jit,
    static_argnames=("size", "uv_budget", "view_budget", "radius", "dilate", "use_fill",
                     "fill_rings"),
)  # fmt: skip
def bake_arrays(
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
    cos_power,
    min_cos,
    depth_tol,
    rim_weight,
    *,
    size: int,
    uv_budget: int,
    view_budget: int,
    radius: int,
    dilate: int,
    use_fill: bool,
    fill_rings: int,
) -> BakeResult:
    """The bake on padded atlas arrays (V, ...) / (F, 3) with `face_mask` (F,) and `source`
    (V,) welded vertex ids: one compiled program per bucket size, texture size and view shape.
    `fill` (V, 3) is used when `use_fill`, else unseen texels take the mean seen colour."""
    tex = texel_fragments_padded(vertices, faces, uvs, normals, face_mask, size, uv_budget)
    chart = tex.face_id >= 0

    def step(acc, view):
        camera, image, vw = view
        frags = rasterize(camera, vertices, faces, face_mask, work_budget=view_budget)
        color, coverage, cos, vis = _view_sample(
            camera, frags, image, tex, chart, min_cos, depth_tol, rim_weight, radius
        )
        w = vw * jnp.power(cos, cos_power) * coverage
        num, den, visible, work = acc
        return (num + w[:, None] * color, den + w, visible | vis,
                jnp.maximum(work, frags.num_work)), None  # fmt: skip

    n = size * size
    init = (jnp.zeros((n, 3)), jnp.zeros(n), jnp.zeros(n, bool), jnp.int32(0))
    (num, den, visible, work), _ = jax.lax.scan(step, init, (cameras, views, view_weights))
    seen = (den > 1e-12) & chart.reshape(-1)
    color = num / jnp.maximum(den, 1e-12)[:, None]
    sf = seen.astype(color.dtype)[:, None]
    mean = jnp.sum(color * sf, axis=0) / jnp.maximum(jnp.sum(sf), 1.0)
    base = fill if use_fill else jnp.where(jnp.any(seen), mean, 0.5) * jnp.ones_like(fill)
    if fill_rings:  # the nearest painted surface first, then the fill
        near, known = nearest_painted(color, seen, tex.face_id.reshape(-1), faces, face_mask,
                                      source, faces.shape[0], fill_rings)  # fmt: skip
        base = jnp.where(known[:, None], near, base)
    corner = base[faces[jnp.maximum(tex.face_id, 0)]]  # (S, S, 3, 3)
    unseen = jnp.sum(tex.bary[..., None] * corner, axis=-2).reshape(-1, 3)
    texture = jnp.where(seen[:, None], color, unseen).reshape(size, size, 3)
    texture = dilate_colors(jnp.clip(texture, 0.0, 1.0), chart, dilate)
    return BakeResult(
        texture=texture,
        weight=jnp.where(seen, den, 0.0).reshape(size, size),
        seen=seen.reshape(size, size),
        chart=chart,
        visible=visible.reshape(size, size),
        num_work=jnp.stack([tex.num_work, work]),
    )


def bake(
    atlas: UVAtlas,
    cameras: Camera,
    views,
    fill=None,
    settings: TextureSettings | None = None,
) -> BakeResult:
    """Bakes K views (K, H, W, 3) in [0, 1] seen by `cameras` (a batch of K, width W, height H)
    into an `atlas.size` texture. `fill` (V, 3) in [0, 1], one colour per atlas vertex (see
    `atlas_colors`), paints the chart texels no view sees (None: their mean seen colour)."""
    settings = settings or TextureSettings()
    views = jnp.asarray(views, jnp.float32)
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
    num_faces = len(arrays["faces"])
    uv_budget = default_work_budget(num_faces, size, size, 8)
    view_budget = default_work_budget(num_faces, height, width, 8)
    for _ in range(2):  # a second try only when a rasterizer pass overflowed its budget
        out = bake_arrays(
            **arrays,
            source=jnp.asarray(source),
            fill=jnp.zeros_like(arrays["vertices"]) if fill is None else jnp.asarray(fill),
            cameras=cameras,
            views=views,
            view_weights=jnp.asarray(weights, jnp.float32),
            cos_power=jnp.float32(settings.cos_power),
            min_cos=jnp.float32(settings.min_cos),
            depth_tol=jnp.float32(settings.depth_tolerance),
            rim_weight=jnp.float32(settings.rim_weight),
            size=size,
            uv_budget=uv_budget,
            view_budget=view_budget,
            radius=rim_levels(settings.silhouette_erode, width),
            dilate=settings.dilate,
            use_fill=fill is not None,
            fill_rings=settings.fill_rings,
        )
        uv_work, view_work = (int(w) for w in out.num_work)
        if uv_work <= uv_budget and view_work <= view_budget:
            return out
        uv_budget = max(uv_budget, bucket(uv_work))
        view_budget = max(view_budget, bucket(view_work))
    raise RuntimeError(f"texture bake: rasterizer work {uv_work}, {view_work} over budget")


def atlas_colors(atlas: UVAtlas, colors) -> np.ndarray:
    """Per-vertex colours of the unwrapped mesh (its V_src, C) -> per atlas vertex (V, C)."""
    return np.asarray(colors)[atlas.source_vertex]


def transfer_colors(source_vertices, source_colors, points) -> np.ndarray:
    """Colours at `points` (N, 3) from the nearest of `source_vertices` (M, 3): carries a
    coarse mesh's vertex colours onto the (decimated, unwrapped) mesh as a bake `fill`."""
    from scipy.spatial import cKDTree

    _, idx = cKDTree(np.asarray(source_vertices, np.float64)).query(np.asarray(points))
    return np.asarray(source_colors)[idx]
