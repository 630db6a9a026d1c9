"""Noise schedules, forward noising and the training objective (paper "Preliminaries", eq 1-3).

Constants are computed in float64 numpy and stored as float32 arrays. Eq 1 prints the forward
mean as (1 - beta_t) x_{t-1}; we use the standard sqrt(1 - beta_t) x_{t-1} (DDPM), whose
composition over steps is q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I).
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from nd3d_jax.errors import UserError

BETA_SCHEDULES = ("linear", "scaled_linear", "cosine")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """Defaults: Stable Diffusion's (scaled-linear, 1000 steps, 0.00085 -> 0.012, epsilon)."""

    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    prediction_type: str = "epsilon"

    def __post_init__(self):
        # config values (schedule.*): a wrong one is the user's mistake, one line
        if self.beta_schedule not in BETA_SCHEDULES:
            raise UserError(
                f"beta_schedule {self.beta_schedule!r} not in {BETA_SCHEDULES} "
                "(--config.schedule.beta_schedule)"
            )
        if self.prediction_type not in PREDICTION_TYPES:
            raise UserError(
                f"prediction_type {self.prediction_type!r} not in {PREDICTION_TYPES} "
                "(--config.schedule.prediction_type)"
            )
        if self.num_train_timesteps < 1:
            raise UserError("num_train_timesteps must be >= 1 (--config.schedule.*)")


def make_betas(config: ScheduleConfig) -> np.ndarray:
    """beta_1..beta_T in float64."""
    n, b0, b1 = config.num_train_timesteps, config.beta_start, config.beta_end
    if config.beta_schedule == "linear":
        return np.linspace(b0, b1, n, dtype=np.float64)
    if config.beta_schedule == "scaled_linear":  # latent diffusion: linear in sqrt(beta)
        return np.linspace(b0**0.5, b1**0.5, n, dtype=np.float64) ** 2
    # cosine (Nichol & Dhariwal 2021; diffusers' squaredcos_cap_v2), beta capped at 0.999
    t = np.arange(n + 1, dtype=np.float64) / n
    abar = np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2
    return np.minimum(1 - abar[1:] / abar[:-1], 0.999)


@flax.struct.dataclass
class Schedule:
    betas: jax.Array  # (T,)
    alphas_cumprod: jax.Array  # (T,) abar_t
    posterior_variance: jax.Array  # (T,) eq 14's sigma_t^2 for consecutive steps (0 at t = 0)
    prediction_type: str = flax.struct.field(pytree_node=False, default="epsilon")

    @property
    def num_train_timesteps(self) -> int:
        return self.betas.shape[0]


def make_schedule(config: ScheduleConfig = ScheduleConfig()) -> Schedule:
    betas = make_betas(config)
    abar = np.cumprod(1.0 - betas)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    posterior = betas * (1.0 - abar_prev) / (1.0 - abar)
    f32 = lambda a: jax.device_put(np.asarray(a, np.float32))  # noqa: E731
    return Schedule(f32(betas), f32(abar), f32(posterior), config.prediction_type)


def _bcast(v: jax.Array, x: jax.Array) -> jax.Array:
    """Per-sample scalars (B,) -> broadcastable to x (B, ...)."""
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def q_sample(schedule: Schedule, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (eq 1 composed over t steps)."""
    abar = _bcast(schedule.alphas_cumprod[t], x0)
    return jnp.sqrt(abar) * x0 + jnp.sqrt(1.0 - abar) * noise


def training_target(schedule: Schedule, x0, noise, t) -> jax.Array:
    """What the network predicts: eps (eq 3), x_0, or v = sqrt(abar) eps - sqrt(1 - abar) x_0."""
    if schedule.prediction_type == "epsilon":
        return noise
    if schedule.prediction_type == "sample":
        return x0
    abar = _bcast(schedule.alphas_cumprod[t], x0)
    return jnp.sqrt(abar) * noise - jnp.sqrt(1.0 - abar) * x0


def diffusion_loss(prediction: jax.Array, target: jax.Array, mask: jax.Array | None = None):
    """Eq 3: E ||eps - eps_theta(x_t, t)||^2 as a mean squared error.

    `mask` is per sample (B,) or broadcastable to the prediction (e.g. (B, H, W, 1) to drop the
    grid tiles of views an example does not have); the mean runs over the kept elements only, so
    masked parts give no gradient.
    """
    sq = jnp.square(prediction.astype(jnp.float32) - target.astype(jnp.float32))
    if mask is None:
        return jnp.mean(sq)
    m = jnp.broadcast_to(_bcast(mask.astype(jnp.float32), sq), sq.shape)
    return jnp.sum(sq * m) / jnp.maximum(jnp.sum(m), 1.0)
