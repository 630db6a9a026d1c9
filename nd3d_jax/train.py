"""Trains NeuroDiff3D (or resumes a run) in WORKDIR.

    python -m nd3d_jax.train --config=configs/demo.py --workdir=out/demo
    python -m nd3d_jax.train --config=configs/neurodiff3d.py:dataset=pix3d --workdir=DIR \
        --config.data.data_dir=TFDS_DIR --config.weights_dir=WEIGHTS [--config.a.b=value ...]

One pure `train_step`, compiled ahead of time with explicit shardings over a ('data', 'fsdp')
mesh, state donated; the state is initialised sharded (`nd3d_jax.train_state`). WORKDIR gets
`config.json` and `run.json` (the resolved config, command line, versions, devices),
`checkpoints/` (orbax, with the grain iterator state; a rerun resumes from the latest, a
finished run returns at once), `tensorboard/`, `previews/step_*.png`, `metrics.json` and, at
the end, `params_final/` (orbax; the EMA of the trainable parameters when the EMA is on).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from nd3d_jax import optim, sharding, train_state
from nd3d_jax.checkpoint import Checkpointer, abstract_like, latest_step
from nd3d_jax.errors import UserError
from nd3d_jax.stages import get_stage

LOG = logging.getLogger("nd3d_jax.train")
PREVIEW_TILE = 128  # preview pixels per view, at least

# Dense bf16 peak FLOP/s per device, for MFU.
PEAK_FLOPS = {
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
}


def peak_flops(device) -> float | None:
    kind = getattr(device, "device_kind", "")
    for name, value in PEAK_FLOPS.items():
        if name.lower() in kind.lower():
            return value
    return None


def initialize_distributed(d: ml_collections.ConfigDict) -> None:
    """`jax.distributed.initialize()` when asked (or when JAX_COORDINATOR_ADDRESS is set):
    with an explicit coordinator address, process count and id, or auto-detected (SLURM,
    Open MPI, TPU pods, ...). CPU processes talk through `cpu_collectives` (gloo)."""
    if not (d.enabled or os.environ.get("JAX_COORDINATOR_ADDRESS")):
        return
    if d.cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", d.cpu_collectives)
    kwargs = {}
    if d.coordinator_address:
        kwargs = dict(
            coordinator_address=d.coordinator_address,
            num_processes=d.num_processes,
            process_id=d.process_id,
        )
    jax.distributed.initialize(**kwargs)


# ------------------------------------------------------------------------------------ step
def make_train_step(stage, tx, mask, optim_config, schedule):
    """The pure step: loss and grads (frozen leaves stop-gradient'ed), the optimizer update
    (accumulated over `grad_accum_steps` micro-steps), the EMA of the trainable leaves after
    each applied update, l2 norms; a non-finite step changes nothing and is counted."""
    accum = max(1, optim_config.grad_accum_steps)

    def train_step(state, batch):
        key = jax.random.fold_in(state["rng"], state["step"])

        # frozen leaves carry no gradient (XLA drops their backward)
        def loss_fn(params):
            params = jax.tree.map(lambda p, m: p if m else jax.lax.stop_gradient(p), params, mask)
            return stage.loss(params, batch, key)

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        grad_norm = optim.global_norm(jax.tree.map(lambda g, m: g if m else None, grads, mask))
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def keep(new, old):  # a non-finite step changes nothing (and is counted)
            return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)

        update = state["step"] // accum  # optimizer updates so far (the schedule's step)
        new = {
            "step": state["step"] + 1,
            "params": keep(params, state["params"]),
            "opt_state": keep(opt_state, state["opt_state"]),
            "rng": state["rng"],
            "skipped": state["skipped"] + (~finite).astype(jnp.int32),
        }
        if "ema" in state:
            applied = finite  # an update was applied (MultiSteps: its micro-step wrapped)
            if accum > 1:
                applied &= opt_state.mini_step == 0
            ema = optim.ema_update(state["ema"], params, mask, optim_config.ema_decay, update)
            new["ema"] = jax.tree.map(lambda a, b: jnp.where(applied, a, b), ema, state["ema"])
        metrics = {
            **aux,
            "l2_grads": grad_norm,
            "l2_params": optim.global_norm(state["params"]),
            "l2_updates": optim.global_norm(updates),
            "learning_rate": schedule(update),
            "skipped": new["skipped"],
        }
        return new, metrics

    return train_step


# ------------------------------------------------------------------------------------ main
def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs (or resumes) training; returns the final host metrics."""
    initialize_distributed(config.distributed)
    os.makedirs(workdir, exist_ok=True)
    log = LOG.info
    t = config.train
    stage = get_stage(config)  # config errors surface here, before any data or compile

    # mesh ----------------------------------------------------------------------------
    devices = jax.devices()[: config.mesh.num_devices or None]
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, devices)
    rules = tuple(tuple(r) for r in config.mesh.rules) or sharding.DEFAULT_RULES
    log("mesh %s over %d devices (%d processes)", dict(mesh.shape), jax.device_count(),
        jax.process_count())  # fmt: skip
    if config.data.batch_size % mesh.size:
        raise UserError(
            f"data.batch_size {config.data.batch_size} is not divisible by the {mesh.size} "
            "devices of the mesh (set --config.data.batch_size or --config.mesh.num_devices)"
        )

    # a finished run returns at once ----------------------------------------------------
    ckpt_dir = os.path.join(workdir, "checkpoints")
    latest = latest_step(ckpt_dir)
    if latest is not None and latest >= t.total_steps and _finished(workdir):
        log("%s already finished at step %d (train.total_steps=%d): nothing to do", workdir,
            latest, t.total_steps)  # fmt: skip
        with open(os.path.join(workdir, "metrics.json")) as f:
            return json.load(f)

    with jax.set_mesh(mesh):
        # input pipeline ------------------------------------------------------------------
        from data_pipelines.input_pipeline import train_iterator

        it = train_iterator(config, workdir)

        # model and state: sharded init, or restored straight into its shardings ----------
        ckpt = Checkpointer(ckpt_dir, t.checkpoint_every, t.keep_checkpoints)
        if latest is None:
            ts = train_state.create(stage, config, mesh, rules, log)
        else:
            ts = train_state.restore(stage, config, mesh, rules, ckpt, latest, it)
            log("resumed from step %d", latest)
        state, ts.state = ts.state, None  # the loop holds the only reference (donated)

        # compile -------------------------------------------------------------------------
        first = _next_batch(it)
        step_fn = make_train_step(stage, ts.tx, ts.mask, config.optim, ts.schedule)
        compiled = compile_step(step_fn, state, ts.shardings, first, mesh,
                                config.data.batch_size, log)  # fmt: skip
        _all_compiled()
        preview = _previewer(stage, config, mesh) if t.preview_every else None
        flops_per_step = stage.train_flops_per_example() * config.data.batch_size
        peak = peak_flops(jax.devices()[0])

        # loop ----------------------------------------------------------------------------
        stop = {"signal": None}
        previous = signal.signal(signal.SIGTERM, lambda sig, frame: stop.update(signal=sig))
        stopping = _stop_agreement(stop)
        writer = _writer(workdir)
        step = int(state["step"])
        pending, preview_batch, last = first, first, {}
        timer, timer_step = time.perf_counter(), step
        bar = _progress(t.total_steps, step)
        try:
            while step < t.total_steps:
                batch = sharding.global_batch(pending, mesh)
                state, metrics = compiled(state, batch)
                step += 1
                bar.update(1)
                if step % t.log_every == 0 or step == t.total_steps:
                    last = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    rate = (step - timer_step) / max(time.perf_counter() - timer, 1e-9)
                    last.update(steps_per_s=rate, examples_per_s=rate * config.data.batch_size)
                    if peak:
                        last["mfu"] = flops_per_step * rate / (peak * jax.device_count())
                    timer, timer_step = time.perf_counter(), step
                    bar.set_postfix_str(_postfix(last), refresh=False)
                    writer.write_scalars(step, last)
                    if not bar.interactive:
                        log("step %d/%d %s", step, t.total_steps, _postfix(last))
                    if last["skipped"] > 0:
                        log("step %d: %d non-finite steps skipped so far", step,
                            int(last["skipped"]))  # fmt: skip
                if preview and (step % t.preview_every == 0 or step == t.total_steps):
                    preview(state, preview_batch, workdir, step, writer)
                # the iterator has yielded exactly the batches of steps 1..step here:
                # checkpoint before fetching the next one (the fetch overlaps the next step);
                # the last step and a preempted one are always saved
                stop_now = stopping()
                if not ckpt.save(step, state, it) and (stop_now or step == t.total_steps):
                    ckpt.save(step, state, it, force=True)
                if stop_now:
                    log("SIGTERM at step %d: checkpoint saved, stopping", step)
                    break
                if step < t.total_steps:
                    pending = _next_batch(it)
        finally:
            signal.signal(signal.SIGTERM, previous)
            bar.close()
            ckpt.close()
            writer.flush()
        if step >= t.total_steps:
            _save_final(state, ts.mask, workdir)
    result = {"step": step, **last}
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "metrics.json"), "w") as f:
            json.dump(result, f, indent=1)
    return result


