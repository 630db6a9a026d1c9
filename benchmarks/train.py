"""`python -m nd3d_jax.benchmark train`: train-step time, examples/s and MFU of the neurodiff3d
stage on the tiny config (`--quick`: 2 steps), on a synthetic batch (no data set needed): one
icosphere condition mesh, ring cameras, random view grids and captions.

MFU = analytic model FLOPs per step (3 x UNet forward) / (step time x peak); the peak comes
from `train.PEAK_FLOPS` (none on CPU, so MFU is left out there).
"""

from __future__ import annotations

import os

import jax
import numpy as np
import trimesh

from nd3d_jax.benchmark import BenchOptions, Record, device_name, measure


def synthetic_loader_batch(config, batch: int, seed: int = 0) -> dict:
    """What the grain loader yields for OmniObject3D (padded mesh, MeshConv samples, views)."""
    from data_pipelines.loader import mesh_conv_inputs, pad_mesh
    from nd3d_jax.render.camera import focal_from_fov, ring_poses

    rng = np.random.default_rng(seed)
    m, d = config.model, config.data
    size = m.tile_size * m.grid_cols
    mesh = trimesh.creation.icosphere(subdivisions=2, radius=0.4)
    raw = {
        "mesh_vertices": np.asarray(mesh.vertices, np.float32),
        "mesh_faces": np.asarray(mesh.faces, np.int32),
        "mesh_colors": rng.random((len(mesh.vertices), 3)).astype(np.float32),
    }
    example = mesh_conv_inputs(pad_mesh(raw, d.max_faces), m.num_sampled_faces)
    k = m.grid_rows * m.grid_cols
    c2w = np.asarray(ring_poses(k, 1.8, up_axis=1), np.float32)  # looking at the centre
    out = {key: np.stack([value] * batch) for key, value in example.items()}
    out.update(
        image=rng.normal(size=(batch, size, size, 3)).astype(np.float32),
        views=rng.normal(size=(batch, size, size, 3)).astype(np.float32),
        caption=np.array(["a photo of a chair"] * batch, object),
        **{
            "view_cameras/c2w": np.stack([c2w] * batch),
            "view_cameras/focal": np.full((batch, k), focal_from_fov(0.7, m.tile_size), np.float32),
            "view_cameras/principal": np.full((batch, k, 2), m.tile_size / 2, np.float32),
        },
    )
    return out


def suite(opts: BenchOptions) -> list[Record]:
    from nd3d_jax import sharding
    from nd3d_jax import train as train_lib
    from nd3d_jax.config_cli import load_config
    from nd3d_jax.stages import get_stage
    from nd3d_jax.weights import CLIPTokenizer
    from nd3d_jax.weights.tiny_tokenizer import write_tiny_tokenizer

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    config = load_config(os.path.join(root, "configs/demo.py"))
    stage = get_stage(config)
    mesh = sharding.make_mesh(-1, 1)
    state, state_sh, tx, mask, schedule = train_lib.setup_state(
        config, stage, mesh, sharding.DEFAULT_RULES, log=lambda *a: None
    )
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        tokenizer = CLIPTokenizer(write_tiny_tokenizer(folder), config.model.text_length)
        batch_size = config.data.batch_size
        host = stage.host_batch(synthetic_loader_batch(config, batch_size), tokenizer)
    step_fn = train_lib.make_train_step(stage, tx, mask, config.optim.ema_decay, schedule)
    compiled = train_lib.compile_step(
        step_fn, state, state_sh, host, mesh, batch_size, log=lambda *a: None
    )
    batch = sharding.global_batch(host, mesh)
    holder = {"state": state}

    def step():
        holder["state"], metrics = compiled(holder["state"], batch)
        return metrics["loss"]

    repeats = 2 if opts.quick else opts.repeats
    median = measure(step, warmup=opts.warmup, repeats=repeats)
    flops = stage.train_flops_per_example() * batch_size
    peak = train_lib.peak_flops(jax.devices()[0])
    mfu = flops / median / (peak * jax.device_count()) if peak else None
    return [
        Record(
            name="train_step_demo",
            device=device_name(),
            shape=f"batch {batch_size}, grid {stage.grid_size}px, latent {stage.latent_size}"
            + (f", MFU {mfu:.3%}" if mfu is not None else ", MFU n/a (no peak for this device)"),
            median_s=median,
            repeats=repeats,
            throughput=batch_size / median,
            throughput_unit="examples/s",
            analytic_flops=flops,
        )
    ]
