"""Procedural furniture-like meshes per category, built from trimesh primitives.

Every mesh is deterministic from its seed, has per-part vertex colours, stands on the z = 0
floor (+z up, as Pix3D and OmniObject3D models do after their own normalisation) and is a few
primitives with random proportions: enough variety for pipelines and tests, no download.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import trimesh

CATEGORIES = (
    "bed",
    "bookcase",
    "chair",
    "desk",
    "misc",
    "sofa",
    "table",
    "tool",
    "wardrobe",
    "lamp",
    "vase",
    "mug",
)


class _Parts:
    """Collects coloured primitives; `mesh()` concatenates them."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.parts: list[trimesh.Trimesh] = []
        self.base = rng.uniform(0.15, 0.9, 3)

    def color(self, jitter: float = 0.12) -> np.ndarray:
        c = np.clip(self.base + self.rng.normal(0, jitter, 3), 0, 1)
        return np.append((c * 255).astype(np.uint8), 255)

    def box(self, extents, center, color=None):
        m = trimesh.creation.box(extents=extents)
        m.apply_translation(center)
        self._add(m, color)

    def cylinder(self, radius, height, center, sections=24, color=None):
        m = trimesh.creation.cylinder(radius=radius, height=height, sections=sections)
        m.apply_translation(center)
        self._add(m, color)

    def sphere(self, radius, center, color=None):
        m = trimesh.creation.icosphere(subdivisions=2, radius=radius)
        m.apply_translation(center)
        self._add(m, color)

    def _add(self, m, color):
        m.visual.vertex_colors = np.tile(
            self.color() if color is None else color, (len(m.vertices), 1)
        )
        self.parts.append(m)

    def legs(self, width, depth, height, thickness):
        for sx in (-1, 1):
            for sy in (-1, 1):
                c = (sx * (width - thickness) / 2, sy * (depth - thickness) / 2, height / 2)
                self.box((thickness, thickness, height), c)

    def mesh(self) -> trimesh.Trimesh:
        return trimesh.util.concatenate(self.parts)


def _table(p: _Parts, desk: bool = False):
    w, d, h = p.rng.uniform(0.8, 1.6), p.rng.uniform(0.5, 0.9), p.rng.uniform(0.6, 0.8)
    top = p.rng.uniform(0.03, 0.06)
    p.legs(w, d, h - top, p.rng.uniform(0.04, 0.08))
    p.box((w, d, top), (0, 0, h - top / 2))
    if desk:  # a drawer block under one side
        bw = w * p.rng.uniform(0.25, 0.4)
        p.box((bw, d * 0.9, (h - top) * 0.6), ((w - bw) / 2, 0, (h - top) * 0.7))


def _chair(p: _Parts):
    w, d = p.rng.uniform(0.4, 0.55), p.rng.uniform(0.4, 0.55)
    seat_h, back_h = p.rng.uniform(0.4, 0.5), p.rng.uniform(0.35, 0.6)
    t = p.rng.uniform(0.03, 0.05)
    p.legs(w, d, seat_h, t)
    p.box((w, d, 0.05), (0, 0, seat_h + 0.025))
    p.box((w, t, back_h), (0, (d - t) / 2, seat_h + 0.05 + back_h / 2))


def _sofa(p: _Parts):
    w, d, h = p.rng.uniform(1.4, 2.2), p.rng.uniform(0.7, 0.95), p.rng.uniform(0.35, 0.45)
    p.box((w, d, h), (0, 0, h / 2))
    back = p.rng.uniform(0.35, 0.5)
    p.box((w, 0.2, back), (0, (d - 0.2) / 2, h + back / 2))
    arm = p.rng.uniform(0.12, 0.2)
    for s in (-1, 1):
        p.box((arm, d, back * 0.6), (s * (w - arm) / 2, 0, h + back * 0.3))


def _bed(p: _Parts):
    w, length, h = p.rng.uniform(1.0, 1.8), p.rng.uniform(1.9, 2.2), p.rng.uniform(0.3, 0.45)
    p.box((w, length, h), (0, 0, h / 2))
    p.box((w * 0.95, length * 0.95, 0.15), (0, 0, h + 0.075), color=(235, 235, 230, 255))
    head = p.rng.uniform(0.5, 0.9)
    p.box((w, 0.06, head), (0, (length - 0.06) / 2, head / 2))


def _shelves(p: _Parts, doors: bool):
    w, d, h = p.rng.uniform(0.6, 1.2), p.rng.uniform(0.3, 0.6), p.rng.uniform(1.2, 2.0)
    t = 0.03
    for s in (-1, 1):
        p.box((t, d, h), (s * (w - t) / 2, 0, h / 2))
    p.box((w, t, h), (0, (d - t) / 2, h / 2))
    n = int(p.rng.integers(3, 6))
    for z in np.linspace(t / 2, h - t / 2, n):
        p.box((w, d, t), (0, 0, z))
    if doors:
        for s in (-1, 1):
            p.box((w / 2 - 0.01, t, h * 0.95), (s * w / 4, -(d - t) / 2, h / 2))


