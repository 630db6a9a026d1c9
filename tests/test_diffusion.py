"""Schedules and samplers against diffusers (DDPMScheduler, DDIMScheduler); sampler identities."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from nd3d_jax import diffusion as d

TOL = 1e-5
_DIFFUSERS_NAME = {
    "linear": "linear",
    "scaled_linear": "scaled_linear",
    "cosine": "squaredcos_cap_v2",
}


def _pair(kind="scaled_linear", prediction="epsilon", n=1000, cls=DDPMScheduler, **kw):
    ours = d.make_schedule(d.ScheduleConfig(n, kind, 0.00085, 0.012, prediction))
    ref = cls(
        num_train_timesteps=n,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule=_DIFFUSERS_NAME[kind],
        prediction_type=prediction,
        clip_sample=False,
        **kw,
    )
    return ours, ref


@pytest.mark.parametrize("kind", ["linear", "scaled_linear", "cosine"])
def test_schedules_and_add_noise(kind):
    ours, ref = _pair(kind)
    np.testing.assert_allclose(ours.alphas_cumprod, ref.alphas_cumprod.numpy(), atol=1e-6)
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(4, 8, 8, 4)).astype(np.float32)
    eps = rng.normal(size=x0.shape).astype(np.float32)
    t = np.array([0, 10, 500, 999])
    want = ref.add_noise(torch.from_numpy(x0), torch.from_numpy(eps), torch.from_numpy(t))
    got = d.q_sample(ours, jnp.asarray(x0), jnp.asarray(eps), jnp.asarray(t))
    np.testing.assert_allclose(got, want.numpy(), atol=TOL)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_ddpm_step_with_variance(prediction):
    ours, ref = _pair("scaled_linear", prediction)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
    for t in (999, 500, 1, 0):
        out = rng.normal(size=x.shape).astype(np.float32)
        want = ref.step(
            torch.from_numpy(out),
            t,
            torch.from_numpy(x),
            generator=torch.Generator().manual_seed(t),
        ).prev_sample
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(t)).numpy()
        got, _ = d.ddpm_step(ours, jnp.asarray(out), t, jnp.asarray(x), jnp.asarray(noise))
        np.testing.assert_allclose(got, want.numpy(), atol=TOL, err_msg=f"t={t}")
        if t > 0:
            # diffusers derives beta_t from the float32 abar ratio; we keep the float64 beta_t
            np.testing.assert_allclose(d.ddpm_variance(ours, t), ref._get_variance(t), rtol=1e-4)


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_steps_follow_diffusers(eta):
    ours, ref = _pair("scaled_linear", "epsilon", cls=DDIMScheduler, set_alpha_to_one=True)
    ref.set_timesteps(10)
    ts = d.timesteps(1000, 10)
    np.testing.assert_array_equal(ts, ref.timesteps.numpy())
    rng = np.random.default_rng(2)
    x_ref = x = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
    x_ref = torch.from_numpy(x_ref)
    x = jnp.asarray(x)
    for i, t in enumerate(ts):
        out = rng.normal(size=x.shape).astype(np.float32)
        noise = rng.normal(size=x.shape).astype(np.float32)
        x_ref = ref.step(
            torch.from_numpy(out), int(t), x_ref, eta=eta, variance_noise=torch.from_numpy(noise)
        ).prev_sample
        prev = ts[i + 1] if i + 1 < len(ts) else -1
        x, _ = d.ddim_step(ours, jnp.asarray(out), int(t), prev, x, eta, jnp.asarray(noise))
        np.testing.assert_allclose(x, x_ref.numpy(), rtol=TOL, atol=TOL, err_msg=f"step {i}")


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_timestep_spacings(spacing):
    ref = DDIMScheduler(timestep_spacing=spacing)
    for n in (1, 7, 50):
        ref.set_timesteps(n)
        np.testing.assert_array_equal(d.timesteps(1000, n, spacing), ref.timesteps.numpy())


@pytest.mark.parametrize("steps", [1, 10, 50])
def test_ddim_eta0_with_oracle_returns_x0(steps):
    schedule = d.make_schedule()
    key = jax.random.PRNGKey(0)
    x0 = jax.random.normal(key, (2, 8, 8, 4))

    def oracle(x_t, t):  # the exact epsilon for this x_0
        abar = schedule.alphas_cumprod[t][:, None, None, None]
        return (x_t - jnp.sqrt(abar) * x0) / jnp.sqrt(1 - abar)

    x_T = jax.random.normal(jax.random.PRNGKey(1), x0.shape)
    out = jax.jit(lambda x: d.sample(oracle, schedule, x, key, steps))(x_T)
    np.testing.assert_allclose(out, x0, atol=1e-4)


def test_ddpm_variance_is_eq14():
    for kind in ("linear", "scaled_linear", "cosine"):
        s = d.make_schedule(d.ScheduleConfig(beta_schedule=kind))
        betas = d.schedules.make_betas(d.ScheduleConfig(beta_schedule=kind))
        abar = np.cumprod(1 - betas)
        t = np.arange(1, 1000)
        want = betas[t] * (1 - abar[t - 1]) / (1 - abar[t])
        np.testing.assert_allclose(d.ddpm_variance(s, jnp.asarray(t)), want, rtol=1e-5)


def test_ddpm_sampler_runs_in_one_scan_and_guidance():
    s = d.make_schedule(d.ScheduleConfig(num_train_timesteps=100))
    fn = jax.jit(lambda x, k: d.sample(lambda x, t: 0.1 * x, s, x, k, 100, sampler="ddpm"))
    out = fn(jnp.ones((1, 4, 4, 1)), jax.random.PRNGKey(0))
    assert out.shape == (1, 4, 4, 1) and bool(jnp.isfinite(out).all())
    u, c = jnp.array([1.0, 2.0]), jnp.array([3.0, 1.0])
    np.testing.assert_allclose(d.classifier_free_guidance(u, c, 7.5), [16.0, -5.5])
    np.testing.assert_allclose(d.classifier_free_guidance(u, c, 1.0), c)


def test_per_example_keys_make_the_batch_split_invariant():
    """DDPM with one key per example: each example's run equals that example alone."""
    s = d.make_schedule(d.ScheduleConfig(num_train_timesteps=50))
    run = jax.jit(lambda x, k: d.sample(lambda x, t: 0.1 * x, s, x, k, 10, sampler="ddpm"))
    x = jnp.arange(3.0)[:, None, None, None] * jnp.ones((3, 2, 2, 1))
    keys = jax.random.split(jax.random.key(0), 3)
    both = run(x, keys)
    for i in range(3):
        np.testing.assert_allclose(run(x[i : i + 1], keys[i : i + 1]), both[i : i + 1], atol=1e-6)
    assert float(jnp.abs(both[0] - both[1]).max()) > 0.1
    assert d.per_example_keys(keys) and not d.per_example_keys(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="batch of typed keys"):
        d.per_example_keys(jax.random.split(jax.random.PRNGKey(0), 3))


