"""`python -m nd3d_jax.benchmark train`: train-step time, examples/s and MFU of the neurodiff3d
stage (the demo config; `--quick`: `demo.py:variant=tiny`, 2 steps), on a synthetic batch in
memory (no data set, no data stack: it also runs where only JAX is installed): a UV-sphere
condition mesh, ring cameras, random view grids and tokens, in `data_pipelines.model_inputs`'
fields.

MFU = analytic model FLOPs per step (3 x UNet forward) / (step time x peak); the peak comes
from `train.PEAK_FLOPS` (none on CPU, so MFU is left out there).
"""

from __future__ import annotations

import os

import jax
import numpy as np

from nd3d_jax.benchmark import BenchOptions, Record, device_name, measure


def uv_sphere(rows: int = 16, cols: int = 32, radius: float = 0.4):
    """(vertices (V, 3), faces (F, 3)) of a closed UV sphere, faces wound outward."""
    theta = np.linspace(0.0, np.pi, rows + 1)[1:-1]
    phi = np.linspace(0.0, 2 * np.pi, cols, endpoint=False)
    t, p = np.meshgrid(theta, phi, indexing="ij")
    ring = np.stack([np.sin(t) * np.cos(p), np.cos(t), np.sin(t) * np.sin(p)], -1).reshape(-1, 3)
    vertices = np.concatenate([[[0, 1, 0]], ring, [[0, -1, 0]]]) * radius
    idx = 1 + np.arange((rows - 1) * cols).reshape(rows - 1, cols)
    nxt = np.roll(idx, -1, axis=1)
    faces = [np.stack([np.zeros(cols, int), nxt[0], idx[0]], -1)]
    for r in range(rows - 2):
        faces += [
            np.stack([idx[r], nxt[r], nxt[r + 1]], -1),
            np.stack([idx[r], nxt[r + 1], idx[r + 1]], -1),
        ]
    last = len(vertices) - 1
    faces.append(np.stack([np.full(cols, last), idx[-1], nxt[-1]], -1))
    return vertices.astype(np.float32), np.concatenate(faces).astype(np.int32)


def synthetic_batch(config, batch: int, seed: int = 0) -> dict:
    """A host batch with the fields and dtypes of `data_pipelines.model_inputs`."""
    from nd3d_jax.models.mesh_conv import sample_faces
    from nd3d_jax.render.camera import focal_from_fov, ring_poses

    rng = np.random.default_rng(seed)
    m, d = config.model, config.data
    g, k = m.tile_size * m.grid_cols, m.grid_rows * m.grid_cols
    n_f, n_v = d.max_faces, 3 * d.max_faces
    rows = int((1 + (1 + n_f) ** 0.5) / 2)  # 4 rows (rows - 1) faces <= max_faces
    v, f = uv_sphere(rows, 2 * rows)
    one = {
        "mesh_vertices": np.zeros((n_v, 3), np.float32),
        "mesh_colors": np.zeros((n_v, 3), np.float32),
        "mesh_faces": np.zeros((n_f, 3), np.int32),
        "mesh_face_mask": np.zeros((n_f,), np.float32),
    }
    one["mesh_vertices"][: len(v)] = v
    one["mesh_colors"][: len(v)] = rng.random((len(v), 3))
    one["mesh_faces"][: len(f)] = f
    one["mesh_face_mask"][: len(f)] = 1.0
    one.update({f"faces/{key}": x for key, x in sample_faces(v, f, m.num_sampled_faces).items()})
    out = {key: np.stack([x] * batch) for key, x in one.items()}
    length = max(m.text_length, m.semantic_length)
    ids = rng.integers(1, 300, (batch, length)).astype(np.int32)
    c2w = np.asarray(ring_poses(k, 1.8, up_axis=1), np.float32)
    out.update({
        "input_ids": ids[:, : m.text_length],
        "attention_mask": np.ones((batch, m.text_length), np.int32),
        "semantic_ids": ids[:, : m.semantic_length],
        "semantic_mask": np.ones((batch, m.semantic_length), np.int32),
        "image": rng.integers(0, 256, (batch, g, g, 3)).astype(np.uint8),
        "views": rng.integers(0, 256, (batch, g, g, 3)).astype(np.uint8),
        "view_mask": np.ones((batch, k), np.float32),
        "view_cameras/c2w": np.stack([c2w] * batch),
        "view_cameras/focal": np.full((batch, k), focal_from_fov(0.7, m.tile_size), np.float32),
        "view_cameras/principal": np.full((batch, k, 2), m.tile_size / 2, np.float32),
    })  # fmt: skip
    return out


def suite(opts: BenchOptions) -> list[Record]:
    from nd3d_jax import sharding, train_state
    from nd3d_jax import train as train_lib
    from nd3d_jax.config_cli import load_config
    from nd3d_jax.stages import get_stage

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = "configs/demo.py:variant=tiny" if opts.quick else "configs/demo.py"
    config = load_config(os.path.join(root, spec))
    stage = get_stage(config)
    mesh = sharding.make_mesh(-1, 1)
    with jax.set_mesh(mesh):
        ts = train_state.create(stage, config, mesh, sharding.DEFAULT_RULES, log=lambda *a: None)
        batch_size = config.data.batch_size
        host = synthetic_batch(config, batch_size)
        step_fn = train_lib.make_train_step(stage, ts.tx, ts.mask, config.optim, ts.schedule)
        compiled = train_lib.compile_step(
            step_fn, ts.state, ts.shardings, host, mesh, batch_size, log=lambda *a: None
        )
        batch = sharding.global_batch(host, mesh)
        holder = {"state": ts.state}

        def step():
            holder["state"], metrics = compiled(holder["state"], batch)
            return metrics["loss"]

        repeats = 2 if opts.quick else opts.repeats
        median = measure(step, warmup=opts.warmup, repeats=repeats)
    flops = stage.train_flops_per_example() * batch_size
    peak = train_lib.peak_flops(jax.devices()[0])
    mfu = flops / median / (peak * jax.device_count()) if peak else None
    c = stage.model_config
    return [
        Record(
            name="train_step_demo" + ("_tiny" if opts.quick else ""),
            device=device_name(),
            shape=f"batch {batch_size}, grid {c.grid_size}px, latent {c.latent_size}"
            + (f", MFU {mfu:.3%}" if mfu is not None else ", MFU n/a (no peak for this device)"),
            median_s=median,
            repeats=repeats,
            throughput=batch_size / median,
            throughput_unit="examples/s",
            analytic_flops=flops,
        )
    ]