def _tool(p: _Parts):
    length = p.rng.uniform(0.2, 0.4)
    p.cylinder(0.015, length, (0, 0, length / 2))
    head = p.rng.uniform(0.06, 0.12)
    p.box((head, 0.03, 0.04), (0, 0, length + 0.02), color=(90, 90, 100, 255))


def _lamp(p: _Parts):
    h = p.rng.uniform(0.4, 1.6)
    p.cylinder(p.rng.uniform(0.08, 0.15), 0.03, (0, 0, 0.015))
    p.cylinder(0.015, h, (0, 0, h / 2))
    r = p.rng.uniform(0.1, 0.2)
    p.cylinder(r, r * 1.2, (0, 0, h + r * 0.4), color=(240, 225, 180, 255))


def _vase(p: _Parts):
    r, h = p.rng.uniform(0.06, 0.12), p.rng.uniform(0.2, 0.4)
    p.cylinder(r, h, (0, 0, h / 2), sections=32)
    p.sphere(r * 1.3, (0, 0, h * 0.4))


def _mug(p: _Parts):
    r, h = p.rng.uniform(0.04, 0.05), p.rng.uniform(0.08, 0.11)
    p.cylinder(r, h, (0, 0, h / 2), sections=32)
    p.box((0.015, 0.01, h * 0.6), (r + 0.012, 0, h / 2))


def _misc(p: _Parts):
    for _ in range(int(p.rng.integers(2, 5))):
        kind = p.rng.integers(3)
        c = p.rng.uniform(-0.2, 0.2, 3) + (0, 0, 0.3)
        if kind == 0:
            p.box(p.rng.uniform(0.05, 0.3, 3), c)
        elif kind == 1:
            p.sphere(p.rng.uniform(0.05, 0.15), c)
        else:
            p.cylinder(p.rng.uniform(0.03, 0.1), p.rng.uniform(0.1, 0.4), c)


_BUILDERS: dict[str, Callable[[_Parts], None]] = {
    "bed": _bed,
    "bookcase": lambda p: _shelves(p, doors=False),
    "chair": _chair,
    "desk": lambda p: _table(p, desk=True),
    "misc": _misc,
    "sofa": _sofa,
    "table": _table,
    "tool": _tool,
    "wardrobe": lambda p: _shelves(p, doors=True),
    "lamp": _lamp,
    "vase": _vase,
    "mug": _mug,
}


def make_object(category: str, seed: int) -> trimesh.Trimesh:
    """A vertex-coloured mesh of `category`, identical for the same (category, seed)."""
    if category not in _BUILDERS:
        raise ValueError(f"unknown category {category!r}; known: {', '.join(CATEGORIES)}")
    # The category joins the seed, so equal seeds of two categories differ too.
    rng = np.random.default_rng([seed, CATEGORIES.index(category)])
    parts = _Parts(rng)
    _BUILDERS[category](parts)
    mesh = parts.mesh()
    mesh.apply_translation([0, 0, -mesh.bounds[0, 2]])  # stand on the floor
    return mesh


# The faults of real meshes (Pix3D's IKEA models face inward; scans have holes, mixed
# orientation and repeated faces), applied to the faces only: vertices and colours are kept.
FAULTS = ("inverted", "mixed", "holes", "duplicates")


def with_faults(mesh: trimesh.Trimesh, faults, seed: int = 0) -> trimesh.Trimesh:
    """`mesh` with some of FAULTS, identical for the same seed.

    - inverted: every face's winding reversed (the volume becomes negative);
    - mixed: 40% of the faces reversed at random;
    - holes: 1% of the faces (at least one) removed, each a small hole: picked among the
      quarter of the faces with the smallest area;
    - duplicates: 5% of the faces (at least one) repeated, every other copy reversed.
    """
    unknown = set(faults) - set(FAULTS)
    if unknown:
        raise ValueError(f"unknown faults {sorted(unknown)}; known: {', '.join(FAULTS)}")
    rng = np.random.default_rng(seed)
    faces = np.asarray(mesh.faces).copy()
    if "inverted" in faults:
        faces = faces[:, ::-1]
    if "mixed" in faults:
        flip = rng.random(len(faces)) < 0.4
        faces = np.where(flip[:, None], faces[:, ::-1], faces)
    if "holes" in faults:
        area = trimesh.triangles.area(np.asarray(mesh.vertices)[faces])
        small = np.argsort(area, kind="stable")[: max(1, len(faces) // 4)]
        gone = rng.choice(small, max(1, len(faces) // 100), replace=False)
        faces = np.delete(faces, gone, axis=0)
    if "duplicates" in faults:
        copies = faces[rng.choice(len(faces), max(1, len(faces) // 20), replace=False)]
        copies[1::2] = copies[1::2, ::-1]
        faces = np.concatenate([faces, copies])
    out = trimesh.Trimesh(np.asarray(mesh.vertices), faces, process=False)
    out.visual.vertex_colors = np.asarray(mesh.visual.vertex_colors)
    return out
