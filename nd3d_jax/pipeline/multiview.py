"""Stages 3 and 4: the conditions of the refined mesh and the trained model's K-view grid.

A trainer WORKDIR gives the model: its `config.json` (model sizes, schedule, tokenizer) and
its parameters (`params_final/`, else the newest checkpoint's EMA or parameters). The model
sees each object as in training: the caption tokenised once and sliced to both lengths, the
prepared input photo, K cameras (a ring in the pipeline frame, `cameras` config), the refined
mesh with its coarse colours as the condition mesh (decimated to the trained `max_faces`) and
f_struc's 512 sampled faces; N and T_hat are rendered on the device in the sampling program.

Sampling is one jitted program over a fixed batch of objects split over the mesh's data axis;
each object's noise comes from its own key, so the split does not change the result.
"""

from __future__ import annotations

import logging
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import trimesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from data_pipelines.loader import pad_mesh
from data_pipelines.model_inputs import ModelInputs
from data_pipelines.shape_samples import condition_mesh
from nd3d_jax import sharding
from nd3d_jax.config_cli import load_config
from nd3d_jax.errors import UserError
from nd3d_jax.models.mesh_conv import sample_faces
from nd3d_jax.render.camera import Camera, pinhole, ring_poses
from nd3d_jax.stages.neurodiff3d import NeuroDiff3DStage, render_conditions

LOG = logging.getLogger(__name__)


def view_cameras(cameras: ml_collections.ConfigDict, k: int, size: int) -> Camera:
    """K pinhole cameras on a ring around the origin of the pipeline frame (+Y up), the
    first looking at the object's front (+Z), `size` px square."""
    elevation = math.radians(cameras.elevation_deg)
    poses = np.asarray(ring_poses(k, cameras.distance, elevation, up_axis=1))
    if cameras.azimuth_deg:
        a = math.radians(cameras.azimuth_deg)
        rot = np.eye(4)
        rot[[0, 0, 2, 2], [0, 2, 0, 2]] = [math.cos(a), math.sin(a), -math.sin(a), math.cos(a)]
        poses = rot @ poses
    return pinhole(poses, size, size, fov=cameras.fov)


def _train_config(workdir: str) -> ml_collections.ConfigDict:
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise UserError(
            f"{workdir} is not a trainer workdir (no config.json): pass --params=WORKDIR of "
            "`python -m nd3d_jax.train` (e.g. out/demo after `make demo`)"
        )
    return load_config(path)


def load_trained_params(workdir: str, shardings=None):
    """`WORKDIR/params_final`, else the newest checkpoint's parameters (its EMA if any)."""
    from nd3d_jax.checkpoint import latest_step, load_params

    final = os.path.join(workdir, "params_final")
    if os.path.isdir(final):
        return load_params(final, shardings), final
    ckpt = os.path.join(workdir, "checkpoints")
    step = latest_step(ckpt) if os.path.isdir(ckpt) else None
    if step is None:
        raise UserError(
            f"{workdir} has no params_final/ and no checkpoint: train first "
            "(`python -m nd3d_jax.train --workdir=...`)"
        )
    import orbax.checkpoint as ocp

    from nd3d_jax import optim

    path = os.path.join(ckpt, str(step), "state")
    with ocp.StandardCheckpointer() as ckptr:
        meta = ckptr.metadata(path)
        tree = getattr(meta, "item_metadata", meta)
        one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        wanted = {k: tree[k] for k in ("params", "ema") if k in tree}
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one), wanted
        )
        state = ckptr.restore(path, ocp.args.PyTreeRestore(target, partial_restore=True))
    params = state["params"]
    if "ema" in state:
        params = optim.merge(params, state["ema"])
    if shardings is not None:
        params = jax.device_put(params, shardings)
    return params, path


