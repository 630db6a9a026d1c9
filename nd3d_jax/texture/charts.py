"""Our UV unwrapper (`TextureSettings.unwrapper = "charts"`): planar charts grown from the
mesh's normals, packed into the square texture. Vectorised numpy + scipy, linear in the faces.

1. Labels: every face gets one of the 6 axis directions d_k, chosen by iterated conditional
   modes on a Potts energy over the face adjacency graph,

       E(f, k) = 1 - n~_f . d_k + SMOOTHNESS * (share of f's neighbours labelled otherwise),

   with n~_f the area-weighted normal smoothed over `SMOOTH_RINGS` rings of neighbours;
   labels whose axis the face's own normal does not face (n_f . d_k <= MIN_COS) are
   forbidden, so every face projects with positive area.
2. Charts: edge-connected components of equally labelled faces that do not cross creases
   (normals more than CREASE apart), those under SMALL of the area joined to a neighbour
   whose direction all their faces face; each is projected onto the
   plane of its area-weighted mean normal (the label's axis where that would tilt one of its
   faces past MIN_COS) and turned to its smallest bounding box among `ANGLES` rotations, then
   by the quarter turn that leaves the least room above its outline.
3. Refinement, on the charts that changed: a chart filling less than FILL_MIN of its box (the
   top and legs of a table seen from the front) is cut across where the filled share of its
   slices jumps; a chart folding over itself (two sheets facing the same way: rasterised by
   `atlas_quality.texel_spans`, a texel centre inside two of its faces) first loses the
   overlapping faces and CARVE_RINGS rings around them to charts of their own, and if it
   folds again is cut at its median depth (in the last rounds the overlapping faces become
   one chart each).
4. Packing: every chart's outline (per column of the packer, the rows its triangles and
   `padding` texels around them reach), tallest first, each where it rests highest on the
   skyline of those before (then leftmost); charts under SMALL_BOX of the side first go on
   shelves in blocks that join the skyline as rectangles. One texel density for all charts,
   the largest that fits the square (to 2%). The packed atlas is checked for folds once more
   on its own texel grid (charts are packed apart, so a texel inside two faces is a fold), and
   what folds there is refined and packed again.

Stable Fast 3D's box-projection unwrapper (6 axes, projected and packed as boxes) is the model
for speed; the per-chart planes, the Potts smoothing and the outline packing cut its stretch,
its fragments and its wasted texels.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from nd3d_jax.texture.atlas_quality import texel_spans

AXES = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], float)
SMOOTH_RINGS = 2  # rings of neighbours averaged into n~
SMOOTHNESS = 0.4  # Potts weight: a face leaves its neighbours' label only for a better normal
ICM_STEPS = 4
MIN_COS = 0.2  # every face must face its chart's projection direction by this much
CARVE_RINGS = 1  # rings of neighbours carved with the faces of a fold
CREASE = np.radians(60)  # charts end at edges bent by more
ANGLES = 8  # chart rotations tried, in [0, 90) degrees
FILL_MIN = 0.4  # charts filling less of their box are cut (up to MAX_CUTS times)
MAX_CUTS = 3
SPARSE_BOX = 0.01  # ... and take more than this share of all boxes' area
SLICES = 32  # slices per chart side where the cut is looked for
ROUNDS = 12  # rounds of refinement and packing at most
SMALL = 1e-4  # charts with less of the area join a neighbour where they can
SMALL_BOX = 1 / 32  # charts with smaller boxes (share of the side) are packed on shelves


def face_adjacency(faces: np.ndarray, num_vertices: int) -> np.ndarray:
    """(P, 2) pairs of faces sharing an edge (faces around a non-manifold edge: a chain)."""
    e = faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
    key = np.minimum(e[:, 0], e[:, 1]) * num_vertices + np.maximum(e[:, 0], e[:, 1])
    order = np.argsort(key, kind="stable")
    key, owner = key[order], order // 3
    same = key[1:] == key[:-1]
    pairs = np.stack([owner[:-1][same], owner[1:][same]], 1)
    return pairs[pairs[:, 0] != pairs[:, 1]]


def components(num: int, pairs: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """(num,) component id of every node of the graph made of the `keep` edges of `pairs`."""
    p = pairs[keep]
    graph = coo_matrix((np.ones(len(p)), (p[:, 0], p[:, 1])), shape=(num, num))
    return connected_components(graph, directed=False)[1]


def face_labels(normals: np.ndarray, unit: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """(F,) axis label per face (step 1): `normals` area-weighted (F, 3), `unit` their unit
    vectors (0 for degenerate faces)."""
    n = len(normals)
    both = np.concatenate([pairs, pairs[:, ::-1]])
    adj = coo_matrix((np.ones(len(both)), (both[:, 0], both[:, 1])), shape=(n, n)).tocsr()
    smooth = normals
    for _ in range(SMOOTH_RINGS):
        smooth = smooth + adj @ smooth
    smooth = smooth / np.maximum(np.linalg.norm(smooth, axis=1, keepdims=True), 1e-30)
    degenerate = ~np.any(unit != 0, axis=1)
    allowed = (unit @ AXES.T > MIN_COS) | degenerate[:, None]  # a unit normal faces one axis
    cost = np.where(allowed, 1.0 - smooth @ AXES.T, np.inf)  # by >= 1/sqrt(3)
    label = np.argmin(cost, axis=1)
    degree = np.maximum(np.bincount(both[:, 0], minlength=n), 1)[:, None]
    for _ in range(ICM_STEPS):
        agree = adj @ np.eye(len(AXES))[label]  # (F, 6) neighbours per label
        new = np.argmin(cost + SMOOTHNESS * (1.0 - agree / degree), axis=1)
        if np.array_equal(new, label):
            break
        label = new
    return label


def chart_directions(chart, num_charts, normals, unit, label):
    """(C, 3) projection direction per chart: its mean normal, or its axis where the mean
    normal would leave one of its faces facing it by less than MIN_COS."""
    mean = np.stack([np.bincount(chart, normals[:, i], num_charts) for i in range(3)], 1)
    norm = np.linalg.norm(mean, axis=1)
    mean = mean / np.maximum(norm, 1e-30)[:, None]
    dots = np.sum(unit * mean[chart], axis=1)
    dots[~np.any(unit != 0, axis=1)] = 1.0
    worst = np.full(num_charts, np.inf)
    np.minimum.at(worst, chart, dots)
    axis = np.zeros(num_charts, np.int64)
    axis[chart] = label
    keep = (worst > MIN_COS) & (norm > 0)
    return np.where(keep[:, None], mean, AXES[axis])


def project(vertices, faces, chart, direction):
    """Charts projected onto their planes: per atlas vertex its source vertex, chart and
    chart-local (x, y) (x right, y down from its bounding box's corner, as seen from outside:
    not mirrored), the atlas faces, and per chart its box's extent (C, 2).

    Each chart is turned to its smallest box among ANGLES rotations, then by the quarter turn
    that leaves the least empty space above its outline: concave sides face down, where the
    skyline packer can fill them."""
    nv, c = len(vertices), len(direction)
    key = np.repeat(chart, 3) * nv + faces.reshape(-1)
    uniq, inverse = np.unique(key, return_inverse=True)  # sorted: charts are contiguous
    vc, src = uniq // nv, uniq % nv
    # in-plane axes: a world axis made perpendicular to d (t), and b = d x t (right-handed)
    helper = np.eye(3)[np.array([1, 2, 0])[np.argmax(np.abs(direction), axis=1)]]
    t = helper - np.sum(helper * direction, 1, keepdims=True) * direction
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    b = np.cross(direction, t)
    p = vertices[src]
    x, y = np.sum(p * t[vc], 1), np.sum(p * b[vc], 1)
    starts = np.searchsorted(vc, np.arange(c))

    def turned(theta):  # (V, A) coordinates turned by per-chart angles (C, A), x and y-down
        cos, sin = np.cos(theta)[vc], np.sin(theta)[vc]
        return cos * x[:, None] + sin * y[:, None], sin * x[:, None] - cos * y[:, None]

    def box(xr, yr):
        lo = np.stack([np.minimum.reduceat(xr, starts), np.minimum.reduceat(yr, starts)], -1)
        hi = np.stack([np.maximum.reduceat(xr, starts), np.maximum.reduceat(yr, starts)], -1)
        return lo, hi

    angles = np.broadcast_to(np.arange(ANGLES) * (0.5 * np.pi / ANGLES), (c, ANGLES))
    lo, hi = box(*turned(angles))
    ext = hi - lo
    best = angles[np.arange(c), np.argmin(ext[..., 0] * ext[..., 1], axis=1)]
    quarter = best[:, None] + np.arange(4) * (0.5 * np.pi)  # (C, 4)
    xr, yr = turned(quarter)
    lo, hi = box(xr, yr)
    ext = np.maximum(hi - lo, 1e-30)
    # empty space above the outline: per chart 16 columns, the highest vertex in each
    col = np.minimum(((xr - lo[vc, :, 0]) / ext[vc, :, 0] * 16).astype(np.int64), 15)
    first = np.full((c, 4, 16), np.inf)
    np.minimum.at(first, (vc[:, None], np.arange(4), col), (yr - lo[vc, :, 1]) / ext[vc, :, 1])
    waste = np.mean(np.where(np.isfinite(first), first, 0.0), axis=2)  # share of the box
    pick = np.argmin(waste + 0.02 * (ext[..., 1] > ext[..., 0]), axis=1)  # then: wide
    rows = np.arange(len(vc))
    xy = np.stack([xr[rows, pick[vc]], yr[rows, pick[vc]]], 1)
    xy -= lo[np.arange(c), pick][vc]
    return src, vc, xy, inverse.reshape(-1, 3), ext[np.arange(c), pick]


def outlines(tri_lo, tri_hi, face_chart, ext, scale: float, cell: int, gap: int):
    """Every chart's outline at `scale` on the packer's columns of `cell` texels: per chart its
    column count, and per column (charts concatenated) the first and last texel row, from the
    top of its box, that the chart's triangles with `gap` texels of padding reach."""
    cols = (np.ceil(ext[:, 0] * scale).astype(np.int64) + gap + cell - 1) // cell
    starts = np.cumsum(cols) - cols
    c0 = np.floor(tri_lo[:, 0] * scale / cell).astype(np.int64)
    c1 = np.minimum((tri_hi[:, 0] * scale + gap) // cell, cols[face_chart] - 1).astype(np.int64)
    n = np.maximum(c1 - c0 + 1, 1)
    face = np.repeat(np.arange(len(n)), n)
    idx = starts[face_chart][face] + c0[face] + np.arange(len(face))
    idx -= np.repeat(np.cumsum(n) - n, n)
    top = np.full(int(cols.sum()), np.inf)
    bottom = np.full(int(cols.sum()), -np.inf)
    np.minimum.at(top, idx, tri_lo[face, 1] * scale)
    np.maximum.at(bottom, idx, tri_hi[face, 1] * scale + gap)
    return cols, top, bottom


def skyline_pack(cols, top, bottom, side: int, cell: int):
    """Charts (outlines from `outlines`) placed tallest first, each at the column where it
    rests highest on the skyline of those placed before (then leftmost): their corners (C, 2)
    in texels (x, y down) and the height used (inf if a chart is wider than `side`)."""
    n = side // cell
    sky = np.zeros(n)
    ends = np.cumsum(cols)
    height = np.maximum.reduceat(bottom, ends - cols)
    corner = np.zeros((len(cols), 2))
    if cols.max() > n:
        return corner, np.inf
    windows = {}  # per width, the (positions, width) view of the skyline
    order = np.lexsort((-cols, -height)).tolist()
    widths, stops = cols.tolist(), ends.tolist()
    for i in order:
        w, end = widths[i], stops[i]
        window = windows.get(w)
        if window is None:
            window = np.lib.stride_tricks.as_strided(sky, (n - w + 1, w), sky.strides * 2)
            windows[w] = window
        rest = np.max(window - top[end - w : end], axis=1)  # where the chart would rest
        x = int(np.argmin(rest))
        y = max(float(rest[x]), 0.0)
        seg = sky[x : x + w]
        np.maximum(seg, y + bottom[end - w : end], out=seg)
        corner[i] = x * cell, y
    return corner, float(sky.max())


def shelves(width, height, side: int):
    """Boxes (B,) of integer texels, tallest first, on shelves `side` wide, the shelves cut
    into blocks at most `side` high (a taller box gets a block of its own): per box its block
    and corner in the block (B, 2), per block its height."""
    order = np.argsort(-height, kind="stable")
    w, h = width[order], height[order]
    ends = np.cumsum(w)
    corner = np.zeros((len(w), 2), np.int64)
    block = np.zeros(len(w), np.int64)
    blocks, top, start = [0], 0, 0
    while start < len(w):
        base = ends[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(ends, base + side, side="right")))
        if top and top + h[start] > side:  # the shelf starts the next block
            blocks.append(0)
            top = 0
        corner[start:stop, 0] = ends[start:stop] - w[start:stop] - base
        corner[start:stop, 1] = top
        block[start:stop] = len(blocks) - 1
        top += int(h[start])
        blocks[-1] = top
        start = stop
    out_corner, out_block = np.empty_like(corner), np.empty_like(block)
    out_corner[order], out_block[order] = corner, block
    return out_block, out_corner, np.asarray(blocks)


