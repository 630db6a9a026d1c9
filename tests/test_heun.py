"""Heun sampler (nd3d_jax.diffusion.heun) against diffusers' HeunDiscreteScheduler, step by step."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import HeunDiscreteScheduler

from nd3d_jax.diffusion.heun import HeunConfig, heun_sample, heun_schedule
from nd3d_jax.errors import UserError

D = 8  # toy sample: (2, D)
# diffusers' set_timesteps calls np.array on a torch tensor (numpy 2 copy-keyword notice)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@functools.cache
def _diffusers(config: HeunConfig) -> HeunDiscreteScheduler:
    kwargs = dataclasses.asdict(config)
    if kwargs["trained_betas"] is not None:
        kwargs["trained_betas"] = list(kwargs["trained_betas"])
    return HeunDiscreteScheduler(**kwargs)


def _close(ours, ref, scale=None, floor=0.0, tol=1e-5):
    """|ours - ref| <= tol * max(1, |scale|) + floor elementwise (scale defaults to ref)."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape
    scale = np.abs(ref if scale is None else scale)
    err = (np.abs(ours - ref) - floor) / np.maximum(1.0, scale)
    assert err.max() <= tol, f"max scaled error {err.max():.3g}"


def _sample_scale(x_init, xs):
    """Per evaluation i, elementwise max |x| over the samples step i combines: its input x_{i-1},
    the saved Euler start x_{i-2} and its output x_i (x_{-1} = x_init). Float32 rounding of x
    ~ 400 (Shap-E's first sigma) is ~3e-5, however small the result of the step."""
    chain = np.abs(np.concatenate([x_init[None], x_init[None], xs]).astype(np.float64))
    return np.maximum(np.maximum(chain[:-2], chain[1:-1]), chain[2:])


SCHEDULE_CASES = [(HeunConfig.shap_e(), n) for n in (1, 2, 4, 64)] + [
    (HeunConfig(), 5),  # linear, linspace
    (HeunConfig(beta_schedule="scaled_linear", timestep_spacing="leading", steps_offset=1), 10),
    (HeunConfig(beta_schedule="scaled_linear", timestep_spacing="trailing"), 7),
    (HeunConfig(beta_schedule="squaredcos_cap_v2", use_exponential_sigmas=True), 6),
    (HeunConfig(use_beta_sigmas=True, timestep_spacing="leading"), 5),
    (HeunConfig(num_train_timesteps=50, trained_betas=tuple(np.linspace(1e-3, 0.2, 50))), 3),
]


@pytest.mark.parametrize("config,n", SCHEDULE_CASES)
def test_schedule_tables_equal_diffusers(config, n):
    ref = _diffusers(config)
    ref.set_timesteps(n)
    s = heun_schedule(config, n)
    assert s.timesteps.dtype == np.float32 and s.timesteps.shape == (2 * n - 1,)
    assert s.sigmas.dtype == np.float32 and s.sigmas.shape == (2 * n,)
    np.testing.assert_allclose(s.timesteps, ref.timesteps.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s.sigmas, ref.sigmas.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s.init_noise_sigma, float(ref.init_noise_sigma), rtol=1e-5)
    # per-evaluation tables: Euler at even i (sigma_i -> sigma_{i+1}), correction at odd i
    e = np.arange(2 * n - 1)
    np.testing.assert_array_equal(s.first_order, e % 2 == 0)
    np.testing.assert_array_equal(s.sigma_in, s.sigmas[:-1])
    np.testing.assert_array_equal(s.sigma_from[0::2], s.sigmas[0:-1:2])
    np.testing.assert_array_equal(s.sigma_to[0::2], s.sigmas[1::2])
    np.testing.assert_array_equal(s.sigma_from[1::2], s.sigmas[0:-2:2])
    np.testing.assert_array_equal(s.sigma_to[1::2], s.sigmas[1:-1:2])


def test_shap_e_schedule_values():
    """Hand checks: exp schedule abar_T = exp(-12), Karras end points, last sigma 0."""
    s = heun_schedule(HeunConfig.shap_e(), 4)
    sigma_max = np.sqrt((1 - np.exp(-12.0)) / np.exp(-12.0))  # abar at t = 1023 is exp(-12)
    np.testing.assert_allclose(s.sigmas[0], sigma_max, rtol=1e-4)
    np.testing.assert_allclose(s.init_noise_sigma, sigma_max, rtol=1e-4)  # linspace spacing
    assert s.sigmas[-1] == 0 and s.timesteps[0] == pytest.approx(1023.0, abs=1e-3)
    # Karras: sigma^(1/7) is evenly spaced over the 4 distinct sigmas
    r = s.sigmas[[0, 1, 3, 5]].astype(np.float64) ** (1 / 7)
    np.testing.assert_allclose(np.diff(r), np.full(3, (r[-1] - r[0]) / 3), rtol=1e-4)


def _toy_model_np():
    w = np.random.default_rng(0).normal(size=(D, D)) / np.sqrt(D)
    return w.astype(np.float32)


def _run_diffusers(config, n, x_init, w, dtype=torch.float32):
    """The pipeline loop in torch; returns (prev_samples, pred_original_samples). In float64 the
    scheduler's tables stay float32 (0-d tensors do not promote), the arithmetic is float64."""
    sched = _diffusers(config)
    sched.set_timesteps(n)
    x, wt = torch.from_numpy(x_init).to(dtype), torch.from_numpy(w).to(dtype)
    xs, x0s = [], []
    for t in sched.timesteps:
        inp = sched.scale_model_input(x, t)
        out = torch.tanh(inp @ wt + t * 0.001)
        step = sched.step(out, t, x)
        x = step.prev_sample
        xs.append(x.numpy())
        x0s.append(step.pred_original_sample.numpy())
    return np.stack(xs), np.stack(x0s)


