"""grain input pipeline over a prepared data set: shard, shuffle, flip, model inputs, batch.

    source = data_source(data_dir, "pix3d", split="train")
    it = make_iterator(source, batch_size=8, train=True, seed=0)
    batch = next(it); state = it.get_state()   # saved beside the train state (orbax)

Per process: `ds[process_index::process_count]` (disjoint shards, so every host reads its own
examples), then a seeded shuffle that changes every epoch; batches are per-process, joined
across hosts with `jax.make_array_from_process_local_data`. Images stay uint8 in [0, 255] (the
model normalises them once, at its edge); training applies a random horizontal flip that
mirrors the whole example consistently: image, mask, view grid, the shape across x = 0 and the
cameras. An optional per-example transform (`model_inputs.ModelInputs`: tokenisation, the view
grid at the model's tile size, tile cameras) runs last, in the worker threads.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable

import grain
import numpy as np

from data_pipelines.cameras import flip_c2w
from nd3d_jax.errors import UserError

_X_FIELDS = ("points", "normals", "sdf_points")  # 3-vectors whose x flips with the world
_STRINGS = ("caption", "category", "shape_id", "key")


def dataset_path(data_dir: str, dataset: str, config: str = "default") -> str:
    """The newest prepared version folder, `<data_dir>/<dataset>/<config>/<version>`."""
    root = os.path.join(data_dir, dataset, config)
    versions = [v for v in os.listdir(root)] if os.path.isdir(root) else []
    versions = [v for v in versions if os.path.isfile(os.path.join(root, v, "dataset_info.json"))]
    if not versions:
        raise FileNotFoundError(
            f"no prepared {dataset}/{config} under {data_dir}: run python -m "
            f"data_pipelines.prepare --dataset={dataset} --config={config} --data_dir={data_dir}"
        )
    return os.path.join(root, max(versions, key=lambda v: tuple(map(int, v.split(".")))))


def data_source(data_dir: str, dataset: str, split: str = "train", config: str = "default"):
    """Random-access source over the ArrayRecord files (decodes one example per index)."""
    import tensorflow_datasets as tfds

    silence_variant_probe()
    builder = tfds.builder_from_directory(dataset_path(data_dir, dataset, config))
    if split not in builder.info.splits:
        splits = ", ".join(builder.info.splits)
        raise UserError(
            f"{dataset}/{config} in {data_dir} has no split {split!r} (it has {splits}): "
            f"set --config.data.split to one of them"
        )
    return builder.as_data_source(split=split)


class _VariantProbeFilter(logging.Filter):
    """Drops two tfds notes that are expected here, not problems: "Variant folder ... has no
    dataset_info.json" (`builder.is_prepared()` probes the version folder before a data set is
    written) and "OpenCV is not installed ... Defaulting to PIL" (PIL decodes our images)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not (
            message.startswith("Variant folder %s has no")
            or message.startswith("OpenCV is not installed")
        )


_PROBE_FILTER = _VariantProbeFilter()


def silence_variant_probe() -> None:
    """Installs the filter on absl's logger (which tfds logs through); idempotent."""
    logger = logging.getLogger("absl")
    if _PROBE_FILTER not in logger.filters:
        logger.addFilter(_PROBE_FILTER)


