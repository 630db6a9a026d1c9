"""`python -m nd3d_jax.train --config=configs/X.py[:variant] --workdir=DIR [--config.a.b=v ...]`

One pure `train_step`, compiled ahead of time with explicit shardings over a ('data', 'fsdp')
mesh, state donated. The workdir gets `checkpoints/` (orbax, with the grain iterator state;
a rerun resumes from the latest), `tensorboard/`, `previews/step_*.png` and, at the end,
`params_final/` (orbax; the EMA parameters when the EMA is on).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from nd3d_jax import optim, sharding
from nd3d_jax.checkpoint import Checkpointer, abstract_like
from nd3d_jax.stages import get_stage

LOG = logging.getLogger("nd3d_jax.train")

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


# ------------------------------------------------------------------------------------ input
def input_pipeline(config: ml_collections.ConfigDict, workdir: str):
    """(grain iterator over this process's shard, tokenizer); synthetic data is generated
    and prepared into `data.cache_dir` on first use."""
    from data_pipelines.loader import data_source, dataset_path, make_iterator
    from nd3d_jax.weights import CLIPTokenizer

    d = config.data
    data_dir = d.data_dir
    if d.synthetic_objects:
        data_dir = _synthetic(d, os.path.expanduser(d.cache_dir or os.path.join(workdir, "data")))
    if not data_dir or not os.path.isdir(data_dir):
        raise FileNotFoundError(
            f"data.data_dir {data_dir!r} does not exist; run data_pipelines.prepare"
        )
    try:
        dataset_path(data_dir, d.dataset, d.config_name)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{data_dir}: no prepared {d.dataset}/{d.config_name} ({e})") from e
    source = data_source(data_dir, d.dataset, d.split, d.config_name)
    if len(source) == 0:
        raise ValueError(f"{d.dataset} split {d.split!r} in {data_dir} is empty")
    per_process = d.batch_size // jax.process_count()
    if per_process * jax.process_count() != d.batch_size:
        raise ValueError(
            f"batch_size {d.batch_size} not divisible by {jax.process_count()} processes"
        )
    it = make_iterator(
        source,
        batch_size=per_process,
        train=True,
        seed=config.seed,
        num_threads=d.num_threads,
        max_faces=d.max_faces,
        num_sampled_faces=config.model.num_sampled_faces,
    )
    m = config.model
    tok_path = m.tokenizer_path or m.clip.path
    if not tok_path:
        from nd3d_jax.weights.tiny_tokenizer import write_tiny_tokenizer

        tok_path = os.path.join(data_dir, "tiny_tokenizer")
        if not os.path.isdir(tok_path):
            write_tiny_tokenizer(tok_path)
    return it, CLIPTokenizer(tok_path, max_length=m.text_length)


def _synthetic(d, cache: str) -> str:
    from data_pipelines.prepare import prepare
    from data_pipelines.synthetic.__main__ import main as write_synthetic

    manual = os.path.join(cache, f"{d.dataset}_{d.synthetic_objects}")
    data_dir = os.path.join(cache, "tfds")
    if not os.path.isdir(manual):
        LOG.info("writing a synthetic %s data set to %s", d.dataset, manual)
        write_synthetic(
            [f"--layout={d.dataset}", f"--out={manual}", f"--num_objects={d.synthetic_objects}"]
        )
    if not os.path.isdir(os.path.join(data_dir, d.dataset, d.config_name)):
        prepare(d.dataset, manual, data_dir, config=d.config_name, log=LOG.info)
    return data_dir


# ------------------------------------------------------------------------------------ step
def make_train_step(stage, tx, mask, ema_decay: float, schedule):
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

        new = {
            "step": state["step"] + 1,
            "params": keep(params, state["params"]),
            "opt_state": keep(opt_state, state["opt_state"]),
            "rng": state["rng"],
            "skipped": state["skipped"] + (~finite).astype(jnp.int32),
        }
        if "ema" in state:
            new["ema"] = keep(optim.ema_update(state["ema"], params, mask, ema_decay), state["ema"])
        metrics = {
            **aux,
            "l2_grads": grad_norm,
            "l2_params": optim.global_norm(state["params"]),
            "l2_updates": optim.global_norm(updates),
            "learning_rate": schedule(state["step"]),
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
    stage = get_stage(config)  # config errors surface here, before any data or compile

    # mesh --------------------------------------------------------------------------
    devices = jax.devices()[: config.mesh.num_devices or None]
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, devices)
    rules = tuple(tuple(r) for r in config.mesh.rules) or sharding.DEFAULT_RULES
    log(
        "mesh %s over %d devices (%d processes)",
        dict(mesh.shape),
        jax.device_count(),
        jax.process_count(),
    )

    if config.data.batch_size % mesh.size:
        raise ValueError(
            f"data.batch_size {config.data.batch_size} is not divisible by the {mesh.size} devices "
            "of the mesh (set mesh.num_devices or the batch size)"
        )

    # input pipeline ----------------------------------------------------------------
    it, tokenizer = input_pipeline(config, workdir)

    # model and state -----------------------------------------------------------------
    state, state_sh, tx, mask, schedule = setup_state(config, stage, mesh, rules, log)

    # checkpoint --------------------------------------------------------------------
    t = config.train
    ckpt = Checkpointer(
        os.path.join(workdir, "checkpoints"), t.checkpoint_every, t.keep_checkpoints
    )
    if (latest := ckpt.latest_step()) is not None:
        state = ckpt.restore(latest, abstract_like(state, state_sh), it)
        log("resumed from step %d", latest)

    # compile -----------------------------------------------------------------------
    first = stage.host_batch(next(it), tokenizer)
    step_fn = make_train_step(stage, tx, mask, config.optim.ema_decay, schedule)
    compiled = compile_step(step_fn, state, state_sh, first, mesh, config.data.batch_size, log)
    flops_per_step = stage.train_flops_per_example() * config.data.batch_size
    peak = peak_flops(jax.devices()[0])

    # loop --------------------------------------------------------------------------
    stop = {"signal": None}
    previous = signal.signal(signal.SIGTERM, lambda sig, frame: stop.update(signal=sig))
    writer = _writer(workdir)
    preview_batch = first
    step = int(state["step"])
    pending = first
    last = {}
    timer, timer_step = time.perf_counter(), step
    from tqdm import tqdm

    bar = tqdm(total=t.total_steps, initial=step, desc="train", disable=jax.process_index() != 0)
    try:
        while step < t.total_steps:
            batch = sharding.global_batch(pending, mesh)
            state, metrics = compiled(state, batch)
            step += 1
            bar.update(1)
            if step % t.log_every == 0 or step == t.total_steps:
                last = {k: float(v) for k, v in jax.device_get(metrics).items()}
                elapsed = time.perf_counter() - timer
                rate = (step - timer_step) / max(elapsed, 1e-9)
                last.update(steps_per_s=rate, examples_per_s=rate * config.data.batch_size)
                if peak:
                    last["mfu"] = flops_per_step * rate / (peak * jax.device_count())
                timer, timer_step = time.perf_counter(), step
                bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{last['learning_rate']:.2e}")
                writer.write_scalars(step, last)
                if last["skipped"] > 0:
                    log("step %d: %d non-finite steps skipped so far", step, int(last["skipped"]))
            if t.preview_every and (step % t.preview_every == 0 or step == t.total_steps):
                _preview(stage, state, preview_batch, mesh, workdir, step, writer, config)
            # the iterator has yielded exactly the batches of steps 1..step here: checkpoint
            # before fetching the next one (the fetch still overlaps the next step's compute)
            ckpt.save(step, state, it)
            if stop["signal"] is not None:
                log("SIGTERM at step %d: saving a checkpoint and stopping", step)
                ckpt.save(step, state, it, force=True)
                break
            if step < t.total_steps:
                pending = stage.host_batch(next(it), tokenizer)
    finally:
        signal.signal(signal.SIGTERM, previous)
        bar.close()
        ckpt.close()
        writer.flush()
    if step >= t.total_steps:
        _save_final(state, workdir)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "metrics.json"), "w") as f:
            json.dump({"step": step, **last}, f, indent=1)
    return {"step": step, **last}


def setup_state(config, stage, mesh, rules, log=LOG.info):
    """Initialised (and pretrained-loaded) train state on the mesh, with its shardings, the
    optimizer, the trainable mask and the learning-rate schedule."""
    p_shardings = sharding.param_shardings(stage.abstract_params(), mesh, rules)
    params = stage.init_params(jax.random.PRNGKey(config.seed))
    params = jax.device_put(params, p_shardings)
    mask = stage.trainable_mask(params)
    for name, (n_train, n_frozen) in stage.parameter_groups(params, mask).items():
        log("params %-34s trainable %12s frozen %12s", name, f"{n_train:,}", f"{n_frozen:,}")
    total_train, total = optim.count(params, mask), optim.count(params)
    log("params total %s (trainable %s)", f"{total:,}", f"{total_train:,}")
    tx = optim.make_optimizer(config.optim, mask)
    schedule = optim.learning_rate(config.optim)
    opt_state = jax.jit(tx.init)(params)  # moments take their parameters' shardings
    state = {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "opt_state": opt_state,
        "rng": jax.random.PRNGKey(config.seed + 1),
        "skipped": jnp.zeros((), jnp.int32),
    }
    if config.optim.ema_decay > 0:
        state["ema"] = jax.tree.map(jnp.copy, params)
    state = jax.device_put(state, _state_shardings(state, mesh))
    return state, jax.tree.map(lambda x: x.sharding, state), tx, mask, schedule


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


def _state_shardings(state, mesh):
    """Parameters keep theirs (FSDP); optimizer moments take their parameter's by shape;
    scalars replicate."""
    by_shape = {}
    for leaf in jax.tree.leaves(state["params"]):
        by_shape.setdefault((leaf.shape, leaf.dtype), leaf.sharding)

    def pick(x):
        s = getattr(x, "sharding", None)
        if isinstance(s, jax.sharding.NamedSharding) and s.mesh == mesh:
            return s
        return by_shape.get((x.shape, x.dtype), sharding.replicated(mesh))

    return jax.tree.map(pick, state)


def _save_final(state, workdir: str) -> None:
    import orbax.checkpoint as ocp

    params = state.get("ema", state["params"])
    path = os.path.join(os.path.abspath(workdir), "params_final")
    if os.path.exists(path):
        import shutil

        shutil.rmtree(path)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, params)
    LOG.info("wrote %s", path)


def _preview(stage, state, host_batch, mesh, workdir, step, writer, config) -> None:
    from PIL import Image

    n = min(config.train.preview_examples, len(host_batch["image"]))
    small = {k: v[:n] for k, v in host_batch.items()}
    if jax.process_count() > 1:  # every process samples process 0's examples
        from jax.experimental import multihost_utils

        small = multihost_utils.broadcast_one_to_all(small)
    params = state.get("ema", state["params"])
    fn = jax.jit(
        lambda p, b, k: stage.sample(p, b, k, config.train.preview_steps, config.train.guidance),
        out_shardings=sharding.replicated(mesh),
    )
    out = jax.device_get(fn(params, small, jax.random.PRNGKey(step)))
    rows = [
        np.concatenate([out["target"][i], out["sample"][i], out["normals"][i]], axis=1)
        for i in range(n)
    ]
    image = (np.concatenate(rows, axis=0) * 255).round().astype(np.uint8)
    os.makedirs(os.path.join(workdir, "previews"), exist_ok=True)
    path = os.path.join(workdir, "previews", f"step_{step:06d}.png")
    if jax.process_index() == 0:
        Image.fromarray(image).save(path)
    writer.write_images(step, {"preview": image[None]})


class _Writer:
    """TensorBoard event files (process 0), written with tf.summary (TF is a dependency)."""

    def __init__(self, workdir: str):
        import tensorflow as tf

        self.tf = tf
        self.w = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))

    def write_scalars(self, step, scalars):
        with self.w.as_default(step=step):
            for k, v in scalars.items():
                self.tf.summary.scalar(k, v)

    def write_images(self, step, images):
        with self.w.as_default(step=step):
            for k, v in images.items():
                self.tf.summary.image(k, v)

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
    # ours at INFO; orbax, grain and tfds (chatty at INFO) at WARNING
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("nd3d_jax").setLevel(logging.INFO)
    logging.getLogger("data_pipelines").setLevel(logging.INFO)
    train(config, workdir)


if __name__ == "__main__":
    from nd3d_jax.config_cli import run

    run(main)