def _all_compiled() -> None:
    """Multi-process runs wait here until every process has compiled its step: the first
    collective sets up the CPU (gloo) context, which waits only 30 s for the other processes,
    and compile times differ by more on a loaded host. A coordination-service barrier."""
    if jax.process_count() > 1:
        from orbax.checkpoint import multihost

        multihost.sync_global_processes("nd3d_train_step_compiled", timeout=3600)


def _stop_agreement(stop: dict):
    """A function telling whether to stop after this step: a SIGTERM on any process stops
    every process at the same step (one tiny all-gather a step in multi-process runs)."""
    if jax.process_count() == 1:
        return lambda: stop["signal"] is not None
    from jax.experimental import multihost_utils

    def agreed() -> bool:
        flag = np.int32(stop["signal"] is not None)
        return bool(np.asarray(multihost_utils.process_allgather(flag)).any())

    return agreed


def _next_batch(it) -> dict:
    """The next host batch (a seam for the preemption tests)."""
    return next(it)


def _finished(workdir: str) -> bool:
    return all(
        os.path.exists(os.path.join(workdir, name)) for name in ("params_final", "metrics.json")
    )


def _postfix(m: dict) -> str:
    """The progress bar's fields: loss, l2 norms, learning rate, throughput, MFU."""
    parts = [f"loss={m['loss']:.4f}", f"lr={m['learning_rate']:.2e}",
             f"|g|={m['l2_grads']:.3g}", f"|p|={m['l2_params']:.4g}", f"|u|={m['l2_updates']:.3g}",
             f"{m['steps_per_s']:.2f} steps/s", f"{m['examples_per_s']:.1f} ex/s"]  # fmt: skip
    if "mfu" in m:
        parts.append(f"MFU {100 * m['mfu']:.1f}%")
    return " ".join(parts)