def pad_mesh(example: dict, max_faces: int) -> dict:
    """The condition mesh at static shapes: `max_faces` faces and 3 x that many vertices, with
    `mesh_face_mask` and the true counts (`mesh_num_faces`, `mesh_num_vertices`)."""
    v = np.asarray(example["mesh_vertices"], np.float32)
    f = np.asarray(example["mesh_faces"], np.int32)
    c = np.asarray(example["mesh_colors"], np.float32)
    max_vertices = 3 * max_faces
    if len(f) > max_faces or len(v) > max_vertices:
        raise ValueError(
            f"condition mesh with {len(f)} faces / {len(v)} vertices exceeds max_faces="
            f"{max_faces}; prepare the data with a matching mesh_faces"
        )
    out = {
        "mesh_vertices": np.zeros((max_vertices, 3), np.float32),
        "mesh_colors": np.zeros((max_vertices, 3), np.float32),
        "mesh_faces": np.zeros((max_faces, 3), np.int32),
        "mesh_face_mask": np.zeros((max_faces,), np.float32),
        "mesh_num_faces": np.int32(len(f)),
        "mesh_num_vertices": np.int32(len(v)),
    }
    out["mesh_vertices"][: len(v)] = v
    out["mesh_colors"][: len(v)] = c
    out["mesh_faces"][: len(f)] = f
    out["mesh_face_mask"][: len(f)] = 1.0
    return out


def mesh_conv_inputs(example: dict, num_faces: int = 512) -> dict:
    """Adds f_struc's inputs (`faces/features`, `faces/neighbours`, `faces/neighbour_mask`,
    `faces/face_mask`: `mesh_conv.sample_faces` of the unpadded condition mesh)."""
    from nd3d_jax.models.mesh_conv import sample_faces

    n_v, n_f = int(example["mesh_num_vertices"]), int(example["mesh_num_faces"])
    sampled = sample_faces(example["mesh_vertices"][:n_v], example["mesh_faces"][:n_f], num_faces)
    return {**example, **{f"faces/{k}": v for k, v in sampled.items()}}


def to_model_inputs(example: dict, max_faces: int | None = None) -> dict:
    """Decoded tfds example -> flat arrays: images uint8, the rest float32 (cameras as
    camera/*, view_cameras/*; the condition mesh padded to `max_faces` when given, else left
    out)."""
    out = {
        "image": np.asarray(example["image"], np.uint8),
        "mask": example["mask"].astype(np.float32),
        "flipped": np.bool_(False),
    }
    for key in _STRINGS:
        value = example[key]
        out[key] = value.decode() if isinstance(value, bytes) else str(value)
    for key in ("points", "normals", "colors", "sdf_points", "sdf_values"):
        out[key] = np.asarray(example[key], np.float32)
    for group in ("camera", "view_cameras"):
        if group in example:
            for key, value in example[group].items():
                out[f"{group}/{key}"] = np.asarray(value, np.float32)
    if "views" in example:
        out["views"] = np.asarray(example["views"], np.uint8)
    if max_faces is not None and "mesh_faces" in example:
        out.update(pad_mesh(example, max_faces))
    return out


