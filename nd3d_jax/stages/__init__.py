"""Training stages, keyed by `config.stage` (the 3D prior stages join here later)."""

from __future__ import annotations

import importlib

from nd3d_jax.errors import UserError

STAGES = {"neurodiff3d": "nd3d_jax.stages.neurodiff3d:NeuroDiff3DStage"}


def get_stage(config):
    if config.stage not in STAGES:
        raise UserError(f"unknown stage {config.stage!r}; available: {', '.join(sorted(STAGES))}")
    module, _, name = STAGES[config.stage].partition(":")
    return getattr(importlib.import_module(module), name)(config)