class _Progress:
    """tqdm on an interactive stderr (process 0); otherwise nothing (log lines instead), so
    logs written to files hold no escape codes."""

    def __init__(self, total: int, initial: int):
        self.interactive = sys.stderr.isatty() and jax.process_index() == 0
        self.bar = None
        if self.interactive:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True)

    def update(self, n: int) -> None:
        if self.bar:
            self.bar.update(n)

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        if self.bar:
            self.bar.set_postfix_str(s, refresh=refresh)

    def close(self) -> None:
        if self.bar:
            self.bar.close()


def _progress(total: int, initial: int) -> _Progress:
    return _Progress(total, initial)


def compile_step(step_fn, state, state_sh, host_batch, mesh, global_batch, log=LOG.info):
    """Ahead-of-time compiled step (state donated); logs compile time, FLOPs and memory."""
    batch_sh = sharding.batch_sharding(mesh)
    abstract_batch = {
        k: jax.ShapeDtypeStruct((global_batch, *v.shape[1:]), v.dtype, sharding=batch_sh)
        for k, v in host_batch.items()
    }
    t0 = time.perf_counter()
    jitted = jax.jit(
        step_fn, in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, None), donate_argnums=0
    )
    compiled = jitted.lower(abstract_like(state, state_sh), abstract_batch).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    xla_flops = float((cost or {}).get("flops", 0.0))
    mem = compiled.memory_analysis()
    log(
        "compiled train_step in %.1fs: %.3g GFLOP/step (XLA), temp %.1f MiB, args %.1f MiB",
        time.perf_counter() - t0,
        xla_flops / 1e9,
        getattr(mem, "temp_size_in_bytes", 0) / 2**20,
        getattr(mem, "argument_size_in_bytes", 0) / 2**20,
    )
    return compiled


