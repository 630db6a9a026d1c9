"""Analytic signed distance fields with known area and volume (tests, demo, benchmarks).

Every SDF maps `(N, 3)` points to `(N,)` signed distances, negative inside, and works on numpy
and jax arrays alike. `analytic_field` turns one into a coarse prior field `points -> (sdf,
f_tex)`, the interface the refinement stage expects from the 3D prior.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import trimesh

SDFFn = Callable[[jax.Array], jax.Array]
FieldFn = Callable[[jax.Array], tuple[jax.Array, jax.Array]]


def _norm(x, axis=-1):
    """Euclidean norm with a finite gradient at 0 (where the SDFs have kinks)."""
    return jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=axis), 1e-20))


def sphere(radius: float, center=(0.0, 0.0, 0.0)) -> SDFFn:
    c = jnp.asarray(center, jnp.float32)
    return lambda p: _norm(p - c) - radius


def sphere_mesh(radius: float, subdivisions: int = 4) -> trimesh.Trimesh:
    """An icosphere: a triangle mesh of the sphere `sphere(radius)`."""
    return trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)


def torus(major: float, minor: float) -> SDFFn:
    """Torus around the z axis."""

    def sdf(p):
        q = _norm(p[..., :2]) - major
        return _norm(jnp.stack([q, p[..., 2]], -1)) - minor

    return sdf


def box(half_extents) -> SDFFn:
    """Exact SDF of an axis-aligned box centred at the origin."""
    b = jnp.asarray(half_extents, jnp.float32)

    def sdf(p):
        q = jnp.abs(p) - b
        outside = _norm(jnp.maximum(q, 0.0))
        return outside + jnp.minimum(jnp.max(q, axis=-1), 0.0)

    return sdf


def sphere_area_volume(radius: float) -> tuple[float, float]:
    return 4 * math.pi * radius**2, 4 / 3 * math.pi * radius**3


def torus_area_volume(major: float, minor: float) -> tuple[float, float]:
    return 4 * math.pi**2 * major * minor, 2 * math.pi**2 * major * minor**2


def box_area_volume(half_extents) -> tuple[float, float]:
    x, y, z = (2 * float(h) for h in half_extents)
    return 2 * (x * y + y * z + x * z), x * y * z


def bumpy(sdf_fn: SDFFn, amplitude: float, frequency: float = 9.0, seed: int = 0) -> SDFFn:
    """Adds smooth pseudo-random bumps (a sum of 8 random plane waves) to an SDF.

    Stands in for a coarse prior with high-frequency errors; `amplitude` is in SDF units.
    """
    rng = np.random.default_rng(seed)
    dirs = rng.normal(size=(8, 3))
    dirs = jnp.asarray(dirs / np.linalg.norm(dirs, axis=-1, keepdims=True), jnp.float32)
    phases = jnp.asarray(rng.uniform(0, 2 * np.pi, 8), jnp.float32)
    scale = amplitude / math.sqrt(8.0)
    return lambda p: sdf_fn(p) + scale * jnp.sum(jnp.sin(frequency * p @ dirs.T + phases), -1)


def analytic_field(sdf_fn: SDFFn, feature_dim: int = 64, seed: int = 0) -> FieldFn:
    """A coarse field `points -> (sdf (N,), f_tex (N, feature_dim))`.

    f_tex is a smooth colour-like feature of position (random Fourier features), standing in for
    the texture decoder of the coarse prior.
    """
    rng = np.random.default_rng(seed)
    freqs = jnp.asarray(rng.normal(scale=2.0, size=(3, feature_dim)), jnp.float32)
    phases = jnp.asarray(rng.uniform(0, 2 * np.pi, feature_dim), jnp.float32)

    def field(points):
        points = jnp.asarray(points, jnp.float32)
        return sdf_fn(points), jnp.sin(points @ freqs + phases)

    return field