def flip_example(example: dict, grid_cols: int = 2) -> dict:
    """The example mirrored left-right, consistently (see `cameras.flip_c2w`)."""
    out = dict(example)
    out["image"] = example["image"][:, ::-1]
    out["mask"] = example["mask"][:, ::-1]
    for key in _X_FIELDS:
        out[key] = example[key] * np.array([-1.0, 1.0, 1.0], np.float32)
    if "mesh_vertices" in example:  # mirror the mesh; reverse the winding so normals stay out
        out["mesh_vertices"] = example["mesh_vertices"] * np.array([-1.0, 1.0, 1.0], np.float32)
        out["mesh_faces"] = np.ascontiguousarray(example["mesh_faces"][:, ::-1])
    width = example["image"].shape[1]
    for group, size in (("camera", width), ("view_cameras", None)):
        if f"{group}/c2w" not in example:
            continue
        if size is None:  # each tile of the view grid flips in place
            views = example["views"]
            rows = views.shape[0] // (views.shape[1] // grid_cols)
            tiles = views.reshape(rows, views.shape[0] // rows, grid_cols, -1, views.shape[2])
            out["views"] = tiles[:, :, :, ::-1].reshape(views.shape)
            size = views.shape[1] // grid_cols
        out[f"{group}/c2w"] = flip_c2w(example[f"{group}/c2w"]).astype(np.float32)
        principal = example[f"{group}/principal"].copy()
        principal[..., 0] = size - principal[..., 0]
        out[f"{group}/principal"] = principal
    out["flipped"] = np.bool_(not example["flipped"])
    return out


class RandomFlip(grain.transforms.RandomMap):
    """Flips with probability `p` (paper: random horizontal flip in training)."""

    def __init__(self, p: float = 0.5, grid_cols: int = 2):
        self.p, self.grid_cols = p, grid_cols

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        return flip_example(element, self.grid_cols) if rng.random() < self.p else element


def make_dataset(
    source,
    *,
    batch_size: int,
    train: bool,
    seed: int = 0,
    shard_index: int | None = None,
    shard_count: int | None = None,
    num_epochs: int | None = None,
    flip_probability: float = 0.5,
    grid_cols: int = 2,
    max_faces: int | None = None,
    num_sampled_faces: int = 512,
    model_inputs: Callable[[dict], dict] | None = None,
) -> grain.MapDataset:
    """Sharded, shuffled (train), flipped (train) and batched MapDataset.

    `shard_index`/`shard_count` default to `jax.process_index()`/`jax.process_count()`.
    Training repeats forever (or `num_epochs`) and drops the last partial batch; evaluation
    reads its shard once, in order, keeping the remainder. With `max_faces`, examples also
    carry the padded condition mesh and MeshConv's `num_sampled_faces` face samples.
    `model_inputs` (a `model_inputs.ModelInputs`, or any example -> example function) runs
    last on each example, after the flip.
    """
    if shard_index is None or shard_count is None:
        import jax

        shard_index, shard_count = jax.process_index(), jax.process_count()
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} not in [0, {shard_count})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(source) < shard_count:
        raise ValueError(f"{len(source)} examples cannot be split over {shard_count} processes")
    ds = grain.MapDataset.source(source).seed(seed)
    if not train:  # evaluation: each process reads its shard once, in order
        ds = ds[shard_index::shard_count].map(
            functools.partial(to_model_inputs, max_faces=max_faces)
        )
        if max_faces is not None:
            ds = ds.map(functools.partial(mesh_conv_inputs, num_faces=num_sampled_faces))
        if model_inputs is not None:
            ds = ds.map(model_inputs)
        return ds.batch(batch_size, drop_remainder=False)
    # training: one global shuffled stream, transformed per global index, then each process
    # takes its block of every global batch, so the global batches (and their order, flips
    # and noise) are the same for any number of processes
    ds = ds.shuffle().repeat(num_epochs)
    ds = ds.map(functools.partial(to_model_inputs, max_faces=max_faces))
    if flip_probability > 0:
        ds = ds.random_map(RandomFlip(flip_probability, grid_cols))
    if max_faces is not None:
        ds = ds.map(functools.partial(mesh_conv_inputs, num_faces=num_sampled_faces))
    if model_inputs is not None:
        ds = ds.map(model_inputs)
    return BlockShard(ds, shard_index, shard_count, batch_size).batch(
        batch_size, drop_remainder=True
    )


class BlockShard(grain.MapDataset):
    """Process `index` of `count` reads its contiguous `block` of every global batch of
    `block * count` elements (global batches are the concatenation over processes, as
    `jax.make_array_from_process_local_data` joins them)."""

    def __init__(self, parent: grain.MapDataset, index: int, count: int, block: int):
        super().__init__(parent)
        self._index, self._count, self._block = index, count, block

    def __len__(self) -> int:
        return len(self._parent) // self._count

    def __getitem__(self, j):
        if isinstance(j, slice):
            return self.slice(j)
        b = self._block
        return self._parent[(j // b) * b * self._count + self._index * b + j % b]


def make_iterator(source, *, num_threads: int = 8, prefetch: int = 16, **kwargs):
    """A checkpointable iterator (`get_state()` / `set_state(state)`) reading with
    `num_threads` worker threads; kwargs go to `make_dataset`."""
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
    return iter(make_dataset(source, **kwargs).to_iter_dataset(options))
