"""How good a UV atlas is: overlaps, texel utilisation and distortion (shared by the tests, the
unwrapper's own overlap check and the `generate` benchmark).

Texels are counted by their centres, in the atlas convention (texel (i, j) has its centre at
(u, v) = ((j + 0.5) / S, (i + 0.5) / S), v down). `texel_spans` rasterises every UV triangle
by horizontal spans with a half-open rule (a centre on an edge shared by two triangles belongs
to exactly one of them), so a texel counted twice lies inside two triangles: a real overlap.
Charts are the connected components of faces sharing atlas vertices.

Distortion compares each face's UV triangle with its 3D triangle through the Jacobian J of the
affine map between them (3D triangle in its own plane -> UV, in texels), singular values
s1 >= s2, and r = s1 s2 / c its area ratio relative to the atlas's overall ratio c = (sum of UV
areas) / (sum of 3D areas):

    area_distortion  = sum_f A_f max(r_f, 1 / r_f) / sum_f A_f   (1: uniform texel density)
    angle_distortion = sum_f A_f (s1_f / s2_f) / sum_f A_f        (1: conformal, no shear)

with A_f the 3D areas, over the faces whose UV triangle is neither degenerate nor flipped
(those are counted apart). A face is flipped when its orientation in UV is the opposite of its
chart's (area-weighted) majority: a fold. A whole chart mirrored (xatlas makes some) is no
defect for baking, only for tangent-space normal maps; `mirrored_charts` counts them. A planar
projection of a face tilted by theta from the projection direction has s1 = 1 and
s2 = cos(theta): angle distortion 1 / cos(theta), area ratio cos(theta) / c.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


@dataclasses.dataclass(frozen=True)
class AtlasQuality:
    faces: int
    charts: int  # connected components of faces sharing atlas vertices
    utilisation: float  # share of the S x S texel centres inside some UV triangle
    overlap_texels: int  # texel centres inside triangles of two different charts
    fold_texels: int  # texel centres inside two triangles of one chart (it folds over)
    degenerate_faces: int  # faces of positive 3D area whose UV triangle has zero area
    flipped_faces: int  # faces oriented against the rest of their chart (folds)
    mirrored_charts: int  # charts whose UV image is the mirror image of the surface
    area_distortion: float
    angle_distortion: float

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def signed_uv_area(uvs: np.ndarray, faces: np.ndarray, size: int = 1) -> np.ndarray:
    """(F,) signed UV areas in texels^2: positive when the triangle, shown as an image (v down),
    runs counter-clockwise like the 3D face seen from outside (not mirrored)."""
    t = uvs[faces].astype(np.float64) * size
    d1, d2 = t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]
    return -0.5 * (d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0])  # (u, -v) is right-handed


def uv_charts(faces: np.ndarray, num_vertices: int) -> np.ndarray:
    """(F,) chart id of every face: connected components of faces through shared vertices."""
    f = np.asarray(faces)
    n = len(f)
    rows = np.repeat(np.arange(n), 3)
    graph = coo_matrix((np.ones(3 * n), (rows, n + f.reshape(-1))), shape=(n + num_vertices,) * 2)
    _, labels = connected_components(graph, directed=False)
    return labels[:n]


def texel_spans(uvs: np.ndarray, faces: np.ndarray, size: int):
    """The texel centres inside each UV triangle as row spans: (row, first column, end column
    (exclusive), face) arrays, one entry per (face, row) with a centre inside."""
    tri = uvs[faces].astype(np.float64) * size  # (F, 3, 2) in texels: x = u S, y = v S
    # vertices sorted by (y, x): rows [y0, y1) span the edges 0-2 and 0-1, rows [y1, y2) the
    # edges 0-2 and 1-2; each edge is its upper end + slope, the same in both of its faces
    (x0, x1, x2), (y0, y1, y2) = tri[..., 0].T, tri[..., 1].T

    def order(xa, ya, xb, yb):  # compare-swap on (y, x)
        swap = (ya > yb) | ((ya == yb) & (xa > xb))
        return (np.where(swap, xb, xa), np.where(swap, yb, ya),
                np.where(swap, xa, xb), np.where(swap, ya, yb))  # fmt: skip

    x0, y0, x1, y1 = order(x0, y0, x1, y1)
    x1, y1, x2, y2 = order(x1, y1, x2, y2)
    x0, y0, x1, y1 = order(x0, y0, x1, y1)

    def edge(xa, ya, xb, yb):  # x = at + y * slope on the edge from its upper end a to b
        dy = yb - ya
        slope = (xb - xa) / np.where(dy > 0, dy, 1.0)
        return xa - ya * slope, slope

    a02, s02 = edge(x0, y0, x2, y2)
    a01, s01 = edge(x0, y0, x1, y1)
    a12, s12 = edge(x1, y1, x2, y2)
    i0 = np.clip(np.ceil(y0 - 0.5), 0, size).astype(np.int64)  # rows: y_c in [y0, y2)
    i1 = np.clip(np.ceil(y2 - 0.5), 0, size).astype(np.int64)
    rows_per = np.maximum(i1 - i0, 0)
    face = np.repeat(np.arange(len(faces)), rows_per)
    row = np.arange(len(face)) - np.repeat(np.cumsum(rows_per) - rows_per - i0, rows_per)
    yc = row + 0.5
    xl = np.repeat(a02, rows_per) + yc * np.repeat(s02, rows_per)
    upper = yc < np.repeat(y1, rows_per)
    xs = np.where(upper, np.repeat(a01, rows_per), np.repeat(a12, rows_per))
    xs += yc * np.where(upper, np.repeat(s01, rows_per), np.repeat(s12, rows_per))
    lo = np.clip(np.ceil(np.minimum(xl, xs) - 0.5), 0, size)  # columns: x_c in [lo, hi)
    hi = np.clip(np.ceil(np.maximum(xl, xs) - 0.5), 0, size)
    ok = hi > lo
    return row[ok], lo[ok].astype(np.int64), hi[ok].astype(np.int64), face[ok]


def accumulate_spans(row, j0, j1, size: int, values=None) -> np.ndarray:
    """(S, S): per texel the number of spans containing it (int64), or the sum of their
    `values` (float64)."""
    start, end = row * (size + 1) + j0, row * (size + 1) + j1
    n = size * (size + 1)
    if values is None:
        diff = np.bincount(start, minlength=n) - np.bincount(end, minlength=n)
    else:
        diff = np.bincount(start, values, n) - np.bincount(end, values, n)
    return np.cumsum(diff.reshape(size, size + 1), axis=1)[:, :size]


def coverage(uvs: np.ndarray, faces: np.ndarray, size: int, weights=()):
    """Per texel: how many UV triangles contain its centre (S, S) int, and for each of
    `weights` ((F,) arrays) the sum of the containing faces' values (S, S) float64."""
    row, j0, j1, face = texel_spans(uvs, faces, size)
    count = accumulate_spans(row, j0, j1, size)
    sums = [accumulate_spans(row, j0, j1, size, np.asarray(w, np.float64)[face]) for w in weights]
    return count, sums


