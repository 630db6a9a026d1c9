"""Heun's 2nd-order sampler on discrete (sigma) schedules, the sampler of the Shap-E prior.

Numerically equal to diffusers' `HeunDiscreteScheduler` (0.42): Karras et al. 2022 ("Elucidating
the Design Space of Diffusion-Based Generative Models"), Algorithm 1 without churn (gamma = 0).
The ODE dx/dsigma = (x - D(x; sigma)) / sigma is integrated over sigma_0 > ... > sigma_{N-1} > 0:
an Euler step to the next sigma, then a correction that averages its derivative with the one at
the Euler point; the last step (to sigma = 0) is Euler only. That is 2N - 1 network evaluations.

Host side (numpy, float32 where diffusers/torch is float32): `heun_schedule` builds the tables
diffusers' `set_timesteps` builds, in its interleaved layout (2N - 1 timesteps, 2N sigmas), plus
per-evaluation tables so the device loop needs no step counter. Device side: `heun_sample` runs
all evaluations in one `jax.lax.scan` with an array-only carry (saved sample, derivative, dt).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nd3d_jax.errors import UserError

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "exp")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")
KARRAS_RHO = 7.0  # rho of Karras et al. 2022, eq 5


@dataclasses.dataclass(frozen=True)
class HeunConfig:
    """The fields (and defaults) of diffusers' `HeunDiscreteScheduler` config."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "linear"
    trained_betas: tuple[float, ...] | None = None
    prediction_type: str = "epsilon"
    use_karras_sigmas: bool = False
    use_exponential_sigmas: bool = False
    use_beta_sigmas: bool = False
    clip_sample: bool = False
    clip_sample_range: float = 1.0
    timestep_spacing: str = "linspace"
    steps_offset: int = 0

    def __post_init__(self):
        if self.trained_betas is not None:  # a list from JSON -> hashable tuple
            object.__setattr__(self, "trained_betas", tuple(float(b) for b in self.trained_betas))
        choices = {
            "beta_schedule": BETA_SCHEDULES,
            "prediction_type": PREDICTION_TYPES,
            "timestep_spacing": TIMESTEP_SPACINGS,
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise UserError(f"Heun scheduler {key}={getattr(self, key)!r} not in {allowed}")
        flags = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "clip_sample")
        for key in flags:
            if not isinstance(getattr(self, key), bool):
                raise UserError(f"Heun scheduler {key}={getattr(self, key)!r} must be true/false")
        for key in ("num_train_timesteps", "steps_offset"):
            if isinstance(getattr(self, key), bool) or not isinstance(getattr(self, key), int):
                raise UserError(f"Heun scheduler {key}={getattr(self, key)!r} must be an integer")
        if self.num_train_timesteps < 2:
            raise UserError(f"Heun scheduler num_train_timesteps={self.num_train_timesteps} < 2")
        if sum(getattr(self, k) for k in flags[:3]) > 1:
            raise UserError(f"Heun scheduler: set at most one of {', '.join(flags[:3])}")
        if self.trained_betas is not None and len(self.trained_betas) != self.num_train_timesteps:
            raise UserError(
                f"Heun scheduler trained_betas has {len(self.trained_betas)} values, "
                f"num_train_timesteps is {self.num_train_timesteps}"
            )
        if not self.clip_sample_range > 0:
            raise UserError(f"Heun scheduler clip_sample_range={self.clip_sample_range!r} <= 0")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HeunConfig:
        """From a diffusers config dict; keys starting with "_" (`_class_name`, ...) are skipped."""
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in d.items():
            if key.startswith("_"):
                continue
            if key not in known:
                raise UserError(
                    f"Heun scheduler config: unknown key {key!r} (known: {sorted(known)})"
                )
            kwargs[key] = value
        return cls(**kwargs)

    @classmethod
    def from_folder(cls, path: str | os.PathLike) -> HeunConfig:
        """From `path/scheduler_config.json`, as diffusers' `save_config` writes it."""
        file = os.path.join(os.fspath(path), "scheduler_config.json")
        if not os.path.isfile(file):
            raise UserError(f"no scheduler config {file}: point to a diffusers scheduler folder")
        try:
            with open(file) as f:
                d = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"cannot read scheduler config {file}: {e}") from None
        if not isinstance(d, dict):
            raise UserError(f"scheduler config {file} is not a JSON object")
        return cls.from_dict(d)

    @classmethod
    def shap_e(cls) -> HeunConfig:
        """The scheduler Shap-E's diffusers pipeline builds (openai/shap-e)."""
        return cls(
            beta_schedule="exp",
            num_train_timesteps=1024,
            prediction_type="sample",
            use_karras_sigmas=True,
            clip_sample=True,
            clip_sample_range=1.0,
        )


