"""Geometry refinement (paper section "Coarse 3D prior generation", eq 4-7).

Two recipes (`RefineSettings.recipe`): "faithful" (the default, `faithful_fit.py`: the coarse
field on the tet grid plus a bounded correction from the SDF MLP, fitted with eq 6 on narrow
bands) and "paper", the printed one below. docs/design.md gives the measurements behind the
default.

The paper recipe:
1. Feature extraction: 2048 key points on the coarse mesh, v_in = [x_coord; f_tex] (67-D).
2. Error calculation: fit the SDF MLP to the coarse field's SDF at the key points and at
   near-surface jittered copies, loss eq 6 (L_sdf + 0.3 L_disp) or eq 7 (lambda = 0.5), with
   AdamW (lr 1e-4, weight decay 1e-5) for 50 steps, all in one compiled `lax.scan`.
3. Extraction: query SDF and displacement on the deformable tet grid, move the vertices by the
   (bounded) displacement and run marching tetrahedra.

The coarse field is any callable `points (N, 3) -> (sdf (N,), f_tex (N, 64))`; the 3D prior
provides it, tests use analytic fields. Points are sharded over the mesh's batch axes when a
device mesh is given (data parallel; the MLP is replicated).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import trimesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from nd3d_jax.config_check import Choice, Float, Int, check_fields
from nd3d_jax.errors import UserError
from nd3d_jax.geometry import faithful_fit
from nd3d_jax.geometry.extract import extract_mesh
from nd3d_jax.geometry.faithful_fit import FaithfulSettings
from nd3d_jax.geometry.mesh_ops import drop_enclosed, sample_key_points, validate_mesh
from nd3d_jax.geometry.tet_grid import DEFAULT_MAX_DEFORM, build_tet_grid, deform_vertices
from nd3d_jax.models.sdf_mlp import FEATURE_DIM, SDFMLP, geometric_init

FieldFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
LOSSES = ("eq6", "eq7")
INITS = ("geometric", "lecun")
RECIPES = ("faithful", "paper")


@dataclasses.dataclass(frozen=True)
class RefineSettings:
    """Every knob of the refinement. The top-level numbers are the paper's printed recipe
    (`recipe="paper"`) where it gives one; `faithful` holds the default recipe's own numbers.
    The grid, the loss and the weight decay are shared."""

    recipe: str = "faithful"  # "faithful" (faithful_fit.py) or "paper" (the printed recipe)
    num_key_points: int = 2048  # "2048 sampled points"
    vertex_stride: int = 100  # "one key vertex per 100 vertices"
    num_jitter_copies: int = 1  # near-surface copies of each key point (docs/design.md)
    jitter_std: float = 0.05  # their offset, world units over [-bound, bound]^3
    num_uniform_points: int = 2048  # far-field points, keep signs right off the surface
    steps: int = 50  # "50 iterations"
    learning_rate: float = 1e-4  # AdamW lr
    weight_decay: float = 1e-5  # AdamW weight decay
    loss: str = "eq6"  # "eq6": L_sdf + disp_weight L_disp; "eq7": + lambda |x - x_hat|
    disp_weight: float = 0.3  # eq 6
    eq7_lambda: float = 0.5  # eq 7, "lambda = 0.5"
    init: str = "geometric"  # "geometric" (SAL sphere start) or "lecun" (Flax default)
    hidden_dim: int = 1024  # SDF MLP widths (paper section P2)
    out_hidden_dim: int = 256
    resolution: int = 64  # tet grid cubes per axis
    bound: float = 1.0  # grid over [-bound, bound]^3
    max_deform: float = DEFAULT_MAX_DEFORM  # vertex displacement bound, fraction of a cell
    query_chunk: int = 32768  # grid points per MLP call when querying the grid
    seed: int = 0
    faithful: FaithfulSettings = FaithfulSettings()

    # Each field's range or choices (types come from the annotations): checked here and, for
    # the `refine` section of a config, by nd3d_jax.config_check before any command runs.
    LIMITS = dict(
        num_key_points=Int(1), vertex_stride=Int(1), num_jitter_copies=Int(0),
        jitter_std=Float(0), num_uniform_points=Int(0), steps=Int(1),
        learning_rate=Float(0, low_open=True), weight_decay=Float(0), loss=Choice(*LOSSES),
        disp_weight=Float(0), eq7_lambda=Float(0), init=Choice(*INITS), hidden_dim=Int(1),
        out_hidden_dim=Int(1), resolution=Int(1), bound=Float(0, low_open=True),
        # below 1/6 of a cell no tet can invert (tet_grid.py); 0 would divide by zero
        max_deform=Float(0, 1 / 6, low_open=True, high_open=True),
        query_chunk=Int(1), seed=Int(0), recipe=Choice(*RECIPES),
    )  # fmt: skip

    def __post_init__(self):
        if not isinstance(self.faithful, FaithfulSettings):  # a config section (mapping)
            values = dict(self.faithful)
            if "band_scales" in values:
                values["band_scales"] = tuple(values["band_scales"])
            try:
                object.__setattr__(self, "faithful", FaithfulSettings(**values))
            except TypeError as e:
                raise UserError(f"refine settings: faithful: {e}") from None
        check_fields(self, "refine settings")


class RefinePrograms(NamedTuple):
    module: SDFMLP
    init: Callable  # (key, center (3,), radius) -> params
    fit: Callable  # (params, v_in, sdf_target, mask) -> (params, losses)
    query: Callable  # (params, grid vertices, f_tex) -> (sdf, deformed vertices)


@dataclasses.dataclass
class RefineResult:
    mesh: trimesh.Trimesh
    losses: np.ndarray  # (steps,) loss before each update
    params: dict
    key_points: np.ndarray  # (num_key_points, 3)
    timings: dict[str, float]


def query_field(field: FieldFn, points: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Calls the coarse field and checks it gave finite sdf (N,) and f_tex (N, 64)."""
    n = len(points)
    out = field(points)
    if not (isinstance(out, tuple | list) and len(out) == 2):
        raise ValueError(
            f"coarse field must return (sdf ({n},), f_tex ({n}, {FEATURE_DIM})) at {what}; "
            f"got {type(out).__name__}"
        )
    sdf, feats = np.asarray(out[0], np.float32).reshape(-1), np.asarray(out[1], np.float32)
    if sdf.shape != (n,) or feats.shape != (n, FEATURE_DIM):
        raise ValueError(
            f"coarse field must return sdf ({n},) and f_tex ({n}, {FEATURE_DIM}) at {what}; "
            f"got {sdf.shape} and {feats.shape}"
        )
    for name, arr in (("sdf", sdf), ("f_tex", feats)):
        if not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).sum())
            raise ValueError(f"coarse field returned {bad} NaN/inf {name} values at {what}")
    return sdf, feats