class MultiView:
    """The trained NeuroDiff3D model of a trainer workdir, ready to sample K-view grids."""

    def __init__(self, workdir: str | None, config: ml_collections.ConfigDict,
                 mesh: jax.sharding.Mesh, *, train_config=None, params=None):  # fmt: skip
        """The model of trainer `workdir`; or (benchmarks) `train_config` and `params` given,
        `workdir` then only holds the tiny tokenizer when the config names no CLIP folder."""
        self.workdir = os.path.abspath(workdir or ".")
        self.train_config = train_config or _train_config(self.workdir)
        self.stage = NeuroDiff3DStage(self.train_config)
        self.model_config = c = self.stage.model_config
        self.config, self.mesh = config, mesh
        self.max_faces = int(self.train_config.data.max_faces)
        if params is None:
            replicated = sharding.replicated(mesh)
            self.params, self.params_path = load_trained_params(self.workdir, replicated)
        else:
            self.params = jax.device_put(params, sharding.replicated(mesh))
            self.params_path = "(given parameters)"
        self.inputs = ModelInputs(
            self._tokenizer(), text_length=c.text_length, semantic_length=c.semantic_length,
            grid_rows=c.grid_rows, grid_cols=c.grid_cols, tile_size=c.tile_size,
        )  # fmt: skip
        self.cameras = view_cameras(config.cameras, c.num_views, c.tile_size)
        self._sample: dict[int, object] = {}  # step count -> jitted sampler

    def _tokenizer(self):
        from data_pipelines.input_pipeline import tokenizer

        m = self.train_config.model
        if m.get("tokenizer_path") or (m.get("clip") or {}).get("path"):
            return tokenizer(self.train_config, "")
        # the tiny tokenizer the trainer wrote (deterministic: rewritten if missing)
        d = self.train_config.data
        if d.synthetic_objects:  # where the trainer's input pipeline put it
            data_dir = os.path.join(d.cache_dir or os.path.join(self.workdir, "data"), "tfds")
        else:
            data_dir = d.data_dir or os.path.join(self.workdir, "data")
        return tokenizer(self.train_config, data_dir)

    # ------------------------------------------------------------------ conditions
    def example(self, refined: trimesh.Trimesh, image: np.ndarray, text: str) -> dict:
        """One object's model inputs (host arrays): tokens, image, cameras, condition mesh."""
        c = self.model_config
        out = self.inputs.tokenize(text)
        out["image"] = np.asarray(image, np.uint8)
        k = c.num_views
        out["views"] = np.zeros((c.grid_size, c.grid_size, 3), np.uint8)  # unused by sampling
        out["view_mask"] = np.ones((k,), np.float32)
        out["view_cameras/c2w"] = np.asarray(self.cameras.c2w, np.float32)
        out["view_cameras/focal"] = np.asarray(self.cameras.focal, np.float32)
        out["view_cameras/principal"] = np.asarray(self.cameras.principal, np.float32)
        try:
            v, f, colors = condition_mesh(refined, self.max_faces)
        except ValueError as e:
            raise UserError(f"the refined mesh cannot condition the model: {e}") from e
        padded = pad_mesh({"mesh_vertices": v, "mesh_faces": f, "mesh_colors": colors},
                          self.max_faces)  # fmt: skip
        out.update({k_: padded[k_] for k_ in ("mesh_vertices", "mesh_faces", "mesh_colors",
                                              "mesh_face_mask")})  # fmt: skip
        sampled = sample_faces(v, f, c.num_sampled_faces)
        out.update({f"faces/{k_}": val for k_, val in sampled.items()})
        return out

    # ------------------------------------------------------------------ sampling
    def sample_fn(self, num_steps: int | None = None):
        """The jitted program (params, batch, keys, guidance) -> {"sample", "normals", "t_hat"}:
        one per step count (a static shape); the guidance scale is traced, so changing it
        compiles nothing."""
        steps = int(num_steps or self.config.sample.num_steps)
        if steps not in self._sample:
            stage, c = self.stage, self.model_config
            fixed = dict(self.config.sample)

            def run(params, batch, keys, guidance):
                normals, t_hat = render_conditions(batch, c)
                s = _Sampler({**fixed, "num_steps": steps, "guidance": guidance})
                out = stage.sample_views(params, batch, normals, t_hat, keys, s)
                return {**out, "t_hat": t_hat}

            rows = NamedSharding(self.mesh, P(sharding.BATCH_AXES))
            self._sample[steps] = jax.jit(run, out_shardings=rows)
        return self._sample[steps]

    def warm(self, batch_size: int, num_steps: int | None = None) -> None:
        """Traces, lowers and compiles (or loads from the compilation cache) the sampling
        program of `batch_size` objects before any object is ready: `Generator.generate_many`
        calls it while its first batch is prepared, so the two overlap. The later `sample`
        call with real inputs of these shapes reuses it."""
        stand_in = trimesh.creation.icosphere(subdivisions=2, radius=0.4)
        image = np.zeros((self.config.image.size,) * 2 + (3,), np.uint8)
        example = self.example(stand_in, image, "")
        rows = NamedSharding(self.mesh, P(sharding.BATCH_AXES))
        batch = {k: jax.ShapeDtypeStruct((batch_size, *np.shape(v)), np.asarray(v).dtype,
                                         sharding=rows)
                 for k, v in example.items()}  # fmt: skip
        key = jax.random.key(0)
        keys = jax.ShapeDtypeStruct((batch_size,), key.dtype, sharding=rows)
        guidance = jax.ShapeDtypeStruct((), np.float32)
        self.sample_fn(num_steps).lower(self.params, batch, keys, guidance).compile()

    def sample(self, examples: list[dict], keys: jax.Array, batch_size: int,
               num_steps: int | None = None, guidance: float | None = None) -> dict:  # fmt: skip
        """Samples `examples` (at most `batch_size`; padded to it so every call has one
        shape) -> host arrays {"sample" (n, G, G, 3), "normals", "t_hat"} in [0, 1].
        `num_steps` / `guidance`: other than the config's `sample` section."""
        n = len(examples)
        if not 0 < n <= batch_size:
            raise ValueError(f"{n} examples for a batch of {batch_size}")
        full = examples + [examples[-1]] * (batch_size - n)
        keys = jnp.concatenate([keys, jnp.broadcast_to(keys[-1:], (batch_size - n,))])
        batch = {k: np.stack([e[k] for e in full]) for k in full[0]}
        rows = NamedSharding(self.mesh, P(sharding.BATCH_AXES))
        batch = jax.device_put(batch, rows)
        keys = jax.device_put(keys, rows)
        g = self.config.sample.guidance if guidance is None else guidance
        out = self.sample_fn(num_steps)(self.params, batch, keys, np.float32(g))
        return {k: v[:n] for k, v in jax.device_get(out).items()}


class _Sampler(dict):
    """The sampler settings `sample_views` reads (`.num_steps`, `.guidance`, `.get`)."""

    __getattr__ = dict.__getitem__
