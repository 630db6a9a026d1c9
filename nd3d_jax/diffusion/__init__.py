"""Schedules, forward noising and the eq 3 loss; DDPM (eq 14) and DDIM samplers; guidance."""

from nd3d_jax.diffusion.samplers import (
    classifier_free_guidance,
    ddim_step,
    ddpm_step,
    ddpm_variance,
    per_example_keys,
    predict_x0_eps,
    sample,
    timesteps,
)
from nd3d_jax.diffusion.schedules import (
    Schedule,
    ScheduleConfig,
    diffusion_loss,
    make_schedule,
    q_sample,
    training_target,
)

__all__ = [
    "Schedule",
    "ScheduleConfig",
    "classifier_free_guidance",
    "ddim_step",
    "ddpm_step",
    "ddpm_variance",
    "diffusion_loss",
    "make_schedule",
    "per_example_keys",
    "predict_x0_eps",
    "q_sample",
    "sample",
    "timesteps",
    "training_target",
]