def place(tri_lo, tri_hi, face_chart, ext, scale: float, size: int, cell: int, gap: int):
    """Every chart's corner (C, 2) in texels at `scale`, and the height used. Small charts
    (boxes under SMALL_BOX of the side) go on shelves in blocks first, and the blocks join the
    skyline as rectangles: a few hundred fragments then cost a few skyline steps."""
    cols, top, bottom = outlines(tri_lo, tri_hi, face_chart, ext, scale, cell, gap)
    starts = np.cumsum(cols) - cols
    width = np.ceil(ext[:, 0] * scale).astype(np.int64) + gap
    height = np.ceil(np.maximum.reduceat(bottom, starts)).astype(np.int64)
    small = (width <= SMALL_BOX * size) & (height <= SMALL_BOX * size)
    if small.sum() < 16:
        return skyline_pack(cols, top, bottom, size, cell)
    side = int(4 * SMALL_BOX * size) // cell * cell
    block, in_block, block_h = shelves(width[small], height[small], side)
    big = np.flatnonzero(~small)
    keep = np.repeat(~small, cols)
    nb = len(block_h)
    all_cols = np.concatenate([cols[big], np.full(nb, side // cell)])
    all_top = np.concatenate([top[keep], np.zeros(nb * (side // cell))])
    all_bottom = np.concatenate([bottom[keep], np.repeat(block_h, side // cell).astype(float)])
    corner_all, used = skyline_pack(all_cols, all_top, all_bottom, size, cell)
    corner = np.zeros((len(cols), 2))
    corner[big] = corner_all[: len(big)]
    corner[np.flatnonzero(small)] = corner_all[len(big) + block] + in_block
    return corner, used


def pack(tri_lo, tri_hi, face_chart, ext, size: int, padding: int):
    """The largest texel density (texels per unit, to about 2%) at which the charts, `padding`
    texels apart, fit the square, and each chart's corner (x, y down) in texels."""
    gap = max(padding, 1)
    cell = max(1, size // 256)
    area = max(float(np.sum(ext[:, 0] * ext[:, 1])), 1e-30)
    upper = min((size - gap) / max(float(ext.max()), 1e-30), size / np.sqrt(area))
    low, high, best = 0.0, upper * 1.001, None
    scale = 0.85 * upper
    for _ in range(10):
        corner, used = place(tri_lo, tri_hi, face_chart, ext, scale, size, cell, gap)
        if used <= size:
            low, best = scale, (scale, corner)
            if used > 0.98 * size:
                break
        else:
            high = scale
        if best is not None and high < 1.02 * low:
            break
        # the height used grows about like the scale squared: aim at the square's side,
        # inside the bracket
        guess = scale * np.sqrt(size / used) * 0.995 if np.isfinite(used) else 0.7 * scale
        scale = guess if low < guess < high else 0.5 * (low + high)
    if best is None:
        raise ValueError(f"{len(ext)} charts do not fit a {size}-texel square with padding {gap}")
    return best


def sparse_cut(chart, local, atlas_faces, ext, area):
    """(F,) bool side of the cut for the faces of the charts (ids 0..C-1, chart-local
    coordinates `local` of their atlas vertices, box extents `ext`, projected face areas
    `area`) that fill less than FILL_MIN of their box; None when no chart does. The cut runs
    across the local x or y axis where the filled share of adjacent slices jumps most."""
    c = len(ext)
    centre = local[atlas_faces].mean(1)
    box = np.maximum(ext[:, 0] * ext[:, 1], 1e-30)
    sparse = (np.bincount(chart, area, c) < FILL_MIN * box) & (box > SPARSE_BOX * box.sum())
    if not sparse.any():
        return None
    best, where = np.full(c, -1.0), np.zeros((c, 2))
    for axis in (0, 1):
        t = centre[:, axis] / np.maximum(ext[chart, axis], 1e-30) * SLICES
        b = np.clip(t.astype(np.int64), 0, SLICES - 1)
        hist = np.bincount(chart * SLICES + b, area, c * SLICES).reshape(c, SLICES)
        jump = np.abs(np.diff(hist, axis=1)) / (box / SLICES)[:, None]
        at = np.argmax(jump, axis=1)
        better = jump[np.arange(c), at] > best
        best = np.where(better, jump[np.arange(c), at], best)
        where[better] = np.stack([np.full(c, axis), (at + 1) / SLICES], 1)[better]
    axis = where[chart, 0].astype(np.int64)
    side = centre[np.arange(len(chart)), axis] > where[chart, 1] * ext[chart, axis]
    return side & sparse[chart]


def folded_faces(uvs: np.ndarray, faces: np.ndarray, face_chart: np.ndarray, size: int):
    """The faces covering a texel centre (at texture size `size`) that another face of their
    chart covers too (charts may lie anywhere, over each other): texel spans grouped by chart
    and row, sorted by first column, overlap where one starts before an earlier one ends."""
    row, j0, j1, face = texel_spans(uvs, faces, size)
    big = size + 1
    group = face_chart[face] * big + row
    order = np.argsort(group * big + j0)
    group, j0, j1, face = group[order], j0[order], j1[order], face[order]
    # running maximum of (group, end), carrying the index of the span that reached it
    reach = np.maximum.accumulate((group * big + j1) * len(face) + np.arange(len(face)))
    later = np.flatnonzero(group[1:] * big + j0[1:] < reach[:-1] // len(face)) + 1
    return np.unique(np.concatenate([face[later], face[reach[later - 1] % len(face)]]))


def merge_pieces(chart, movable, pairs, unit, direction):
    """Every chart flagged `movable` (C,) joined to the neighbouring chart it shares most
    edges with, among those whose projection direction all its faces face by more than
    MIN_COS (it stays where there is none); charts renumbered 0..C'-1."""
    a, b = chart[pairs[:, 0]], chart[pairs[:, 1]]
    both = np.concatenate([np.stack([a, b], 1), np.stack([b, a], 1)])
    both = both[(both[:, 0] != both[:, 1]) & movable[both[:, 0]] & ~movable[both[:, 1]]]
    if len(both) == 0:
        return chart
    cand, count = np.unique(both, axis=0, return_counts=True)  # (piece, neighbour) pairs
    order = np.argsort(chart, kind="stable")
    sizes = np.bincount(chart, minlength=len(movable))
    starts = np.cumsum(sizes) - sizes
    n = sizes[cand[:, 0]]
    faces = order[np.repeat(starts[cand[:, 0]] - np.cumsum(n) + n, n) + np.arange(n.sum())]
    dots = np.sum(unit[faces] * direction[np.repeat(cand[:, 1], n)], axis=1)
    dots[~np.any(unit[faces] != 0, axis=1)] = 1.0  # degenerate faces go anywhere
    ok = np.minimum.reduceat(dots, np.cumsum(n) - n) > MIN_COS
    cand, count = cand[ok], count[ok]
    if len(cand) == 0:
        return chart
    best = np.lexsort((-count, cand[:, 0]))  # per piece, the most shared edges first
    first = best[np.r_[True, cand[best[1:], 0] != cand[best[:-1], 0]]]
    target = np.arange(len(movable))
    target[cand[first, 0]] = cand[first, 1]
    return np.unique(target[chart], return_inverse=True)[1]


def fold_key(chart, folded, carved, depth, pairs, last: bool):
    """(F,) key splitting the folded charts, and the faces carved: a chart folding for the
    first time loses its `folded` faces (the overlapping sheets) to pieces of their own; a
    carved chart folding again is cut at its median depth along its projection direction; in
    the `last` round the folded faces become one chart each (coincident sheets)."""
    n = len(chart)
    hit = np.zeros(n, bool)
    hit[folded] = True
    bad = np.unique(chart[folded])
    if not last:  # the overlapping faces and their neighbours in the chart: whole strips
        for _ in range(CARVE_RINGS):
            same = chart[pairs[:, 0]] == chart[pairs[:, 1]]
            grow = same & (hit[pairs[:, 0]] | hit[pairs[:, 1]])
            hit[pairs[grow].reshape(-1)] = True
    again = bad[np.bincount(chart, carved, int(chart.max()) + 1)[bad] > 0]
    cut = np.isin(chart, again)
    median = np.zeros(int(chart.max()) + 1)
    for c in again:
        median[c] = np.median(depth[chart == c])
    carve = hit & np.isin(chart, bad) & ~cut
    key = chart * 3 + carve + 2 * (cut & (depth > median[chart]))
    if last:
        key = np.where(hit, -1 - np.arange(n), key)
    return key, carve


@dataclasses.dataclass
class Surface:
    """The mesh as the unwrapper sees it, and what the refinement remembers per face."""

    vertices: np.ndarray  # (V, 3) float64
    faces: np.ndarray  # (F, 3) int64
    normals: np.ndarray  # (F, 3) area-weighted
    unit: np.ndarray  # (F, 3) unit normals, 0 for degenerate faces
    pairs: np.ndarray  # (P, 2) faces sharing an edge
    label: np.ndarray  # (F,) axis
    carved: np.ndarray  # (F,) bool, carved out of a folded chart once
    cuts: np.ndarray  # (F,) int, sparse cuts its charts went through

    @classmethod
    def of(cls, vertices, faces):
        v, f = np.asarray(vertices, np.float64), np.asarray(faces, np.int64)
        normals = 0.5 * np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
        length = np.linalg.norm(normals, axis=1, keepdims=True)
        unit = np.where(length > 1e-30, normals / np.maximum(length, 1e-30), 0.0)
        pairs = face_adjacency(f, len(v))
        label = face_labels(normals, unit, pairs)
        n = len(f)
        return cls(v, f, normals, unit, pairs, label, np.zeros(n, bool), np.zeros(n, np.int64))

    def directions(self, chart):
        return chart_directions(chart, int(chart.max()) + 1, self.normals, self.unit, self.label)

    def depth(self, chart, direction):
        return np.sum(self.vertices[self.faces].mean(1) * direction[chart], axis=1)

    def connect(self, key):
        return components(len(key), self.pairs, key[self.pairs[:, 0]] == key[self.pairs[:, 1]])


def initial_charts(s: Surface) -> np.ndarray:
    """Components of equally labelled faces, not across creases (normals more than CREASE
    apart; degenerate faces join), the SMALL ones joined to a neighbour where they can."""
    a, b = s.unit[s.pairs[:, 0]], s.unit[s.pairs[:, 1]]
    flat = (np.sum(a * b, axis=1) > np.cos(CREASE)) | ~np.any(a != 0, 1) | ~np.any(b != 0, 1)
    same = s.label[s.pairs[:, 0]] == s.label[s.pairs[:, 1]]
    chart = components(len(s.faces), s.pairs, same & flat)
    area = np.linalg.norm(s.normals, axis=1)
    small = np.bincount(chart, area) < SMALL * area.sum()
    return merge_pieces(chart, small, s.pairs, s.unit, s.directions(chart))


def refine(s: Surface, chart, direction, sub, scale, size: int, last: bool):
    """Step 3 on the charts of the faces `sub` at texel density `scale` (None: about what the
    packing will find): (the new charts and the faces of those that changed, the density), or
    (None, the projection of every chart, the density) when no chart changed."""
    ids, sub_chart = np.unique(chart[sub], return_inverse=True)
    projected = project(s.vertices, s.faces[sub], sub_chart, direction[ids])
    _, _, local, sub_faces, ext = projected
    if scale is None:
        scale = 0.8 * size / np.sqrt(np.sum(ext[:, 0] * ext[:, 1]))
    n = len(chart)
    touched = np.zeros(n, bool)
    key = chart * 2
    area = np.abs(np.sum(s.normals[sub] * direction[chart[sub]], axis=1))
    side = sparse_cut(sub_chart, local, sub_faces, ext, area)
    if side is not None:
        side &= s.cuts[sub] < MAX_CUTS
        key[sub] += side
        s.cuts[sub] += side
        touched[sub[side]] = True
    grid = int(np.ceil(scale * ext.max())) + 2  # the charts at the density, each on its own
    folded = sub[folded_faces(local * (scale / grid), sub_faces, sub_chart, grid)]
    if len(folded):
        fkey, carve = fold_key(chart, folded, s.carved, s.depth(chart, direction), s.pairs, last)
        s.carved |= carve
        key = key * (4 * n + 8) + fkey + n  # both cuts at once
        touched[folded] = True
    if not touched.any():
        return None, projected if len(sub) == n else None, scale
    changed = np.isin(chart, chart[touched])
    chart = s.connect(key)
    return (chart, np.flatnonzero(np.isin(chart, chart[changed]))), None, scale


def unwrap_charts(vertices: np.ndarray, faces: np.ndarray, size: int, padding: int):
    """(source vertex (V,), atlas faces (F, 3), uvs (V, 2) in [0, 1], v down) of the mesh.

    After ROUNDS rounds of refinement and packing the atlas is returned as it is (a mesh
    whose folds survive that many cuts is made of coincident sheets: none seen so far)."""
    s = Surface.of(vertices, faces)
    n = len(s.faces)
    chart = initial_charts(s)
    sub, scale = np.arange(n), None  # the faces of the charts to refine; the last density
    for step in range(ROUNDS):
        direction = s.directions(chart)
        projected = None
        if len(sub) and step < ROUNDS - 1:
            out, projected, scale = refine(s, chart, direction, sub, scale, size,
                                           last=step >= ROUNDS - 3)  # fmt: skip
            if out is not None:
                chart, sub = out
                continue
        if projected is None:
            projected = project(s.vertices, s.faces, chart, direction)
        src, vc, local, atlas_faces, ext = projected
        tri = local[atlas_faces]
        scale, corner = pack(tri.min(1), tri.max(1), chart, ext, size, padding)
        uvs = (local * scale + corner[vc] + 0.5 * max(padding, 1)) / size
        uvs = np.clip(uvs, 0.0, 1.0).astype(np.float32)  # as the atlas stores them
        folded = folded_faces(uvs, atlas_faces, chart, size)  # on the final texel grid
        if len(folded) == 0 or step == ROUNDS - 1:
            break
        key, carve = fold_key(chart, folded, s.carved, s.depth(chart, direction), s.pairs,
                              last=step >= ROUNDS - 3)  # fmt: skip
        s.carved |= carve
        changed = np.isin(chart, chart[folded])
        chart = s.connect(key)
        sub = np.flatnonzero(np.isin(chart, chart[changed]))
    return src, atlas_faces, uvs
