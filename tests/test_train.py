"""The trainer end to end on the tiny demo config: files, resume, parallelism, SIGTERM, errors."""

from __future__ import annotations

import os
import signal

import jax
import numpy as np
import pytest

from nd3d_jax import train as train_lib
from nd3d_jax.config_cli import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(prepared, **overrides):
    c = load_config(os.path.join(ROOT, "configs/demo.py:tiny"))
    c.data.synthetic_objects = 0
    c.data.data_dir = prepared["data_dir"]
    c.data.num_threads = 1
    c.optim.total_steps = 6
    c.train.total_steps = 3
    c.train.checkpoint_every = 3
    for key, value in overrides.items():
        node = c
        *path, leaf = key.split(".")
        for p in path:
            node = node[p]
        node[leaf] = value
    return c


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


@pytest.fixture(scope="module")
def reference(prepared, tmp_path_factory):
    """6 uninterrupted steps on 8 data-parallel devices."""
    workdir = str(tmp_path_factory.mktemp("reference"))
    metrics = train_lib.train(_config(prepared, **{"train.total_steps": 6}), workdir)
    return workdir, metrics


def test_run_writes_checkpoints_logs_and_final_params(reference):
    workdir, metrics = reference
    assert metrics["step"] == 6 and np.isfinite(metrics["loss"]) and metrics["skipped"] == 0
    assert {"l2_grads", "l2_params", "l2_updates", "learning_rate", "examples_per_s"} <= set(
        metrics
    )
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints")))[-1] == "6"
    assert any(
        f.startswith("events.out.tfevents")
        for f in os.listdir(os.path.join(workdir, "tensorboard"))
    )
    params = _final(workdir)
    assert set(params) == {"conditioning", "unet", "adapter"}


def test_resume_after_a_stop_is_bit_identical(prepared, reference, tmp_path):
    workdir = str(tmp_path)
    first = train_lib.train(_config(prepared), workdir)  # ends at step 3 (checkpoint 3)
    assert first["step"] == 3
    second = train_lib.train(_config(prepared, **{"train.total_steps": 6}), workdir)
    assert second["step"] == 6
    _assert_trees(_final(workdir), _final(reference[0]))


def test_data_parallel_and_fsdp_match_one_device(prepared, tmp_path):
    runs = {}
    for name, mesh in {"one": (1, 1, 1), "fsdp": (2, 4, 8)}.items():
        data, fsdp, n = mesh
        c = _config(prepared, **{"mesh.data": data, "mesh.fsdp": fsdp, "mesh.num_devices": n})
        runs[name] = train_lib.train(c, str(tmp_path / name))
    np.testing.assert_allclose(runs["one"]["loss"], runs["fsdp"]["loss"], rtol=1e-5)
    _assert_trees(
        _final(str(tmp_path / "one")), _final(str(tmp_path / "fsdp")), rtol=1e-5, atol=1e-5
    )


def test_fsdp_parameter_shardings(prepared):
    from nd3d_jax import sharding
    from nd3d_jax.stages import get_stage

    c = _config(prepared)
    stage = get_stage(c)
    mesh = sharding.make_mesh(2, 4)
    shardings = sharding.param_shardings(stage.abstract_params(), mesh)
    conv = shardings["unet"]["conv_in"]["kernel"].spec  # (3, 3, 3, 16): conv_out over fsdp
    assert tuple(conv) == (None, None, None, "fsdp")
    dense = shardings["conditioning"]["prior_alignment"]["fc"]["kernel"].spec  # (prior, embed)
    assert tuple(dense) == (None, "fsdp")
    odd = shardings["unet"]["conv_out"]["kernel"].spec  # 3 output channels: replicated
    assert tuple(odd) == (None, None, None, None)


def test_sigterm_saves_stops_and_resumes_exactly(prepared, reference, tmp_path, monkeypatch):
    from nd3d_jax.stages import neurodiff3d

    calls = {"n": 0}
    original = neurodiff3d.NeuroDiff3D.host_batch

    def host_batch(self, batch, tokenizer):
        calls["n"] += 1
        if calls["n"] == 3:  # while fetching step 3's batch
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, batch, tokenizer)

    monkeypatch.setattr(neurodiff3d.NeuroDiff3D, "host_batch", host_batch)
    c = _config(prepared, **{"train.total_steps": 100, "train.checkpoint_every": 50})
    metrics = train_lib.train(c, str(tmp_path))
    assert metrics["step"] == 3  # the step in flight finishes, is saved, and the run stops
    assert "3" in os.listdir(tmp_path / "checkpoints")
    monkeypatch.setattr(neurodiff3d.NeuroDiff3D, "host_batch", original)
    train_lib.train(_config(prepared, **{"train.total_steps": 6}), str(tmp_path))
    _assert_trees(_final(str(tmp_path)), _final(reference[0]))  # the data stream resumed exactly


@pytest.mark.parametrize(
    "overrides, error",
    [
        ({"stage": "nope"}, "unknown stage 'nope'"),
        ({"model.clip.path": "/nonexistent/clip"}, "has no config.json"),
        ({"data.data_dir": "/nonexistent/data"}, "does not exist"),
        ({"data.split": "validation"}, "no split 'validation'"),
        ({"data.batch_size": 4}, "batch_size 4 is not divisible by the 8 devices"),
        (
            {"model.unet.config.cross_attention_dim": 16, "model.context_projection": False},
            "cross_attention_dim 16 != CLIP projection",
        ),
    ],
)
def test_bad_input_fails_before_compiling(prepared, tmp_path, overrides, error):
    with pytest.raises((ValueError, FileNotFoundError), match=error):
        train_lib.train(_config(prepared, **overrides), str(tmp_path))
    assert not os.path.exists(tmp_path / "checkpoints")


