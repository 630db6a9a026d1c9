"""The trainer end to end on the tiny demo config: files, resume, parallelism, signals, errors.

Every run here uses the same model, optimizer and schedule (`demo.py:tiny`, 6 steps), so the
persistent compilation cache (tests/conftest.py) compiles each mesh's programs once: the
8-device data-parallel mesh, the 2 x 4 (data, fsdp) mesh and the two-process mesh.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from test_sharded_init import assert_optimizer_follows_params

from nd3d_jax import train as train_lib
from nd3d_jax.config_cli import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 6


def _config(prepared, **overrides):
    c = load_config(os.path.join(ROOT, "configs/demo.py:variant=tiny"))
    c.data.synthetic_objects = 0
    c.data.data_dir = prepared["data_dir"]
    c.data.num_threads = 1
    c.train.total_steps = STEPS
    c.train.checkpoint_every = 3
    for key, value in overrides.items():
        node = c
        *path, leaf = key.split(".")
        for p in path:
            node = node[p]
        node[leaf] = value
    return c


def _cli(prepared, workdir, *extra):
    return [
        sys.executable, "-m", "nd3d_jax.train", "--config=configs/demo.py:variant=tiny",
        f"--workdir={workdir}", "--config.data.synthetic_objects=0",
        f"--config.data.data_dir={prepared['data_dir']}", "--config.data.num_threads=1",
        f"--config.train.total_steps={STEPS}", *extra,
    ]  # fmt: skip


def _final(workdir):
    from nd3d_jax.checkpoint import load_params

    return load_params(os.path.join(workdir, "params_final"))


def _assert_trees(a, b, **tol):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        if tol:
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol)
        else:
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _stop_at(monkeypatch, fetch: int):
    """SIGTERM while the trainer fetches its `fetch`-th batch (a preemption)."""
    calls = {"n": 0}
    original = train_lib._next_batch

    def next_batch(it):
        calls["n"] += 1
        if calls["n"] == fetch:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(it)

    monkeypatch.setattr(train_lib, "_next_batch", next_batch)


@pytest.fixture(scope="module")
def reference(prepared, tmp_path_factory):
    """6 uninterrupted steps on 8 data-parallel devices."""
    workdir = str(tmp_path_factory.mktemp("reference"))
    metrics = train_lib.train(_config(prepared), workdir)
    return workdir, metrics


@pytest.fixture(scope="module")
def stopped(prepared, tmp_path_factory):
    """A run preempted by SIGTERM at step 3: the step in flight finishes and is saved."""
    workdir = str(tmp_path_factory.mktemp("stopped"))
    with pytest.MonkeyPatch.context() as mp:
        _stop_at(mp, 3)  # while fetching step 3's batch
        metrics = train_lib.train(_config(prepared, **{"train.checkpoint_every": 50}), workdir)
    return workdir, metrics


def test_run_writes_checkpoints_logs_and_final_params(reference):
    workdir, metrics = reference
    assert metrics["step"] == STEPS and np.isfinite(metrics["loss"]) and metrics["skipped"] == 0
    assert {"l2_grads", "l2_params", "l2_updates", "learning_rate", "examples_per_s"} <= set(
        metrics
    )
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints")))[-1] == str(STEPS)
    assert any(
        f.startswith("events.out.tfevents")
        for f in os.listdir(os.path.join(workdir, "tensorboard"))
    )
    params = _final(workdir)
    assert set(params) == {"conditioning", "unet", "adapter"}


def test_sigterm_saves_stops_and_resumes_bit_identically(prepared, reference, stopped, tmp_path):
    assert stopped[1]["step"] == 3
    assert max(map(int, os.listdir(os.path.join(stopped[0], "checkpoints")))) == 3
    assert not os.path.exists(os.path.join(stopped[0], "params_final"))
    workdir = str(tmp_path / "resumed")
    shutil.copytree(stopped[0], workdir)
    assert train_lib.train(_config(prepared), workdir)["step"] == STEPS
    _assert_trees(_final(workdir), _final(reference[0]))  # the data stream resumed exactly


def test_resume_onto_another_mesh(prepared, reference, stopped, tmp_path):
    """Checkpoint written on 8 data-parallel devices, resumed on a 2 x 4 (data, fsdp) mesh: the
    same final parameters and loss as the data-parallel run (an init on that mesh draws the same
    values: test_neurodiff3d_model's host_init test)."""
    workdir = str(tmp_path / "fsdp")
    shutil.copytree(stopped[0], workdir)
    metrics = train_lib.train(_config(prepared, **{"mesh.data": 2, "mesh.fsdp": 4}), workdir)
    assert metrics["step"] == STEPS
    np.testing.assert_allclose(metrics["loss"], reference[1]["loss"], rtol=1e-5)
    _assert_trees(_final(workdir), _final(reference[0]), rtol=1e-5, atol=1e-5)


def test_fsdp_parameter_and_optimizer_shardings(prepared):
    from nd3d_jax import sharding, train_state
    from nd3d_jax.stages import get_stage

    c = _config(prepared, **{"optim.ema_decay": 0.99})
    mesh = sharding.make_mesh(2, 4)
    _, sh, _, mask, _ = train_state.abstract_state(get_stage(c), c, mesh, sharding.DEFAULT_RULES)
    p = sh["params"]
    assert tuple(p["unet"]["conv_in"]["kernel"].spec) == (None, None, None, "fsdp")
    assert tuple(p["conditioning"]["prior_alignment"]["fc"]["kernel"].spec) == (None, "fsdp")
    assert tuple(p["unet"]["conv_out"]["kernel"].spec) == (None, None, None, None)  # 3 outputs
    assert_optimizer_follows_params(sh, mask)
    # the EMA holds the trainable leaves only (CLIP and the frozen ResNet layers are not copied)
    assert "clip" not in sh["ema"]["conditioning"]
    n_ema, n_trainable = len(jax.tree.leaves(sh["ema"])), sum(jax.tree.leaves(mask))
    assert n_ema == n_trainable < len(jax.tree.leaves(p))


def test_finished_run_returns_without_compiling(prepared, reference, monkeypatch, caplog):
    def no_compile(*a, **k):
        raise AssertionError("a finished run compiled")

    monkeypatch.setattr(train_lib, "compile_step", no_compile)
    monkeypatch.setattr(train_lib.train_state, "create", no_compile)
    with caplog.at_level("INFO", logger="nd3d_jax.train"):
        assert train_lib.train(_config(prepared), reference[0])["step"] == STEPS
    assert "already finished at step 6" in caplog.text


@pytest.mark.parametrize(
    "overrides, error",
    [
        ({"stage": "nope"}, "unknown stage 'nope'"),
        ({"model.clip.path": "/nonexistent/clip"}, "weights folder '/nonexistent/clip'"),
        ({"data.data_dir": "/nonexistent/data"}, "--config.data.data_dir"),
        ({"data.split": "validation"}, "no split 'validation'"),
        ({"data.batch_size": 4}, "batch_size 4 is not divisible by the 8 devices"),
        (
            {"model.unet.config.cross_attention_dim": 16, "model.context_projection": False},
            "cross_attention_dim 16 != CLIP projection",
        ),
    ],
)
def test_bad_input_fails_before_compiling(prepared, tmp_path, monkeypatch, overrides, error):
    from nd3d_jax.errors import UserError

    monkeypatch.setattr(train_lib, "compile_step", lambda *a, **k: pytest.fail("compiled"))
    with pytest.raises(UserError, match=error):
        train_lib.train(_config(prepared, **overrides), str(tmp_path))
    assert not os.path.exists(tmp_path / "checkpoints")


def test_pix3d_trains_with_masked_views_and_previews(prepared, tmp_path):
    """Pix3D: one photo in grid slot 0, the other slots out of the loss; same model and
    optimizer as the reference (the compiled step is reused), previews of 128 px a view."""
    c = _config(prepared, **{"data.dataset": "pix3d", "train.preview_every": 6,
                             "train.preview_examples": 2})  # fmt: skip
    metrics = train_lib.train(c, str(tmp_path))
    assert metrics["step"] == STEPS and np.isfinite(metrics["loss"])
    assert metrics["view_fraction"] == 0.25  # 1 of the 4 grid slots is a real view
    previews = os.listdir(tmp_path / "previews")
    assert previews == [f"step_{STEPS:06d}.png"]
    from PIL import Image

    image = np.asarray(Image.open(tmp_path / "previews" / previews[0]))
    tile = c.model.tile_size * c.model.grid_cols * (128 // c.model.tile_size)
    assert image.shape == (2 * tile, 3 * tile, 3)  # 2 examples x (target | sample | normals)
    assert image.std() > 0


def test_two_processes_match_one(prepared, reference, tmp_path):
    """2 processes x 4 CPU devices (gloo over loopback) train together and end where the
    single-process 8-device run ends: each reads its block of every global batch."""
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    workdir = str(tmp_path / "two")
    args = _cli(prepared, workdir, "--config.distributed.enabled=True",
                f"--config.distributed.coordinator_address=localhost:{port}",
                "--config.distributed.num_processes=2", "--verbosity=info",
                "--config.train.checkpoint_every=100")  # fmt: skip
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "4",
           "XLA_FLAGS": os.environ["XLA_FLAGS"].replace("count=8", "count=4")}  # fmt: skip
    procs = [
        subprocess.Popen([*args, f"--config.distributed.process_id={i}"], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]  # fmt: skip
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
    assert "over 8 devices (2 processes)" in outputs[0]
    _assert_trees(_final(workdir), _final(reference[0]), rtol=1e-5, atol=1e-5)


def test_non_finite_steps_change_nothing_and_are_counted():
    import jax.numpy as jnp
    import ml_collections
    import optax

    class Stage:
        def loss(self, params, batch, key):
            loss = jnp.sum(params["w"] * batch["x"])
            return loss, {"loss": loss}

    params = {"w": jnp.ones(3)}
    mask = {"w": True}
    tx = optax.adam(0.1)
    optim_config = ml_collections.ConfigDict(dict(grad_accum_steps=1, ema_decay=0.9))
    step = jax.jit(train_lib.make_train_step(Stage(), tx, mask, optim_config, lambda s: 0.1))
    state = {"step": jnp.int32(0), "params": params, "opt_state": tx.init(params),
             "rng": jax.random.PRNGKey(0), "skipped": jnp.int32(0), "ema": params}  # fmt: skip
    good, _ = step(state, {"x": jnp.ones(3)})
    assert not np.allclose(good["params"]["w"], 1.0) and int(good["skipped"]) == 0
    bad, metrics = step(good, {"x": jnp.array([1.0, jnp.nan, 1.0])})
    assert int(bad["skipped"]) == 1 and int(bad["step"]) == 2 and np.isnan(metrics["loss"])
    for key in ("params", "opt_state", "ema"):
        _assert_trees(bad[key], good[key])


def test_sigkill_then_restart_is_bit_identical(prepared, reference, tmp_path):
    """A run killed with SIGKILL somewhere after its first checkpoint, restarted with the same
    command, ends bit-identical to the uninterrupted run (a finished run returning at once:
    `test_finished_run_returns_without_compiling`). The workdir holds the resolved config and
    run info."""
    import json
    import random
    import time

    workdir = str(tmp_path / "killed")
    cmd = _cli(prepared, workdir, "--config.train.checkpoint_every=2", "--verbosity=info")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    first = os.path.join(workdir, "checkpoints", "2")
    deadline = time.time() + 600
    while not os.path.isdir(first) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(random.uniform(0.0, 0.5))  # somewhere after step 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL  # killed mid-run, not finished
    assert not os.path.exists(os.path.join(workdir, "params_final"))
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    _assert_trees(_final(workdir), _final(reference[0]))
    saved = json.load(open(os.path.join(workdir, "config.json")))
    assert saved["train"]["total_steps"] == STEPS and saved["model"]["tile_size"] == 32
    assert "nd3d_jax.train" in json.load(open(os.path.join(workdir, "run.json")))["command_line"]
