"""The trainer's input pipeline: finds (or generates) the data and the tokenizer, returns the
checkpointable grain iterator over this process's block of every global batch.

    it = train_iterator(config, workdir)   # it.get_state() / it.set_state(state)
    batch = next(it)   # {input_ids, ..., views, view_cameras/*, mesh_*, faces/*}: numpy, numeric

Each batch is `config.data.batch_size / process_count` examples of `model_inputs.ModelInputs`
(the same fields for Pix3D and OmniObject3D), ready for `jax.make_array_from_process_local_data`.
Expected mistakes (no data folder, the wrong data set, split or batch size, a missing tokenizer)
raise `nd3d_jax.errors.UserError` naming the override to set.
"""

from __future__ import annotations

import logging
import os

from data_pipelines import loader
from data_pipelines.model_inputs import from_config
from nd3d_jax.errors import UserError

LOG = logging.getLogger("data_pipelines.input_pipeline")
PREPARE = "python -m data_pipelines.prepare"


def train_iterator(config, workdir: str, *, process_index: int | None = None,
                   process_count: int | None = None):  # fmt: skip
    """The training iterator (shuffled, flipped, repeated) yielding this process's block of
    each global batch; process index/count default to JAX's."""
    d = config.data
    if process_index is None or process_count is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    if d.batch_size % process_count:
        raise UserError(
            f"data.batch_size {d.batch_size} is not divisible by the {process_count} processes: "
            f"set --config.data.batch_size to a multiple of {process_count}"
        )
    data_dir = resolve_data_dir(config, workdir)
    source = open_source(data_dir, d.dataset, d.split, d.config_name)
    transform = from_config(config, tokenizer(config, data_dir))
    transform.check(source[0])  # sizes that do not fit fail here, not in a worker thread
    return loader.make_iterator(
        source,
        batch_size=d.batch_size // process_count,
        train=True,
        seed=config.seed,
        shard_index=process_index,
        shard_count=process_count,
        num_threads=d.num_threads,
        grid_cols=config.model.grid_cols,  # the flip mirrors each prepared view in place
        max_faces=d.max_faces,
        num_sampled_faces=config.model.num_sampled_faces,
        model_inputs=transform,
    )


def resolve_data_dir(config, workdir: str) -> str:
    """`data.data_dir`, or the synthetic data set generated (once) under `data.cache_dir`
    (default `WORKDIR/data`) when `data.synthetic_objects` > 0."""
    d = config.data
    if d.synthetic_objects:
        cache = os.path.expanduser(d.cache_dir or os.path.join(workdir, "data"))
        return synthetic(d, cache)
    if not d.data_dir:
        raise UserError(
            f"data.data_dir is not set: set --config.data.data_dir=DIR, the tfds folder written "
            f"by `{PREPARE}` (or --config.data.synthetic_objects=N for generated data)"
        )
    data_dir = os.path.expanduser(d.data_dir)
    if not os.path.isdir(data_dir):
        raise UserError(
            f"data.data_dir {data_dir!r} does not exist: set --config.data.data_dir=DIR, the "
            f"tfds folder written by `{PREPARE}`"
        )
    return data_dir


def prepared_variants(data_dir: str) -> list[tuple[str, str]]:
    """(dataset, config) pairs with a prepared version (`<dataset>/<config>/<version>/
    dataset_info.json`) under `data_dir`, sorted."""
    found = []
    for dataset in sorted(os.listdir(data_dir)) if os.path.isdir(data_dir) else []:
        root = os.path.join(data_dir, dataset)
        for config in sorted(os.listdir(root)) if os.path.isdir(root) else []:
            try:
                loader.dataset_path(data_dir, dataset, config)
            except (FileNotFoundError, ValueError):
                continue
            found.append((dataset, config))
    return found


def open_source(data_dir: str, dataset: str, split: str, config_name: str):
    """The prepared split's random-access source; a `UserError` naming the override when the
    folder holds another data set or config, the split is unknown or empty."""
    check_prepared(data_dir, dataset, config_name)
    source = loader.data_source(data_dir, dataset, split, config_name)
    if len(source) == 0:
        raise UserError(
            f"split {split!r} of {dataset}/{config_name} in {data_dir} is empty: set "
            f"--config.data.split to a split with examples"
        )
    return source


