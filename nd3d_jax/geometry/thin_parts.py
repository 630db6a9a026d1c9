"""Shapes with thin parts, the refinement's fidelity test set (tests, `benchmark refine`).

Exact SDFs (unions of primitives, negative inside) in the pipeline's unit frame (+Y up, longest
side about 1), each with a part `thickness` thick: two cells of the default tet grid (64 cells
over [-0.7, 0.7]) unless told otherwise.

    table   a top on four square legs           lamp    a disc, a round stem, a shade
    mug     a body and a ring handle            ring    a thin torus on its own
    fin     a box with a thin sharp-edged fin on top (sharp edges and a thin wall)

`scene(thickness)` puts all five, shrunk to 0.3 but with the same thin parts, side by side in
one field, so one refinement tests them all; `SLOTS` are their centres there.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp

from nd3d_jax.geometry.analytic import SDFFn, _norm, box, torus

DEFAULT_CELL = 1.4 / 64  # configs/generate.py: 64 cells over [-0.7, 0.7]
THICKNESS = 2 * DEFAULT_CELL


def translated(sdf: SDFFn, center) -> SDFFn:
    c = jnp.asarray(center, jnp.float32)
    return lambda p: sdf(p - c)


def cylinder_y(radius: float, half_height: float) -> SDFFn:
    """Exact SDF of a capped cylinder along +Y, centred at the origin."""

    def sdf(p):
        d = jnp.stack(
            [_norm(p[..., jnp.array([0, 2])]) - radius, jnp.abs(p[..., 1]) - half_height], -1
        )
        return _norm(jnp.maximum(d, 0.0)) + jnp.minimum(jnp.max(d, axis=-1), 0.0)

    return sdf


def torus_xy(major: float, minor: float) -> SDFFn:
    """A torus standing in the XY plane (its axis along Z)."""
    return torus(major, minor)


def torus_yz(major: float, minor: float) -> SDFFn:
    """A torus standing in the YZ plane (its axis along X)."""
    t = torus(major, minor)
    return lambda p: t(p[..., jnp.array([1, 2, 0])])


def union(*sdfs: SDFFn) -> SDFFn:
    def sdf(p):
        out = sdfs[0](p)
        for other in sdfs[1:]:
            out = jnp.minimum(out, other(p))
        return out

    return sdf


def table(t: float = THICKNESS, s: float = 1.0) -> SDFFn:
    legs = [
        translated(box((t / 2, 0.35 * s, t / 2)), (x * 0.42 * s, -0.15 * s, z * 0.24 * s))
        for x in (-1, 1)
        for z in (-1, 1)
    ]
    return union(translated(box((0.45 * s, 0.02 * s, 0.28 * s)), (0, 0.2 * s, 0)), *legs)


def lamp(t: float = THICKNESS, s: float = 1.0) -> SDFFn:
    return union(
        translated(cylinder_y(0.15 * s, 0.02 * s), (0, -0.48 * s, 0)),
        translated(cylinder_y(t / 2, 0.4 * s), (0, -0.08 * s, 0)),
        translated(cylinder_y(0.18 * s, 0.1 * s), (0, 0.38 * s, 0)),
    )


def mug(t: float = THICKNESS, s: float = 1.0) -> SDFFn:
    major = 0.15 * s + t / 2  # the hole stays two cells wide in the small scene copy
    handle = translated(torus_xy(major, t / 2), (0.22 * s + major - t, 0, 0))
    return union(cylinder_y(0.22 * s, 0.35 * s), handle)


def ring(t: float = THICKNESS, s: float = 1.0) -> SDFFn:
    return torus_yz(0.4 * s, t / 2)


def fin(t: float = THICKNESS, s: float = 1.0) -> SDFFn:
    body = translated(box((0.4 * s, 0.15 * s, 0.25 * s)), (0, -0.15 * s, 0))
    return union(body, translated(box((0.35 * s, 0.2 * s, t / 2)), (0, 0.18 * s, 0)))


SHAPES: dict[str, Callable[..., SDFFn]] = dict(table=table, lamp=lamp, mug=mug, ring=ring, fin=fin)
SCENE_SIZE = 0.3  # each shape's scale in the scene
SLOTS = {
    "table": (-0.33, 0.0, -0.22),
    "lamp": (0.0, 0.0, -0.22),
    "mug": (0.33, 0.0, -0.22),
    "ring": (-0.17, 0.0, 0.22),
    "fin": (0.2, 0.0, 0.22),
}


def scene(t: float = THICKNESS) -> SDFFn:
    """All five shapes at SCENE_SIZE, each at its slot, with parts `t` thick."""
    return union(*(translated(SHAPES[n](t, SCENE_SIZE), c) for n, c in SLOTS.items()))
