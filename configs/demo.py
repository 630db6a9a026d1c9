"""The main job on built-in data (`python -m nd3d_jax.train --config=configs/demo.py ...`).

A synthetic OmniObject3D-layout data set (procedural coloured objects, 4 rendered views each)
is generated and prepared into WORKDIR/data on first use; tiny random networks learn to denoise
the 2 x 2 view grid in pixel space (no VAE), conditioned on the rendered normal and colour maps
and the caption. A few minutes on 2 CPU cores; previews in WORKDIR/previews.
Argument `variant=tiny` (or `:tiny`) is what the tests run: 6 steps, 8 objects.
"""

from __future__ import annotations

import ml_collections

from configs.neurodiff3d import base_config, tiny_models
from nd3d_jax.config_cli import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a = parse_arg(arg, variant=("demo", "tiny"))
    c = base_config()
    tiny_models(c)
    c.data.dataset = "omniobject3d"
    c.data.synthetic_objects = 32  # 28 train, 4 held-out test shapes (make demo generates those)
    c.data.batch_size = 8
    c.optim.lr = 2e-3
    c.optim.warmup_steps = 20
    c.optim.weight_decay = 0.0
    c.optim.ema_decay = 0.0
    c.train.total_steps = 300
    # DDPM's linear schedule: over 1000 steps it ends at pure noise (abar_T ~ 4e-5), which
    # the sampler starts from (over 200 steps it would end at abar_T ~ 0.13)
    c.schedule.num_train_timesteps = 1000
    c.schedule.beta_schedule = "linear"
    c.schedule.beta_start = 1e-4
    c.schedule.beta_end = 0.02
    # a tiny pixel-space model: predicting x_0 keeps high-noise predictions on the image scale
    c.schedule.prediction_type = "sample"
    c.sample.num_steps = 25
    c.sample.guidance = 2.0
    c.sample.clip = 1.0
    c.train.log_every = 10
    c.train.checkpoint_every = 100
    c.train.preview_every = 100
    c.train.preview_examples = 4
    if a.variant == "tiny":
        c.data.synthetic_objects = 8
        c.data.batch_size = 8
        c.train.total_steps = 6
        c.optim.warmup_steps = 2
        c.train.log_every = 1
        c.train.checkpoint_every = 3
        c.train.preview_every = 0
        c.sample.num_steps = 2
    return c