def jacobian_singular_values(vertices, faces, uvs, size: int = 1):
    """(F,) singular values s1 >= s2 of the 3D -> UV (texels) map of every face, its signed UV
    area (`signed_uv_area`) and its 3D area."""
    p = np.asarray(vertices, np.float64)[faces]
    e1, e2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    len1 = np.linalg.norm(e1, axis=1)
    area3 = 0.5 * np.linalg.norm(np.cross(e1, e2), axis=1)
    # The 3D triangle in its plane: q1 = (|e1|, 0), q2 = (e2 . e1 / |e1|, 2 A / |e1|).
    safe = np.maximum(len1, 1e-30)
    q2x, q2y = np.sum(e1 * e2, 1) / safe, 2 * area3 / safe
    t = uvs[faces].astype(np.float64) * size
    d1, d2 = t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]
    d1 = d1 * [1, -1]  # (u, -v): right-handed, so det > 0 is not mirrored
    d2 = d2 * [1, -1]
    # J = [d1 d2] [q1 q2]^-1, with [q1 q2] = [[len1, q2x], [0, q2y]].
    inv_det = 1.0 / np.maximum(len1 * q2y, 1e-30)
    a = d1[:, 0] * q2y * inv_det
    b = (d2[:, 0] * len1 - d1[:, 0] * q2x) * inv_det
    c = d1[:, 1] * q2y * inv_det
    d = (d2[:, 1] * len1 - d1[:, 1] * q2x) * inv_det
    frob = a * a + b * b + c * c + d * d
    det = a * d - b * c
    root = np.sqrt(np.maximum(frob * frob - 4 * det * det, 0.0))
    s1 = np.sqrt(0.5 * (frob + root))
    s2 = np.sqrt(np.maximum(0.5 * (frob - root), 0.0))
    uv_area = 0.5 * (d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0])
    return s1, s2, uv_area, area3


def atlas_quality(vertices, faces, uvs, size: int) -> AtlasQuality:
    """The measures of the module docstring for an atlas (atlas vertices, faces, uvs in
    [0, 1], v down) at texture size `size`."""
    faces = np.asarray(faces, np.int64)
    uvs = np.asarray(uvs)
    chart = uv_charts(faces, len(uvs)).astype(np.float64)
    count, (csum, csq) = coverage(uvs, faces, size, (chart, chart * chart))
    multi = count >= 2
    mixed = multi & (np.abs(count * csq - csum * csum) > 0.5)  # ids not all equal
    s1, s2, uv_area, area3 = jacobian_singular_values(vertices, faces, uvs, size)
    real = area3 > 1e-12 * max(float(area3.max()), 1e-30)
    ids = chart.astype(np.int64)
    major = np.bincount(ids, uv_area) >= 0  # per chart: not mirrored
    flipped = real & (uv_area != 0) & ((uv_area > 0) != major[ids])
    good = real & (uv_area != 0) & (s2 > 0) & ~flipped
    w = area3[good]
    uv_abs = np.abs(uv_area[good])
    ratio = uv_abs / area3[good] / (uv_abs.sum() / max(w.sum(), 1e-30))
    return AtlasQuality(
        faces=len(faces),
        charts=int(chart.max()) + 1 if len(faces) else 0,
        utilisation=float(np.mean(count > 0)),
        overlap_texels=int(mixed.sum()),
        fold_texels=int((multi & ~mixed).sum()),
        degenerate_faces=int((real & ~good & ~flipped).sum()),
        flipped_faces=int(flipped.sum()),
        mirrored_charts=int((~major[np.unique(ids)]).sum()),
        area_distortion=float(np.sum(w * np.maximum(ratio, 1 / ratio)) / max(w.sum(), 1e-30)),
        angle_distortion=float(np.sum(w * s1[good] / s2[good]) / max(w.sum(), 1e-30)),
    )
