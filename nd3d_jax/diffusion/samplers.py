"""Reverse steps (eq 14), DDIM, classifier-free guidance, and whole sampling runs in one scan.

Every step is a pure function of arrays (timesteps may be traced), so `sample` compiles a whole
run into one XLA program with `jax.lax.scan`. Timesteps are 0-based (t = 0 .. T-1), as in
diffusers; a `prev_t` below 0 means "the clean sample" (abar = 1).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from nd3d_jax.diffusion.schedules import Schedule, _bcast


def _abar(schedule: Schedule, t: jax.Array) -> jax.Array:
    t = jnp.asarray(t)
    return jnp.where(t >= 0, schedule.alphas_cumprod[jnp.maximum(t, 0)], 1.0)


def predict_x0_eps(schedule: Schedule, model_output, x_t, t) -> tuple[jax.Array, jax.Array]:
    """(x_0, eps) implied by the network output for its prediction type."""
    abar = _bcast(_abar(schedule, t), x_t)
    a, s = jnp.sqrt(abar), jnp.sqrt(1.0 - abar)
    if schedule.prediction_type == "epsilon":
        return (x_t - s * model_output) / a, model_output
    if schedule.prediction_type == "sample":
        return model_output, (x_t - a * model_output) / s
    return a * x_t - s * model_output, a * model_output + s * x_t  # v prediction


def ddpm_variance(schedule: Schedule, t, prev_t=None) -> jax.Array:
    """Eq 14: sigma_t^2 = beta_t (1 - abar_{t-1}) / (1 - abar_t), with beta_t = 1 - abar_t /
    abar_prev so that strided steps stay consistent (beta_t itself for prev_t = t - 1)."""
    t = jnp.asarray(t)
    prev_t = t - 1 if prev_t is None else jnp.asarray(prev_t)
    abar, abar_prev = _abar(schedule, t), _abar(schedule, prev_t)
    strided = (1.0 - abar / abar_prev) * (1.0 - abar_prev) / (1.0 - abar)
    # consecutive steps use the float64-derived table (the float32 ratio above cancels)
    exact = schedule.posterior_variance[jnp.clip(t, 0)]
    return jnp.maximum(jnp.where(prev_t == t - 1, exact, strided), 1e-20)


def _clip(schedule, x0, eps, x_t, t, clip):
    """Clips the predicted x_0 to [-clip, clip] and re-derives eps from it (diffusers'
    clip_sample with use_clipped_model_output); pixel-space models need it at high noise."""
    if clip is None:
        return x0, eps
    abar = _bcast(_abar(schedule, t), x_t)
    x0 = jnp.clip(x0, -clip, clip)
    return x0, (x_t - jnp.sqrt(abar) * x0) / jnp.sqrt(1.0 - abar)


def ddpm_step(schedule: Schedule, model_output, t, x_t, noise, prev_t=None, clip=None):
    """Ancestral step x_t -> x_{t-1} = mu_theta(x_t, t) + sigma_t z (eq 14); no noise at t = 0.

    mu is the posterior mean of q(x_{t-1} | x_t, x_0) at the predicted x_0. Returns
    (x_prev, predicted x_0).
    """
    prev_t = jnp.asarray(t) - 1 if prev_t is None else prev_t
    abar, abar_prev = _bcast(_abar(schedule, t), x_t), _bcast(_abar(schedule, prev_t), x_t)
    alpha = abar / abar_prev
    x0, _ = _clip(schedule, *predict_x0_eps(schedule, model_output, x_t, t), x_t, t, clip)
    mean = (jnp.sqrt(abar_prev) * (1 - alpha) * x0 + jnp.sqrt(alpha) * (1 - abar_prev) * x_t) / (
        1 - abar
    )
    sigma = jnp.sqrt(_bcast(ddpm_variance(schedule, t, prev_t), x_t))
    keep = _bcast(jnp.asarray(t) > 0, x_t)
    return mean + jnp.where(keep, sigma * noise, 0.0), x0


def ddim_step(
    schedule: Schedule, model_output, t, prev_t, x_t, eta: float = 0.0, noise=None, clip=None
):
    """DDIM (Song et al. 2021, eq 12): deterministic at eta = 0. Returns (x_prev, predicted x_0)."""
    abar, abar_prev = _bcast(_abar(schedule, t), x_t), _bcast(_abar(schedule, prev_t), x_t)
    x0, eps = _clip(schedule, *predict_x0_eps(schedule, model_output, x_t, t), x_t, t, clip)
    variance = (1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)
    std = eta * jnp.sqrt(variance)
    x_prev = jnp.sqrt(abar_prev) * x0 + jnp.sqrt(jnp.maximum(1 - abar_prev - std**2, 0.0)) * eps
    if noise is not None:
        x_prev = x_prev + std * noise
    return x_prev, x0


def classifier_free_guidance(uncond: jax.Array, cond: jax.Array, scale: float) -> jax.Array:
    """eps = eps_uncond + s (eps_cond - eps_uncond); s = 1 is the conditional model."""
    return uncond + scale * (cond - uncond)


def timesteps(num_train: int, num_steps: int, spacing: str = "leading", offset: int = 0):
    """Descending inference timesteps, as diffusers' `set_timesteps` spacings."""
    if not 1 <= num_steps <= num_train:
        raise ValueError(f"num_steps must be in [1, {num_train}], got {num_steps}")
    if spacing == "leading":
        ts = (np.arange(num_steps) * (num_train // num_steps)).round()[::-1] + offset
    elif spacing == "trailing":
        ts = np.round(np.arange(num_train, 0, -num_train / num_steps)) - 1
    elif spacing == "linspace":
        ts = np.linspace(0, num_train - 1, num_steps).round()[::-1]
    else:
        raise ValueError(f"unknown spacing {spacing!r}")
    return np.asarray(ts, np.int32)


def per_example_keys(key: jax.Array) -> bool:
    """True for a batch of typed keys (B,) (`jax.random.key`), False for one key (typed, or
    a legacy uint32 `PRNGKey`); a batch of legacy keys (B, 2) is an error."""
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key.ndim == 1
    if key.ndim != 1:
        raise ValueError(
            f"keys of shape {key.shape}: pass one key, or a batch of typed keys "
            "(jax.random.key / jax.random.wrap_key_data)"
        )
    return False


def sample(
    model_fn: Callable[[jax.Array, jax.Array], jax.Array],
    schedule: Schedule,
    x_T: jax.Array,
    key: jax.Array,
    num_steps: int = 50,
    sampler: str = "ddim",
    eta: float = 0.0,
    spacing: str = "leading",
    clip: float | None = None,
) -> jax.Array:
    """A whole reverse run in one `lax.scan`. `model_fn(x_t, t_batch)` returns the network output
    (wrap it with `classifier_free_guidance` for guided sampling); `clip` bounds each
    predicted x_0 (pixel-space models). `key` is one key, or one per example (shape (B,)):
    then every example's step noise comes from its own key (batch-split invariant). Returns
    x_0."""
    ts = jnp.asarray(timesteps(schedule.num_train_timesteps, num_steps, spacing))
    prev = jnp.concatenate([ts[1:], jnp.array([-1], jnp.int32)])
    if sampler not in ("ddim", "ddpm"):
        raise ValueError(f"sampler must be 'ddim' or 'ddpm', got {sampler!r}")

    def body(x, inputs):
        t, t_prev, k = inputs
        out = model_fn(x, jnp.full((x.shape[0],), t, jnp.int32))
        if not per_example_keys(k):
            noise = jax.random.normal(k, x.shape, x.dtype)
        else:
            noise = jax.vmap(lambda kk: jax.random.normal(kk, x.shape[1:], x.dtype))(k)
        if sampler == "ddpm":
            x, _ = ddpm_step(schedule, out, t, x, noise, prev_t=t_prev, clip=clip)
        else:
            x, _ = ddim_step(schedule, out, t, t_prev, x, eta, noise if eta > 0 else None, clip)
        return x, None

    if not per_example_keys(key):
        keys = jax.random.split(key, num_steps)
    else:  # (B,) -> (num_steps, B)
        keys = jax.vmap(lambda k: jax.random.split(k, num_steps))(key).swapaxes(0, 1)
    x, _ = jax.lax.scan(body, x_T, (ts, prev, keys))
    return x