# --- host-side tables -------------------------------------------------------------------------


def _betas_from_alpha_bar(n: int, alpha_bar: Callable[[float], float], max_beta=0.999):
    """beta_i = 1 - abar((i + 1) / n) / abar(i / n), capped; Python floats, then float32."""
    betas = [min(1.0 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)]
    return np.asarray(betas, np.float32)


def betas(config: HeunConfig) -> np.ndarray:
    """(T,) float32 betas. torch's float32 linspace can differ from ours in the last bit."""
    n, b0, b1 = config.num_train_timesteps, config.beta_start, config.beta_end
    if config.trained_betas is not None:
        return np.asarray(config.trained_betas, np.float32)
    if config.beta_schedule == "linear":
        return np.linspace(b0, b1, n).astype(np.float32)
    if config.beta_schedule == "scaled_linear":  # latent diffusion: linear in sqrt(beta)
        return np.square(np.linspace(b0**0.5, b1**0.5, n).astype(np.float32))
    if config.beta_schedule == "squaredcos_cap_v2":  # Nichol & Dhariwal 2021 cosine
        return _betas_from_alpha_bar(n, lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2)
    return _betas_from_alpha_bar(n, lambda t: math.exp(-12.0 * t))  # "exp" (Shap-E)


def alphas_cumprod(config: HeunConfig) -> np.ndarray:
    """(T,) float32 abar_t; accumulated in float64 and rounded per entry, as torch's CPU cumprod."""
    alphas = np.float32(1.0) - betas(config)
    return np.cumprod(alphas.astype(np.float64)).astype(np.float32)


def _spaced_timesteps(config: HeunConfig, n: int) -> np.ndarray:
    """(n,) float32 timesteps, descending, for `timestep_spacing`."""
    T = config.num_train_timesteps
    if config.timestep_spacing == "linspace":
        return np.linspace(0, T - 1, n, dtype=np.float32)[::-1].copy()
    if config.timestep_spacing == "leading":
        ratio = T // n
        t = (np.arange(n) * ratio).round()[::-1].astype(np.float32)
        return t + np.float32(config.steps_offset)
    ratio = T / n  # trailing
    return np.arange(T, 0, -ratio).round().astype(np.float32) - np.float32(1.0)