def _save_final(state, mask, workdir: str) -> None:
    import orbax.checkpoint as ocp

    params = state["params"]
    if "ema" in state:  # the EMA of the trainable leaves, the frozen ones as they are
        params = optim.merge(params, state["ema"])
    path = os.path.join(os.path.abspath(workdir), "params_final")
    if os.path.exists(path) and jax.process_index() == 0:
        import shutil

        shutil.rmtree(path)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("params_final cleared")
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, params)
    LOG.info("wrote %s", path)


def _previewer(stage, config, mesh):
    """The preview function: the guided sampler jitted once, then a PNG per call (per row: the
    target grid, a sample, the rendered normal-map condition), upscaled to >= 128 px a view."""
    from PIL import Image

    n = config.train.preview_examples
    sample = jax.jit(
        lambda p, b, k: stage.sample(p, b, k, config.sample),
        out_shardings=sharding.replicated(mesh),
    )
    tile = config.model.tile_size
    zoom = max(1, -(-PREVIEW_TILE // tile))

    def preview(state, host_batch, workdir, step, writer) -> None:
        small = {k: v[:n] for k, v in host_batch.items()}
        if jax.process_count() > 1:  # every process samples process 0's examples
            from jax.experimental import multihost_utils

            small = multihost_utils.broadcast_one_to_all(small)
        params = state["params"]
        if "ema" in state:
            params = optim.merge(params, state["ema"])
        out = jax.device_get(sample(params, small, jax.random.PRNGKey(step)))
        rows = [
            np.concatenate([out["target"][i], out["sample"][i], out["normals"][i]], axis=1)
            for i in range(len(out["sample"]))
        ]
        image = (np.concatenate(rows, axis=0) * 255).round().astype(np.uint8)
        image = image.repeat(zoom, axis=0).repeat(zoom, axis=1)
        path = os.path.join(workdir, "previews", f"step_{step:06d}.png")
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            Image.fromarray(image).save(path)
        writer.write_images(step, {"preview": image[None]})

    return preview


class _Writer:
    """TensorBoard event files (process 0), written with tensorboardX (no TensorFlow import
    on the training path)."""

    def __init__(self, workdir: str):
        from tensorboardX import SummaryWriter

        self.w = SummaryWriter(logdir=os.path.join(workdir, "tensorboard"), flush_secs=30)

    def write_scalars(self, step, scalars):
        for k, v in scalars.items():
            self.w.add_scalar(k, v, step)

    def write_images(self, step, images):
        for k, v in images.items():  # (1, H, W, 3) uint8
            self.w.add_image(k, v[0], step, dataformats="HWC")

    def flush(self):
        self.w.flush()


class _NoWriter:
    def write_scalars(self, *a):
        pass

    def write_images(self, *a):
        pass

    def flush(self):
        pass


def _writer(workdir: str):
    return _Writer(workdir) if jax.process_index() == 0 else _NoWriter()


def main(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Trains the config's stage in WORKDIR (resuming from its latest checkpoint)."""
    train(config, workdir)


# `cli.run` options of this command (every value is checked by nd3d_jax.config_schema's
# train schema before `main`); tests run it in-process with `run(other_main, **CLI)`
CLI = dict(command="train")

if __name__ == "__main__":
    from nd3d_jax.cli import run

    run(main, **CLI)