def test_targets_and_masked_loss():
    s = d.make_schedule(d.ScheduleConfig(prediction_type="v_prediction"))
    x0, eps, t = jnp.ones((2, 2, 2, 1)), jnp.full((2, 2, 2, 1), 2.0), jnp.array([10, 900])
    v = d.training_target(s, x0, eps, t)
    a = s.alphas_cumprod[t][:, None, None, None]
    np.testing.assert_allclose(
        v, jnp.broadcast_to(jnp.sqrt(a) * 2 - jnp.sqrt(1 - a), v.shape), rtol=1e-6
    )
    # the v target recovers x0 and eps through predict_x0_eps
    x_t = d.q_sample(s, x0, eps, t)
    rx0, reps = d.predict_x0_eps(s, v, x_t, t)
    np.testing.assert_allclose(rx0, x0, atol=1e-4)
    np.testing.assert_allclose(reps, eps, atol=1e-4)
    pred = jnp.stack([jnp.zeros((2, 2, 1)), jnp.full((2, 2, 1), 3.0)])
    target = jnp.zeros_like(pred)
    assert float(d.diffusion_loss(pred, target)) == pytest.approx(4.5)
    assert float(d.diffusion_loss(pred, target, jnp.array([1.0, 0.0]))) == 0.0
    tile = jnp.zeros((2, 2, 2, 1)).at[:, 0].set(1.0)  # keep the top row of every sample
    assert float(d.diffusion_loss(pred, target, tile)) == pytest.approx(4.5)
    grad = jax.grad(lambda p: d.diffusion_loss(p, target, jnp.array([1.0, 0.0])))(pred)
    assert float(jnp.abs(grad[1]).max()) == 0.0
    with pytest.raises(ValueError, match="beta_schedule"):
        d.ScheduleConfig(beta_schedule="quadratic")


def test_ddim_with_clipped_x0_matches_diffusers():
    ours, ref = _pair("linear", "epsilon", cls=DDIMScheduler, set_alpha_to_one=True)
    ref.config.clip_sample = True  # _pair turns it off
    ref.set_timesteps(10)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(1, 4, 4, 3)).astype(np.float32)
    out = 3.0 * rng.normal(size=x.shape).astype(np.float32)  # x0 estimates far outside [-1, 1]
    t, prev = 900, 800
    want = ref.step(
        torch.from_numpy(out), t, torch.from_numpy(x), eta=0.0, use_clipped_model_output=True
    ).prev_sample
    got, x0 = d.ddim_step(ours, jnp.asarray(out), t, prev, jnp.asarray(x), clip=1.0)
    assert float(jnp.abs(x0).max()) <= 1.0
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)