def test_pix3d_config_trains_with_masked_views(prepared, tmp_path):
    """Pix3D: one photo in grid slot 0, the other slots out of the loss."""
    c = load_config(os.path.join(ROOT, "configs/neurodiff3d_pix3d.py:tiny"))
    c.data.data_dir = prepared["data_dir"]
    c.data.batch_size = 8
    c.data.num_threads = 1
    c.optim.total_steps = c.train.total_steps = 2
    c.train.preview_every = 2
    c.train.preview_examples = 2
    c.train.preview_steps = 2
    metrics = train_lib.train(c, str(tmp_path))
    assert metrics["step"] == 2 and np.isfinite(metrics["loss"])
    assert metrics["view_fraction"] == 0.25  # 1 of the 4 grid slots is a real view
    previews = os.listdir(tmp_path / "previews")
    assert previews == ["step_000002.png"]
    from PIL import Image

    image = np.asarray(Image.open(tmp_path / "previews" / previews[0]))
    assert image.shape == (2 * 64, 3 * 64, 3)  # 2 examples x (target | sample | normals)


def test_paper_configs_build(prepared):
    """The paper-size variant builds its stage (shapes only) with the paper's widths."""
    from flax import linen as nn

    from nd3d_jax.stages import get_stage

    stage = get_stage(load_config(os.path.join(ROOT, "configs/neurodiff3d_omniobject3d.py:random")))
    assert stage.grid_size == 512 and stage.latent_size == 64
    shapes = nn.unbox(stage.abstract_params())
    assert shapes["conditioning"]["prior_alignment"]["fc"]["kernel"].shape == (384, 512)
    assert shapes["context_proj"]["kernel"].shape == (512, 768)


def test_two_processes_match_one(prepared, reference, tmp_path):
    """2 processes x 4 CPU devices (gloo over loopback) train together and end where the
    single-process 8-device run ends: each reads its block of every global batch."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    workdir = str(tmp_path / "two")
    args = [
        sys.executable, "-m", "nd3d_jax.train", "--config=configs/demo.py:tiny",
        f"--workdir={workdir}", "--config.data.synthetic_objects=0",
        f"--config.data.data_dir={prepared['data_dir']}", "--config.data.num_threads=1",
        "--config.optim.total_steps=6", "--config.train.total_steps=6",
        "--config.train.checkpoint_every=3", "--config.distributed.enabled=True",
        f"--config.distributed.coordinator_address=localhost:{port}",
        "--config.distributed.num_processes=2",
    ]  # fmt: skip
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "4",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}  # fmt: skip
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


def test_resume_onto_another_mesh(prepared, reference, tmp_path):
    """Checkpoint written on 8 data-parallel devices, resumed on a 2 x 4 (data, fsdp) mesh."""
    workdir = str(tmp_path)
    train_lib.train(_config(prepared), workdir)
    fsdp = {"train.total_steps": 6, "mesh.data": 2, "mesh.fsdp": 4}
    assert train_lib.train(_config(prepared, **fsdp), workdir)["step"] == 6
    _assert_trees(_final(workdir), _final(reference[0]), rtol=1e-5, atol=1e-5)


def test_non_finite_steps_change_nothing_and_are_counted():
    import jax.numpy as jnp
    import optax

    class Stage:
        def loss(self, params, batch, key):
            loss = jnp.sum(params["w"] * batch["x"])
            return loss, {"loss": loss}

    params = {"w": jnp.ones(3)}
    mask = {"w": True}
    tx = optax.adam(0.1)
    step = jax.jit(train_lib.make_train_step(Stage(), tx, mask, 0.9, lambda s: 0.1))
    state = {"step": jnp.int32(0), "params": params, "opt_state": tx.init(params),
             "rng": jax.random.PRNGKey(0), "skipped": jnp.int32(0), "ema": params}  # fmt: skip
    good, _ = step(state, {"x": jnp.ones(3)})
    assert not np.allclose(good["params"]["w"], 1.0) and int(good["skipped"]) == 0
    bad, metrics = step(good, {"x": jnp.array([1.0, jnp.nan, 1.0])})
    assert int(bad["skipped"]) == 1 and int(bad["step"]) == 2 and np.isnan(metrics["loss"])
    for key in ("params", "opt_state", "ema"):
        _assert_trees(bad[key], good[key])


def test_sigkill_at_a_random_step_then_restart_is_bit_identical(prepared, reference, tmp_path):
    """A run killed with SIGKILL somewhere after its first checkpoint, restarted with the same
    command, ends bit-identical to the uninterrupted run."""
    import random
    import subprocess
    import sys
    import time

    workdir = str(tmp_path / "killed")
    cmd = [
        sys.executable, "-m", "nd3d_jax.train", "--config=configs/demo.py:tiny",
        f"--workdir={workdir}", "--config.data.synthetic_objects=0",
        f"--config.data.data_dir={prepared['data_dir']}", "--config.data.num_threads=1",
        "--config.optim.total_steps=6", "--config.train.total_steps=6",
        "--config.train.checkpoint_every=2",
    ]  # fmt: skip
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
