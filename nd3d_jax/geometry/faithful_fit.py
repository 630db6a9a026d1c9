"""The faithful refinement recipe (the default; docs/design.md "P2 must be faithful").

The paper fits the SDF MLP from scratch to the coarse field at 6,144 points and reads it at the
tet-grid vertices; measured, that loses thin parts (a table's legs detach or melt into a blob).
Here the tet grid's SDF starts as the coarse field at its vertices, and the SDF MLP learns a
correction bounded to a fraction of a cell, fitted with eq 6 so that the grid's piecewise-linear
field, the one marching tetrahedra extracts, matches the coarse field around its surface:

    s(v)       = SDF_coarse(v) + c(v),   c(v) = b tanh(MLP_sdf([v; f_tex(v)]) / b)
    SDF_hat(x) = sum_k bary_k(x) s(v_k(x))      v_k: the corners of x's Kuhn tet (tet_grid.locate)
    L_total    = mean_x (SDF(x) - SDF_hat(x))^2 + 0.3 mean_v |dx(v)|^2          (eq 5, 6)

with b = `max_correction` cells. The correction starts at zero (zero SDF head), so step 0 is the
coarse field's own surface on the grid, and being bounded it can move the surface by at most a
fraction of a cell: nothing the prior has can be lost, and nothing new can float free. The fit is
the least-squares (L2) projection of the coarse field onto the grid's piecewise-linear fields:
where nodal sampling loses thickness (a two-cell leg, whose SDF is a V between its sides) the
correction puts it back. x is drawn afresh each step from narrow bands around the coarse surface at
several scales. The displacement head is the paper's, also zero at the start; eq 6 only penalises
it, so it stays zero and the grid vertices do not move.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import trimesh

from nd3d_jax.config_check import Choice, Float, Int, Seq, check_fields
from nd3d_jax.errors import UserError
from nd3d_jax.geometry.tet_grid import TetGrid, locate
from nd3d_jax.models.sdf_mlp import FEATURE_DIM, SDFMLP, geometric_init

# vertices farther than this (cells) from the surface cannot flip sign: no MLP call needed
BAND_CELLS = 3.0
BASES = ("coarse", "none")
QUERY_CHUNK = 1 << 16  # grid vertices per MLP call when applying the fit


@dataclasses.dataclass(frozen=True)
class FaithfulSettings:
    """The faithful recipe's own numbers (the grid, loss and AdamW weight decay are shared)."""

    base: str = "coarse"  # "coarse": correct the coarse field; "none": the MLP is the SDF
    hidden_dim: int = 64  # SDF MLP widths (the paper's 4 layers and residuals, narrower)
    out_hidden_dim: int = 32
    num_frequencies: int = 6  # Fourier octaves of x; the finest has a 2-cell wavelength at R=64
    steps: int = 200  # 0: the coarse field on the grid, no fit
    learning_rate: float = 1e-3  # peak of a linear warm-up + cosine decay
    warmup_steps: int = 10
    batch_points: int = 1024  # band points per step, drawn afresh from the pool
    pool_points: int = 16384  # coarse-surface samples; one offset copy per band scale
    band_scales: tuple[float, ...] = (0.25, 0.5, 1.0)  # offset std of each band, in cells
    max_correction: float = 0.25  # bound of the SDF correction, in cells
    # drop the surface's pieces enclosed by its largest one (voids: slivers of sub-cell gaps
    # between a coarse mesh's touching parts), which no view sees (mesh_ops.drop_enclosed)
    drop_enclosed: bool = True

    # each field's range or choices (types from the annotations; nd3d_jax.config_check)
    LIMITS = dict(
        base=Choice(*BASES), hidden_dim=Int(1), out_hidden_dim=Int(1), num_frequencies=Int(0),
        steps=Int(0, note="0: no fit"), learning_rate=Float(0, low_open=True),
        warmup_steps=Int(0), batch_points=Int(1), pool_points=Int(1),
        band_scales=Seq(Float(0, low_open=True), min_length=1),
        max_correction=Float(0, 1, low_open=True, note="cells"),
    )  # fmt: skip

    def __post_init__(self):
        check_fields(self, "refine settings: faithful")
        if self.steps == 0 and self.base == "none":
            raise UserError("refine settings: faithful: steps=0 needs base=coarse (nothing to fit)")


class FaithfulPrograms(NamedTuple):
    module: SDFMLP
    init: Callable  # (key, centre, radius) -> params (zero heads; base=none: a sphere)
    fit: Callable  # (params, key, base, feats, ids, bary, target) -> (params, losses)
    correct: Callable  # (params, vertices, feats) -> bounded SDF correction (N,)


def band_points(coarse: trimesh.Trimesh, settings: FaithfulSettings, cell: float, seed: int):
    """The training pool: area-weighted samples of the coarse surface, one Gaussian-offset copy
    per band scale (std = scale cells). Returns (surface samples (S, 3), pool (S * n, 3))."""
    rng = np.random.default_rng(seed)
    surface, _ = trimesh.sample.sample_surface(coarse, settings.pool_points, seed=seed)
    surface = np.asarray(surface, np.float32)
    pool = [surface + rng.normal(0.0, s * cell, surface.shape) for s in settings.band_scales]
    return surface, np.concatenate(pool).astype(np.float32)


def _bound(raw: jax.Array, b: float | None) -> jax.Array:
    return raw if b is None else b * jnp.tanh(raw / b)


