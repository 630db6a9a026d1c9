"""Session fixtures for generation: a tiny trained-model workdir and coarse-mesh inputs.

The workdir is what `python -m nd3d_jax.train --config=configs/demo.py:tiny` leaves (its
config.json and params_final/), with the model's initial parameters: the pipeline's mechanics
do not depend on how far training went, and no test waits for a trainer run.
"""

from __future__ import annotations

import os

import pytest

from data_pipelines.export_examples import write_synthetic_inputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_model_workdir(workdir: str, seed: int = 0) -> str:
    """The tiny demo model's workdir at its random init (drawn on the host: nothing compiles)."""
    from benchmarks.generate import tiny_model_workdir

    return tiny_model_workdir(workdir, seed)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    return write_model_workdir(str(tmp_path_factory.mktemp("tiny_model")))


@pytest.fixture(scope="session")
def object_inputs(tmp_path_factory) -> list[dict]:
    folder = str(tmp_path_factory.mktemp("object_inputs"))
    return write_synthetic_inputs(folder, ("chair", "mug", "sofa", "table"))