def refinement_points(
    coarse_mesh: trimesh.Trimesh, field: FieldFn, settings: RefineSettings
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Key points, then the training set: (key points, v_in (N, 67), sdf targets (N,), mask)."""
    rng = np.random.default_rng(settings.seed)
    key_points = sample_key_points(
        coarse_mesh, settings.num_key_points, settings.vertex_stride, settings.seed
    )
    jitter = [
        key_points + rng.normal(0.0, settings.jitter_std, key_points.shape)
        for _ in range(settings.num_jitter_copies)
    ]
    b = settings.bound
    uniform = rng.uniform(-b, b, (settings.num_uniform_points, 3))
    x = np.concatenate([key_points, *jitter, uniform]).astype(np.float32)
    sdf, feats = query_field(field, x, "the refinement points")
    # Pad to a multiple of the device count so the points shard evenly; padding is masked.
    pad = -len(x) % jax.device_count()
    mask = np.arange(len(x) + pad) < len(x)
    v_in = np.pad(np.concatenate([x, feats], axis=1), ((0, pad), (0, 0)))
    return key_points, v_in, np.pad(sdf, (0, pad)), mask


def refine_loss(module: nn.Module, params, v_in, sdf_target, mask, settings: RefineSettings):
    """Eq 5 + 6 (default) or eq 7, averaged over the unmasked points."""
    sdf, disp = module.apply({"params": params}, v_in)
    l_sdf = jnp.square(sdf[:, 0] - sdf_target)  # eq 5, ||SDF(x_i) - SDF_hat(x_i)||^2
    if settings.loss == "eq6":
        l_disp = jnp.sum(jnp.square(disp), axis=-1)  # eq 5, ||dx_i||^2
        per_point = l_sdf + settings.disp_weight * l_disp
    else:
        # eq 7: |x_i - x_hat_i|_2 with x_hat = x + dx; eps keeps the gradient finite at dx = 0.
        dist = jnp.sqrt(jnp.sum(jnp.square(disp), axis=-1) + 1e-12)
        per_point = l_sdf + settings.eq7_lambda * dist
    # Mean, not eq 7's sum: AdamW's step is invariant to the constant factor.
    return jnp.sum(jnp.where(mask, per_point, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def make_fit_fn(module: nn.Module, settings: RefineSettings):
    """`fit(params, v_in, sdf_target, mask) -> (params, losses)`: all AdamW steps, one program."""
    tx = optax.adamw(settings.learning_rate, weight_decay=settings.weight_decay)
    loss_and_grad = jax.value_and_grad(lambda p, v, s, m: refine_loss(module, p, v, s, m, settings))

    def fit(params, v_in, sdf_target, mask):
        def step(carry, _):
            p, opt_state = carry
            loss, grads = loss_and_grad(p, v_in, sdf_target, mask)
            updates, opt_state = tx.update(grads, opt_state, p)
            return (optax.apply_updates(p, updates), opt_state), loss

        (params, _), losses = jax.lax.scan(
            step, (params, tx.init(params)), None, length=settings.steps
        )
        return params, losses

    return fit


def make_query_fn(module: nn.Module, settings: RefineSettings, cell_size: float):
    """`query(params, grid_vertices, f_tex) -> (sdf, deformed vertices)` in bounded chunks."""

    def query(params, vertices, feats):
        v_in = jnp.concatenate([vertices, feats], axis=-1)
        sdf, disp = jax.lax.map(
            lambda v: module.apply({"params": params}, v), v_in, batch_size=settings.query_chunk
        )
        moved = deform_vertices(vertices, disp, cell_size, settings.max_deform)
        return sdf[:, 0], moved

    return query


@functools.lru_cache(maxsize=8)
def compiled_programs(settings: RefineSettings) -> RefinePrograms:
    """The module and its jitted init / fit / query, built once per settings (no recompiles
    when many objects are refined with the same settings)."""
    module = SDFMLP(hidden_dim=settings.hidden_dim, out_hidden_dim=settings.out_hidden_dim)
    cell_size = 2.0 * settings.bound / settings.resolution

    def init(key, center, radius):
        init_key, geo_key = jax.random.split(key)
        params = nn.unbox(module.init(init_key, jnp.zeros((1, 3 + FEATURE_DIM)))["params"])
        if settings.init == "geometric":
            params = geometric_init(module, params, geo_key, center, radius)
        return params

    return RefinePrograms(
        module,
        jax.jit(init),
        jax.jit(make_fit_fn(module, settings)),
        jax.jit(make_query_fn(module, settings, cell_size)),
    )


def init_sdf_mlp(
    settings: RefineSettings, key: jax.Array, key_points: np.ndarray
) -> tuple[SDFMLP, dict]:
    """The SDF MLP and its parameters, geometrically initialised to the key points' sphere."""
    programs = compiled_programs(settings)
    center = key_points.mean(axis=0)
    radius = np.linalg.norm(key_points - center, axis=1).mean()
    return programs.module, programs.init(key, center, radius)


def refine_mesh(
    coarse_mesh: trimesh.Trimesh,
    field: FieldFn,
    settings: RefineSettings | None = None,
    mesh: jax.sharding.Mesh | None = None,
    log: Callable[[str], None] | None = None,
) -> RefineResult:
    """Refines a coarse mesh with its coarse field; returns the refined mesh and the fit."""
    settings = settings or RefineSettings()
    log = log or (lambda _: None)
    validate_mesh(coarse_mesh, "coarse mesh")
    if settings.recipe == "faithful":
        return _refine_faithful(coarse_mesh, field, settings, mesh, log)
    timings = {}

    t = time.perf_counter()
    key_points, v_in, sdf_target, mask = refinement_points(coarse_mesh, field, settings)
    _, params = init_sdf_mlp(settings, jax.random.key(settings.seed), key_points)
    if mesh is not None:
        batch = NamedSharding(mesh, P(mesh.axis_names))
        v_in, sdf_target, mask = jax.device_put((v_in, sdf_target, mask), batch)
        params = jax.device_put(params, NamedSharding(mesh, P()))
    timings["prepare_s"] = time.perf_counter() - t
    log(f"fitting the SDF MLP: {int(mask.sum())} points, {settings.steps} AdamW steps")

    t = time.perf_counter()
    params, losses = jax.block_until_ready(
        compiled_programs(settings).fit(params, v_in, sdf_target, mask)
    )
    timings["fit_s"] = time.perf_counter() - t
    losses = np.asarray(losses)
    if not np.isfinite(losses).all():
        raise FloatingPointError(f"refinement loss became non-finite: {losses}")
    log(f"loss {losses[0]:.5f} -> {losses[-1]:.5f} ({timings['fit_s']:.1f}s)")

    t = time.perf_counter()
    grid = build_tet_grid(settings.resolution, settings.bound)
    _, grid_feats = query_field(field, grid.vertices, "the tet grid vertices")
    query = compiled_programs(settings).query
    sdf, vertices = jax.block_until_ready(query(params, grid.vertices, grid_feats))
    timings["query_s"] = time.perf_counter() - t
    log(f"queried {grid.num_vertices} grid vertices ({timings['query_s']:.1f}s)")

    t = time.perf_counter()
    refined = extract_mesh(grid, np.asarray(sdf), np.asarray(vertices))
    timings["extract_s"] = time.perf_counter() - t
    log(f"marching tetrahedra: {len(refined.faces)} faces ({timings['extract_s']:.1f}s)")
    return RefineResult(refined, losses, params, key_points, timings)


def _refine_faithful(coarse_mesh, field, settings: RefineSettings, mesh, log) -> RefineResult:
    f = settings.faithful
    timings = {}
    t = time.perf_counter()
    grid = build_tet_grid(settings.resolution, settings.bound)
    surface, pool = faithful_fit.band_points(coarse_mesh, f, grid.cell_size, settings.seed)
    # one field call for the grid vertices and the pool (a mesh field builds its trees once)
    sdf, feats = query_field(field, np.concatenate([grid.vertices, pool]), "the refinement points")
    nv = grid.num_vertices
    batch = None
    if mesh is not None and f.batch_points % mesh.size == 0:
        batch = NamedSharding(mesh, P(mesh.axis_names))
    programs = faithful_fit.faithful_programs(
        f, grid, settings.weight_decay, settings.loss,
        settings.disp_weight if settings.loss == "eq6" else settings.eq7_lambda, batch,
    )  # fmt: skip
    timings["prepare_s"] = time.perf_counter() - t
    log(f"fitting the SDF correction: {len(pool)} band points, {f.steps} AdamW steps")

    values, losses, params = faithful_fit.fit_and_correct(
        programs, f, grid, jax.random.key(settings.seed), sdf[:nv], feats[:nv], surface, pool,
        sdf[nv:], timings, time.perf_counter,
    )  # fmt: skip
    if not np.isfinite(losses).all():
        raise FloatingPointError(f"refinement loss became non-finite: {losses}")
    if len(losses):
        log(f"loss {losses[0]:.3g} -> {losses[-1]:.3g} ({timings['fit_s']:.1f}s)")

    t = time.perf_counter()
    refined = extract_mesh(grid, values)  # the displacement head stays 0 (eq 6 only penalises it)
    dropped = 0
    if f.drop_enclosed:
        refined, dropped = drop_enclosed(refined)
    timings["extract_s"] = time.perf_counter() - t
    log(f"marching tetrahedra: {len(refined.faces)} faces ({timings['extract_s']:.1f}s)"
        + (f", {dropped} enclosed pieces dropped" if dropped else ""))  # fmt: skip
    return RefineResult(refined, losses, params, surface, timings)