def faithful_loss(module, params, base, feats, vertices, ids, bary, target, b, loss, lam):
    """Eq 5 + 6 (or 7) on the grid's piecewise-linear field at the points of `ids` / `bary`."""
    v_in = jnp.concatenate([vertices[ids], feats[ids]], axis=-1)  # (B, 4, 67)
    raw, disp = module.apply({"params": params}, v_in)
    pred = jnp.sum(bary * (base[ids] + _bound(raw[..., 0], b)), axis=-1)
    l_sdf = jnp.mean(jnp.square(pred - target))  # eq 5
    sq = jnp.sum(jnp.square(disp), axis=-1)
    if loss == "eq6":
        return l_sdf + lam * jnp.mean(sq)
    return l_sdf + lam * jnp.mean(jnp.sqrt(sq + 1e-12))  # eq 7's |x - x_hat|


@functools.lru_cache(maxsize=8)
def faithful_programs(
    settings: FaithfulSettings, grid: TetGrid, weight_decay: float, loss: str, lam: float,
    batch_sharding=None,
) -> FaithfulPrograms:  # fmt: skip
    """Module and jitted init / fit / correct, built once per settings (objects reuse them)."""
    module = SDFMLP(
        hidden_dim=settings.hidden_dim,
        out_hidden_dim=settings.out_hidden_dim,
        num_frequencies=settings.num_frequencies,
        frequency_scale=float(np.pi / grid.bound),
    )
    b = settings.max_correction * grid.cell_size if settings.base == "coarse" else None
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, settings.learning_rate, min(settings.warmup_steps, settings.steps - 1), settings.steps
    )
    tx = optax.adamw(schedule, weight_decay=weight_decay)

    def init(key, center, radius):
        init_key, geo_key = jax.random.split(key)
        params = nn.unbox(module.init(init_key, jnp.zeros((1, 3 + FEATURE_DIM)))["params"])
        if settings.base == "none":  # the MLP alone: start as a sphere (SAL, as the paper recipe)
            return geometric_init(module, params, geo_key, center, radius)
        for head in ("sdf_head", "displacement_head"):  # step 0: the coarse field itself
            params[head] = jax.tree.map(jnp.zeros_like, params[head])
        return params

    def fit(params, key, base, feats, pool, target):
        vertices = grid_vertices(grid, jnp.arange(base.shape[0]))
        ids, bary = locate(grid, pool)

        def loss_fn(p, i, w, t):
            return faithful_loss(module, p, base, feats, vertices, i, w, t, b, loss, lam)

        grad_fn = jax.value_and_grad(loss_fn)

        def step(carry, k):
            p, opt_state = carry
            pick = jax.random.randint(k, (settings.batch_points,), 0, target.shape[0])
            i, w, t = ids[pick], bary[pick], target[pick]
            if batch_sharding is not None:
                i, w, t = jax.lax.with_sharding_constraint((i, w, t), batch_sharding)
            value, grads = grad_fn(p, i, w, t)
            updates, opt_state = tx.update(grads, opt_state, p)
            return (optax.apply_updates(p, updates), opt_state), value

        keys = jax.random.split(key, settings.steps)
        (params, _), losses = jax.lax.scan(step, (params, tx.init(params)), keys)
        return params, losses

    def correct(params, index, feats):  # at the grid vertices `index`
        x = jnp.concatenate([grid_vertices(grid, index), feats[index]], axis=-1)
        raw, _ = module.apply({"params": params}, x)
        return _bound(raw[:, 0], b)

    return FaithfulPrograms(module, jax.jit(init), jax.jit(fit), jax.jit(correct))


def grid_vertices(grid: TetGrid, index: jax.Array) -> jax.Array:
    """World positions of grid vertices by index (x-major), without the (V, 3) table."""
    n = grid.resolution + 1
    ijk = jnp.stack([index // (n * n), (index // n) % n, index % n], axis=-1)
    return ijk.astype(jnp.float32) * grid.cell_size - grid.bound


def _padded(n: int) -> int:
    """Static sizes 2^k or 1.5 * 2^k (>= 1024), so objects share the compiled program."""
    b = 1 << max(10, int(np.ceil(np.log2(max(n, 1)))))
    return b * 3 // 4 if b * 3 // 4 >= n else b


def fit_and_correct(
    programs: FaithfulPrograms,
    settings: FaithfulSettings,
    grid: TetGrid,
    key: jax.Array,
    base: np.ndarray,
    feats: np.ndarray,
    surface: np.ndarray,
    pool: np.ndarray,
    target: np.ndarray,
    timings: dict,
    clock: Callable[[], float],
):
    """Fits the correction and applies it to the band vertices: (grid SDF (V,), losses, params)."""
    t = clock()
    from_coarse = settings.base == "coarse"
    base = base if from_coarse else np.zeros_like(base)
    base_d, feats_d = jax.device_put(base), jax.device_put(feats)
    init_key, fit_key = jax.random.split(key)
    center = surface.mean(0)
    params = programs.init(init_key, center, np.linalg.norm(surface - center, axis=1).mean())
    losses = np.zeros(0, np.float32)
    if settings.steps:
        params, losses = programs.fit(
            params, fit_key, base_d, feats_d, pool, target
        )  # fmt: skip
        losses = np.asarray(losses)
    timings["fit_s"] = clock() - t

    t = clock()
    sdf = base.copy()
    if settings.steps:  # the correction moves only vertices near the surface; base=none: all
        near = (
            np.abs(base) < BAND_CELLS * grid.cell_size if from_coarse else np.ones(len(base), bool)
        )
        band = np.flatnonzero(near)
        for start in range(0, len(band), QUERY_CHUNK):
            part = band[start : start + QUERY_CHUNK]
            index = np.zeros(_padded(len(part)), np.int32)
            index[: len(part)] = part
            out = programs.correct(params, index, feats_d)
            sdf[part] += np.asarray(out)[: len(part)]
    timings["query_s"] = clock() - t
    return sdf, losses, params
