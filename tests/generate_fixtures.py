"""Session fixtures for generation: a tiny trained-model workdir and coarse-mesh inputs.

The workdir is what `python -m nd3d_jax.train --config=configs/demo.py:tiny` leaves (its
config.json and params_final/), with the model's initial parameters: the pipeline's mechanics
do not depend on how far training went, and no test waits for a trainer run.
"""

from __future__ import annotations

import os

import flax.linen as nn
import jax
import pytest

from data_pipelines.export_examples import write_synthetic_inputs
from nd3d_jax.config_cli import config_to_json, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_model_workdir(workdir: str, seed: int = 0) -> str:
    import orbax.checkpoint as ocp

    from nd3d_jax.stages.neurodiff3d import NeuroDiff3DStage

    config = load_config(os.path.join(ROOT, "configs/demo.py:tiny"))
    stage = NeuroDiff3DStage(config)
    # one jitted program (cached across test processes), not one per parameter
    params = jax.jit(lambda key: nn.unbox(stage.init(key)))(jax.random.key(seed))
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config_to_json(config) + "\n")
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.abspath(os.path.join(workdir, "params_final")), params)
    return workdir


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    return write_model_workdir(str(tmp_path_factory.mktemp("tiny_model")))


@pytest.fixture(scope="session")
def object_inputs(tmp_path_factory) -> list[dict]:
    folder = str(tmp_path_factory.mktemp("object_inputs"))
    return write_synthetic_inputs(folder, ("chair", "mug", "sofa", "table"))