def check_prepared(data_dir: str, dataset: str, config_name: str) -> None:
    """A `UserError` naming the override to set unless `data_dir` holds `dataset` prepared with
    `config_name` (a listing: no data is read; the config checks run it before anything)."""
    variants = prepared_variants(data_dir)
    if (dataset, config_name) not in variants:
        datasets = sorted({name for name, _ in variants})
        configs = [c for name, c in variants if name == dataset]
        if configs:
            raise UserError(
                f"prepared folder {data_dir} holds {dataset} with config "
                f"{', '.join(configs)}, not {config_name!r}: set "
                f"--config.data.config_name={configs[0]}"
            )
        if datasets:
            raise UserError(
                f"prepared folder {data_dir} holds {', '.join(datasets)}, not {dataset}: set "
                f"--config.data.dataset={datasets[0]}"
            )
        raise UserError(
            f"{data_dir} holds no prepared data set: run `{PREPARE} --dataset={dataset} "
            f"--config={config_name} --manual_dir=RAW --data_dir={data_dir}` or set "
            f"--config.data.data_dir"
        )


def tokenizer(config, data_dir: str):
    """The CLIP tokenizer: `model.tokenizer_path`, else the CLIP folder (`model.clip.path`),
    resolved under `weights_dir`; with neither, the tiny tokenizer written into `data_dir`."""
    from nd3d_jax.weights import CLIPTokenizer
    from nd3d_jax.weights.paths import resolve

    m = config.model
    if m.get("tokenizer_path"):
        key, path = "model.tokenizer_path", m.tokenizer_path
    else:
        key, path = "model.clip.path", (m.get("clip") or {}).get("path", "")
    length = max(m.text_length, m.semantic_length)
    if not path:
        from nd3d_jax.weights.tiny_tokenizer import ensure_tiny_tokenizer

        return CLIPTokenizer(ensure_tiny_tokenizer(os.path.join(data_dir, "tiny_tokenizer")),
                             length)  # fmt: skip
    weights_dir = config.get("weights_dir", "") or ""
    folder = resolve(weights_dir, path)
    if not os.path.isdir(folder):
        where = f" (weights_dir={weights_dir!r})" if weights_dir and not os.path.isabs(path) else ""
        raise UserError(
            f"weights folder {folder!r} for {key}={path!r}{where} (the CLIP tokenizer) not "
            f"found; set --config.weights_dir=DIR or --config.{key}=FOLDER"
        )
    try:
        return CLIPTokenizer(folder, length)
    except ValueError as e:  # WeightImportError: no tokenizer files
        raise UserError(
            f"{folder} ({key}) has no usable CLIP tokenizer files: set "
            f"--config.model.tokenizer_path=FOLDER ({str(e).splitlines()[0]})"
        ) from e


def synthetic(d, cache: str) -> str:
    """The tfds folder of a synthetic `d.dataset` with `d.synthetic_objects` objects, written
    and prepared into `cache` on first use (by process 0; the others wait). The raw data set is
    written into a temporary folder and renamed when complete, so an interrupted run never
    leaves half a data set behind."""
    import jax

    data_dir = os.path.join(cache, "tfds")
    if jax.process_index() == 0:
        _write_synthetic(d, cache, data_dir)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("synthetic data set ready")
    return data_dir


def _write_synthetic(d, cache: str, data_dir: str) -> None:
    import shutil
    import tempfile

    from data_pipelines.prepare import prepare
    from data_pipelines.synthetic.omniobject3d import write_omniobject3d
    from data_pipelines.synthetic.pix3d import write_pix3d

    manual = os.path.join(cache, f"{d.dataset}_{d.synthetic_objects}")
    if not os.path.isdir(manual):
        LOG.info("writing a synthetic %s data set to %s", d.dataset, manual)
        os.makedirs(cache, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{d.dataset}_", dir=cache)
        try:
            writer = write_pix3d if d.dataset == "pix3d" else write_omniobject3d
            writer(tmp, d.synthetic_objects, log=LOG.info)
            os.rename(tmp, manual)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if not os.path.isdir(os.path.join(data_dir, d.dataset, d.config_name)):
        loader.silence_variant_probe()
        prepare(d.dataset, manual, data_dir, config=d.config_name, log=LOG.info)