def _sigma_to_t(sigmas: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional training timestep of each sigma: linear interpolation in log sigma."""
    log_sigma = np.log(np.maximum(sigmas, 1e-10))  # (n,) float64
    below = log_sigma[None, :] - log_sigmas[:, None] >= 0  # (T, n)
    # last row where log_sigma >= log_sigmas[row] (argmax of the running count), at most T - 2
    low = np.minimum(np.cumsum(below, axis=0).argmax(axis=0), log_sigmas.shape[0] - 2)
    lo, hi = log_sigmas[low], log_sigmas[low + 1]
    w = np.clip((lo - log_sigma) / (lo - hi), 0.0, 1.0)
    return (1.0 - w) * low + w * (low + 1)


def _karras_sigmas(sigma_min: float, sigma_max: float, n: int) -> np.ndarray:
    """Karras et al. 2022 eq 5: (max^(1/rho) + i/(n-1) (min^(1/rho) - max^(1/rho)))^rho."""
    ramp = np.linspace(0.0, 1.0, n)
    lo, hi = sigma_min ** (1.0 / KARRAS_RHO), sigma_max ** (1.0 / KARRAS_RHO)
    return (hi + ramp * (lo - hi)) ** KARRAS_RHO


def _exponential_sigmas(sigma_min: float, sigma_max: float, n: int) -> np.ndarray:
    """Evenly spaced in log sigma."""
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n))


def _beta_sigmas(sigma_min: float, sigma_max: float, n: int, a=0.6, b=0.6) -> np.ndarray:
    """ "Beta Sampling is All You Need" (Lee et al. 2024): Beta(a, b) quantiles of 1 - i/(n-1)."""
    import scipy.stats

    ppf = scipy.stats.beta.ppf(1.0 - np.linspace(0.0, 1.0, n), a, b)
    return sigma_min + ppf * (sigma_max - sigma_min)


class HeunSchedule(NamedTuple):
    """Tables for N inference steps (E = 2N - 1 network evaluations), numpy.

    timesteps/sigmas are diffusers' `scheduler.timesteps` / `scheduler.sigmas` after
    `set_timesteps(N)`; the rest is indexed by evaluation i = 0 .. E - 1.
    """

    timesteps: np.ndarray  # (E,) float32, passed to the network at evaluation i
    sigmas: np.ndarray  # (2N,) float32: s0, s1, s1, ..., s_{N-1}, s_{N-1}, 0
    sigma_in: np.ndarray  # (E,) float32, scale_model_input's sigma: x / sqrt(sigma_in^2 + 1)
    sigma_from: np.ndarray  # (E,) float32, the sigma the step at i starts from
    sigma_to: np.ndarray  # (E,) float32, the sigma it steps to
    first_order: np.ndarray  # (E,) bool: Euler evaluation (True) or Heun correction (False)
    init_noise_sigma: float  # the initial noise is N(0, init_noise_sigma^2)


def heun_schedule(config: HeunConfig, num_inference_steps: int) -> HeunSchedule:
    """diffusers' `HeunDiscreteScheduler.set_timesteps(num_inference_steps)`, as numpy tables."""
    n = num_inference_steps
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise UserError(f"num_inference_steps={n!r}: must be an integer >= 1")
    n = int(n)
    abar = alphas_cumprod(config)
    train_sigmas = np.sqrt((np.float32(1.0) - abar) / abar)  # float32, sigma = sqrt((1-abar)/abar)
    log_sigmas = np.log(train_sigmas)
    timesteps = _spaced_timesteps(config, n)
    sigmas = np.interp(timesteps, np.arange(len(train_sigmas)), train_sigmas)  # float64
    convert = None
    if config.use_karras_sigmas:
        convert = _karras_sigmas
    elif config.use_exponential_sigmas:
        convert = _exponential_sigmas
    elif config.use_beta_sigmas:
        convert = _beta_sigmas
    if convert is not None:  # new sigmas between the end points, timesteps follow them
        sigmas = convert(float(sigmas[-1]), float(sigmas[0]), n)
        timesteps = _sigma_to_t(sigmas, log_sigmas)
    sig = np.concatenate([sigmas, [0.0]]).astype(np.float32)  # (N + 1,)
    # diffusers' layout: every sigma but the first and the last 0 twice, timesteps likewise
    sig = np.concatenate([sig[:1], np.repeat(sig[1:-1], 2), sig[-1:]])  # (2N,)
    ts = np.concatenate([timesteps[:1], np.repeat(timesteps[1:], 2)]).astype(np.float32)
    if n > 1 and ts[0] == ts[1]:
        # diffusers would then start at index 1 (its img2img rule); that schedule is degenerate
        raise UserError(
            f"num_inference_steps={n} repeats the first timestep with timestep_spacing="
            f"{config.timestep_spacing!r} and {config.num_train_timesteps} training steps"
        )
    i = np.arange(2 * n - 1)
    first = i % 2 == 0
    prev = np.maximum(i - 1, 0)
    sigma_from = np.where(first, sig[i], sig[prev])
    sigma_to = np.where(first, sig[i + 1], sig[i])
    smax = sig.max()
    if config.timestep_spacing in ("linspace", "trailing"):
        init_sigma = smax
    else:
        init_sigma = np.sqrt(smax * smax + np.float32(1.0))
    return HeunSchedule(
        timesteps=ts,
        sigmas=sig,
        sigma_in=sig[:-1].copy(),
        sigma_from=sigma_from,
        sigma_to=sigma_to,
        first_order=first,
        init_noise_sigma=float(np.float32(init_sigma)),
    )


# --- device-side loop -------------------------------------------------------------------------


class HeunCarry(NamedTuple):
    """What diffusers keeps on the scheduler object between `step` calls (arrays only)."""

    sample: jax.Array  # the current x
    saved_sample: jax.Array  # x where the Euler step started
    prev_derivative: jax.Array  # its derivative
    dt: jax.Array  # float32 scalar, sigma_next - sigma of that Euler step


def predict_x0(config: HeunConfig, model_output, sample, sigma) -> jax.Array:
    """x_0 from the network output at noise level sigma (float32), clipped if configured."""
    if config.prediction_type == "epsilon":
        x0 = sample - sigma * model_output
    elif config.prediction_type == "v_prediction":
        x0 = model_output * (-sigma / jnp.sqrt(sigma * sigma + 1.0)) + sample / (
            sigma * sigma + 1.0
        )
    else:  # "sample"
        x0 = model_output
    if config.clip_sample:
        x0 = jnp.clip(x0, -config.clip_sample_range, config.clip_sample_range)
    return x0


def heun_step(config: HeunConfig, carry: HeunCarry, model_output, sigma_from, sigma_to, first):
    """One `HeunDiscreteScheduler.step`: returns (new carry, pred_original_sample).

    Euler evaluation (first=True): d = (x - x0) / sigma_from, x' = x + d (sigma_to - sigma_from),
    and x, d, dt are saved. Correction (first=False, x is the Euler point at sigma_to):
    d = (d_saved + (x - x0) / sigma_to) / 2, x' = x_saved + d dt_saved. Math in float32.
    """
    dtype = carry.sample.dtype
    x = carry.sample.astype(jnp.float32)
    sigma = jnp.where(first, sigma_from, sigma_to)  # the noise level of x
    x0 = predict_x0(config, model_output.astype(jnp.float32), x, sigma)
    d = (x - x0) / sigma
    d_prev = carry.prev_derivative.astype(jnp.float32)
    derivative = jnp.where(first, d, (d_prev + d) / 2)
    dt = jnp.where(first, sigma_to - sigma_from, carry.dt)
    base = jnp.where(first, x, carry.saved_sample.astype(jnp.float32))
    prev_sample = base + derivative * dt
    new = HeunCarry(
        sample=prev_sample.astype(dtype),
        saved_sample=jnp.where(first, carry.sample, carry.saved_sample),
        prev_derivative=jnp.where(first, d, d_prev).astype(dtype),
        dt=dt,
    )
    return new, x0.astype(dtype)


def heun_sample(
    denoise_fn: Callable[[jax.Array, jax.Array], jax.Array],
    x_init: jax.Array,
    schedule: HeunSchedule,
    config: HeunConfig,
    return_all: bool = False,
):
    """The whole reverse run (2N - 1 evaluations) in one `lax.scan`; jittable.

    denoise_fn(model_input, t) -> model_output, with model_input = x / sqrt(sigma_in^2 + 1) in x's
    dtype and t the float32 timestep scalar (traced). x_init is already scaled by
    `schedule.init_noise_sigma`. Returns the final sample (x's dtype), or with return_all
    (final, prev_samples (E, *x.shape), pred_original_samples (E, *x.shape)).
    """
    dtype = x_init.dtype
    xs = (
        jnp.asarray(schedule.timesteps, jnp.float32),
        jnp.asarray(schedule.sigma_in, jnp.float32),
        jnp.asarray(schedule.sigma_from, jnp.float32),
        jnp.asarray(schedule.sigma_to, jnp.float32),
        jnp.asarray(schedule.first_order, jnp.bool_),
    )

    def body(carry: HeunCarry, inputs):
        t, sigma_in, sigma_from, sigma_to, first = inputs
        scale = jnp.sqrt(sigma_in * sigma_in + 1.0)
        model_input = (carry.sample.astype(jnp.float32) / scale).astype(dtype)
        model_output = denoise_fn(model_input, t)
        carry, x0 = heun_step(config, carry, model_output, sigma_from, sigma_to, first)
        return carry, ((carry.sample, x0) if return_all else None)

    init = HeunCarry(x_init, x_init, jnp.zeros_like(x_init), jnp.zeros((), jnp.float32))
    carry, outs = jax.lax.scan(body, init, xs)
    if return_all:
        return carry.sample, outs[0], outs[1]
    return carry.sample