STEP_CASES = [
    (HeunConfig.shap_e(), 1),
    (HeunConfig.shap_e(), 4),
    (HeunConfig(beta_schedule="scaled_linear"), 3),  # epsilon, no Karras, no clip
    (HeunConfig(prediction_type="v_prediction", timestep_spacing="leading", clip_sample=True), 2),
]


@pytest.mark.parametrize("config,n", STEP_CASES)
def test_steps_equal_diffusers(config, n):
    w = _toy_model_np()
    s = heun_schedule(config, n)
    noise = np.random.default_rng(1).normal(size=(2, D)).astype(np.float32)
    x_init = (noise * np.float32(s.init_noise_sigma)).astype(np.float32)
    ref_xs, ref_x0s = _run_diffusers(config, n, x_init, w)
    # diffusers' own float32 rounding (vs its float64 run), per evaluation: Heun's correction
    # divides by the small sigma_to (Shap-E, 4 steps: 0.11, dt = -5.2), amplifying it ~50x
    exact_xs = _run_diffusers(config, n, x_init, w, torch.float64)[0]
    floor = 2 * np.abs(ref_xs - exact_xs).max(axis=(1, 2), keepdims=True)

    wj = jnp.asarray(w)
    final, xs, x0s = jax.jit(
        lambda x: heun_sample(
            lambda inp, t: jnp.tanh(inp @ wj + t * 0.001), x, s, config, return_all=True
        )
    )(jnp.asarray(x_init))
    assert xs.shape == x0s.shape == (2 * n - 1, 2, D)
    _close(xs, ref_xs, _sample_scale(x_init, ref_xs), floor)
    _close(xs, exact_xs, _sample_scale(x_init, ref_xs), floor)  # as close as diffusers' float32
    _close(x0s, ref_x0s, _sample_scale(x_init, ref_xs))
    np.testing.assert_array_equal(final, xs[-1])
    if config.clip_sample:
        assert np.abs(np.asarray(x0s)).max() <= config.clip_sample_range


def test_scan_traces_model_once_and_runs_any_dtype():
    """7 evaluations, one trace of denoise_fn; a second input reuses the compiled program;
    bfloat16 samples stay bfloat16 and follow the float32 run."""
    config, n = HeunConfig.shap_e(), 4
    s = heun_schedule(config, n)
    w = _toy_model_np()
    wj = jnp.asarray(w)
    traces = []

    def model(inp, t):
        traces.append(inp.dtype)
        assert t.dtype == jnp.float32 and t.shape == ()
        return jnp.tanh(inp @ wj.astype(inp.dtype) + t * 0.001)

    run = jax.jit(lambda x: heun_sample(model, x, s, config))
    rng = np.random.default_rng(2)
    for seed_x in (rng.normal(size=(2, D)), rng.normal(size=(2, D))):
        x_init = (seed_x * s.init_noise_sigma).astype(np.float32)
        final = run(jnp.asarray(x_init))
        ref_xs = _run_diffusers(config, n, x_init, w)[0]
        exact = _run_diffusers(config, n, x_init, w, torch.float64)[0][-1]
        _close(final, ref_xs[-1], floor=2 * np.abs(ref_xs[-1] - exact).max())
    assert traces == [jnp.float32]

    final_bf16 = run(jnp.asarray(x_init, jnp.bfloat16))
    assert final_bf16.dtype == jnp.bfloat16 and traces == [jnp.float32, jnp.bfloat16]
    np.testing.assert_allclose(np.asarray(final_bf16, np.float32), final, atol=0.05)


def test_num_inference_steps_validated():
    for bad in (0, -1, 2.5):
        with pytest.raises(UserError, match="num_inference_steps"):
            heun_schedule(HeunConfig.shap_e(), bad)
    with pytest.raises(UserError, match="first timestep"):  # "leading" with N > T: all t = 0
        heun_schedule(HeunConfig(num_train_timesteps=10, timestep_spacing="leading"), 20)


def test_config_from_dict_rejects_bad_keys_and_values():
    d = {"_class_name": "HeunDiscreteScheduler", "beta_schedule": "exp"}
    assert HeunConfig.from_dict(d).beta_schedule == "exp"
    with pytest.raises(UserError, match="'beta_shedule'"):
        HeunConfig.from_dict({"beta_shedule": "exp"})
    with pytest.raises(UserError, match="beta_schedule='cubic'"):
        HeunConfig.from_dict({"beta_schedule": "cubic"})
    with pytest.raises(UserError, match="prediction_type"):
        HeunConfig.from_dict({"prediction_type": "noise"})
    with pytest.raises(UserError, match="at most one"):
        HeunConfig.from_dict({"use_karras_sigmas": True, "use_beta_sigmas": True})


def test_config_from_folder(tmp_path):
    shap_e = HeunConfig.shap_e()
    _diffusers(shap_e).save_config(tmp_path)
    assert HeunConfig.from_folder(tmp_path) == shap_e
    other = HeunConfig(num_train_timesteps=50, trained_betas=tuple(np.linspace(1e-3, 0.2, 50)))
    _diffusers(other).save_config(tmp_path / "other")
    assert HeunConfig.from_folder(tmp_path / "other") == other
    with pytest.raises(UserError, match="scheduler_config.json"):
        HeunConfig.from_folder(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "scheduler_config.json").write_text("{not json")
    with pytest.raises(UserError, match="scheduler_config.json"):
        HeunConfig.from_folder(tmp_path / "bad")
