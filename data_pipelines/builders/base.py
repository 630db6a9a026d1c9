"""What the Pix3D and OmniObject3D tfds builders share: configs, features, splits by shape,
the worker pool, and the skip report.

Preparation runs in two passes over a split, both in one pool of spawned worker processes:
first every distinct shape (unit-cube transform, surface and SDF samples: the slow part, done
once per shape however many images show it), then every example. Given a Beam runner or
options, tfds runs an Apache Beam pipeline instead, one task per shape and its examples
(`builders/beam.py`), with the same jobs and the same bookkeeping (`Tally`), so both write the
same examples. A bad file costs its examples,
is named in a log line and counted by reason; with `strict=True` the first one stops the run.
Each shape's faces are made consistent and outward first (`data_pipelines.mesh_repair`); what
was repaired or could not be is counted per shape (`shapes` in the report), and a shape whose
near-surface SDF queries are implausibly all outside (or all inside) is skipped under its own
reason, or kept with a warning (`keep_implausible=True`), so a broken sign never reaches
training silently. Progress is a tqdm bar on a terminal, a few plain log lines otherwise.
Examples are yielded only when complete, and tfds renames its output folder into place only
when every split is written, so no partial record is ever left behind.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterator

import numpy as np
import tensorflow_datasets as tfds
from tqdm import tqdm

from data_pipelines.builders.tally import PrepareError, Tally
from data_pipelines.examples import Spec, prepare_shape
from nd3d_jax.errors import UserError

__all__ = ["PrepareError", "PreparedBuilder", "Tally", "camera_features"]

VIEW_SELECTIONS = ("ring", "frames")  # Spec.view_selection
TINY = Spec(image_size=64, num_surface=256, num_sdf_near=256, num_sdf_uniform=128, mesh_faces=512)


@dataclasses.dataclass(eq=False)
class PrepareConfig(tfds.core.BuilderConfig):
    spec: Spec = dataclasses.field(default_factory=Spec)
    image_encoding: str = "jpeg"  # input photos; masks and renders are always PNG


CONFIGS = [
    PrepareConfig(
        name="default",
        description="paper sizes: 512 x 512 images, 4096 surface points, 6144 SDF queries",
    ),  # fmt: skip
    PrepareConfig(
        name="tiny",
        spec=TINY,
        image_encoding="png",
        description="64 x 64 images, few samples: tests and demos",
    ),  # fmt: skip
]


def camera_features(batch: tuple[int, ...] = ()) -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({
        "c2w": tfds.features.Tensor(shape=(*batch, 4, 4), dtype=np.float32),
        "focal": tfds.features.Tensor(shape=batch, dtype=np.float32),
        "principal": tfds.features.Tensor(shape=(*batch, 2), dtype=np.float32),
    })  # fmt: skip


def common_features(spec: Spec, image_encoding: str) -> dict:
    s, n, m = spec.image_size, spec.num_surface, spec.num_sdf_near + spec.num_sdf_uniform
    vec = lambda count: tfds.features.Tensor(shape=(count, 3), dtype=np.float32)  # noqa: E731
    return {
        "image": tfds.features.Image(shape=(s, s, 3), encoding_format=image_encoding),
        "mask": tfds.features.Image(shape=(s, s, 1), encoding_format="png"),
        "category": tfds.features.Text(),
        "caption": tfds.features.Text(),
        "shape_id": tfds.features.Text(),
        "key": tfds.features.Text(),  # the source: image path (Pix3D), <cat>/<obj> (Omni)
        "camera": camera_features(),
        "points": vec(n),
        "normals": vec(n),
        "colors": vec(n),
        "sdf_points": vec(m),
        "sdf_values": tfds.features.Tensor(shape=(m,), dtype=np.float32),
        # the condition mesh (<= spec.mesh_faces faces, unit-cube frame, per-vertex colours)
        "mesh_vertices": tfds.features.Tensor(shape=(None, 3), dtype=np.float32),
        "mesh_faces": tfds.features.Tensor(shape=(None, 3), dtype=np.int32),
        "mesh_colors": tfds.features.Tensor(shape=(None, 3), dtype=np.float32),
    }


def split_by_shape(shape_ids, test_fraction: float) -> set[str]:
    """The test shapes: the ceil(fraction * n) shapes first in SHA-1 order (at least one when
    there are two or more): deterministic, independent of file order, no shape in both."""
    ids = sorted(set(shape_ids), key=lambda s: hashlib.sha1(s.encode()).hexdigest())
    count = math.ceil(test_fraction * len(ids))
    if test_fraction > 0 and len(ids) >= 2:
        count = min(max(count, 1), len(ids) - 1)
    return set(ids[:count])


def read_split_file(path: str) -> dict[str, set[str]]:
    """A user split: JSON {"train": [...], "test": [...]} of example keys or shape ids."""
    try:
        with open(path) as f:
            data = json.load(f)
        splits = {name: set(map(str, data[name])) for name in data}
    except (OSError, ValueError, TypeError) as e:
        raise PrepareError(f"{path}: cannot read the split file ({e})") from e
    if not splits or not all(isinstance(v, set) for v in splits.values()):
        raise PrepareError(f'{path}: expected {{"train": [...], "test": [...]}}')
    return splits


class PreparedBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the two builders: subclasses index the manual folder and name the example job."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = CONFIGS
    example_job: Callable  # prepare_pix3d / prepare_omniobject3d
    textured = False  # the meshes come with textures: say (and count) when one does not load

    def __init__(self, *, strict: bool = False, num_workers: int | None = None,
                 split_file: str | None = None, test_fraction: float = 0.1,
                 caption_template: str | None = None, log: Callable[[str], None] | None = None,
                 keep_implausible: bool = False, view_selection: str | None = None,
                 view_seed: int | None = None, **kwargs):  # fmt: skip
        super().__init__(**kwargs)
        if num_workers is not None and num_workers < 0:
            raise UserError(f"--num_workers must be >= 0 (0: all cores), got {num_workers}")
        if not 0.0 <= test_fraction < 1.0:
            raise UserError(f"--test_fraction must be in [0, 1), got {test_fraction}")
        self.strict, self.split_file, self.test_fraction = strict, split_file, test_fraction
        self.keep_implausible = keep_implausible
        self.num_workers = num_workers or os.cpu_count() or 1
        self.spec = self.builder_config.spec
        if caption_template is not None:
            if "{category}" not in caption_template:
                raise UserError(f"--caption_template {caption_template!r} lacks '{{category}}'")
            self.spec = dataclasses.replace(self.spec, caption_template=caption_template)
        if view_selection is not None:
            if view_selection not in VIEW_SELECTIONS:
                raise UserError(f"--view_selection must be one of {VIEW_SELECTIONS}, "
                                f"got {view_selection!r}")  # fmt: skip
            self.spec = dataclasses.replace(self.spec, view_selection=view_selection)
        if view_seed is not None:
            self.spec = dataclasses.replace(self.spec, view_seed=int(view_seed))
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.skipped: collections.Counter[str] = collections.Counter()
        self.written: collections.Counter[str] = collections.Counter()
        self.shapes: collections.Counter[str] = collections.Counter()  # prepared, warnings
        self.beam = False  # set from the download config: tfds runs a Beam pipeline
        self._pool = None  # the process pool, while preparing

    # -- subclass hooks --------------------------------------------------------------------
    def extra_features(self) -> dict:
        return {}

    def index(self, root: str) -> tuple[list[dict], dict[str, str]]:
        """(items with 'key' and 'shape_id', {shape_id: mesh path})."""
        raise NotImplementedError

    # -- tfds ------------------------------------------------------------------------------
    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        features = common_features(config.spec, config.image_encoding) | self.extra_features()
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(features))

    # tfds prints a download banner and a done line on stdout; nothing downloads here
    def _log_download_bytes(self) -> None:
        self.log(f"preparing {self.name}/{self.builder_config.name} in {self.data_dir}")

    def _log_download_done(self) -> None:
        pass

    def _split_generators(self, dl_manager):
        root = os.fspath(dl_manager.manual_dir)
        if not os.path.isdir(root):
            raise PrepareError(f"manual_dir {root} does not exist")
        items, self._shape_paths = self.index(root)
        if self.split_file:
            user = read_split_file(self.split_file)
            splits = {name: [it for it in items if it["key"] in keys or it["shape_id"] in keys]
                      for name, keys in user.items()}  # fmt: skip
        else:
            test = split_by_shape([it["shape_id"] for it in items], self.test_fraction)
            splits = {"train": [it for it in items if it["shape_id"] not in test],
                      "test": [it for it in items if it["shape_id"] in test]}  # fmt: skip
        return {name: self._generate_examples(its, name) for name, its in splits.items() if its}

    def _download_and_prepare(self, dl_manager, download_config):
        # tfds builds a Beam pipeline when given a runner or options; so do the builders
        self.beam = download_config.beam_runner is not None or bool(download_config.beam_options)
        try:
            return super()._download_and_prepare(dl_manager, download_config)
        finally:
            if self._pool is not None:
                self._pool.terminate()
                self._pool = None

    def _progress(self, results, total: int, desc: str) -> Iterator[tuple]:
        """A tqdm bar on a terminal; elsewhere (logs, CI) a plain line per tenth done."""
        if sys.stderr.isatty():
            yield from tqdm(results, total=total, desc=desc, file=sys.stderr)
            return
        step = max(1, -(-total // 10))
        for done, result in enumerate(results, 1):
            yield result
            if done % step == 0 or done == total:
                self.log(f"{desc}: {done}/{total}")

    def _map(self, fn, jobs, desc: str) -> Iterator[tuple]:
        """fn over jobs, in the worker pool (started once, for every pass) when there is one."""
        if self.num_workers <= 1 or len(jobs) <= 1:
            yield from self._progress(map(fn, jobs), len(jobs), desc)
            return
        if self._pool is None:
            ctx = multiprocessing.get_context("spawn")  # never fork a process with TF threads
            self._pool = ctx.Pool(self.num_workers, initializer=_one_thread)
        yield from self._progress(self._pool.imap_unordered(fn, jobs), len(jobs), desc)

    def tally(self, log=None, count=None) -> Tally:
        """The bookkeeping of one worker: this builder's counters, or the given `count`."""
        return Tally(self.spec, self.strict, self.keep_implausible, log or self.log,
                     count or self._count)  # fmt: skip

    def _count(self, kind: str, name: str, n: int) -> None:
        {"skipped": self.skipped, "shapes": self.shapes, "written": self.written}[kind][name] += n

    def skip(self, reason: str, path: str, detail: str = "", count: int = 1) -> None:
        self.tally().skip(reason, path, detail, count)

    def _generate_examples(self, items: list[dict], split: str):
        """The split's examples: a generator over the process pool, or under Beam the
        PTransform (`builders.beam`) that does the same per shape on the runner's workers."""
        by_shape = collections.defaultdict(list)
        for it in items:
            by_shape[it["shape_id"]].append(it)
        groups = [(sid, self._shape_paths[sid], by_shape[sid]) for sid in sorted(by_shape)]
        if getattr(self, "beam", False):
            from data_pipelines.builders.beam import PrepareExamples

            return PrepareExamples(groups, split, self.worker_settings())
        return self._pool_examples(groups, items, split)

    def worker_settings(self) -> dict:
        """What a Beam worker needs to prepare a group (plain values: it is pickled)."""
        return {"spec": self.spec, "strict": self.strict, "textured": self.textured,
                "keep_implausible": self.keep_implausible,
                "example_job": type(self).example_job}  # fmt: skip

    def _pool_examples(self, groups, items: list[dict], split: str):
        """Two passes over the pool: every shape once (the slow part), then every example."""
        tally = self.tally()
        jobs = [(sid, path, self.spec, self.textured) for sid, path, _ in groups]
        counts = {sid: len(its) for sid, _, its in groups}
        shapes = {}
        for result in self._map(prepare_shape, jobs, f"{split} shapes"):
            shape = tally.shape(result, counts[result[1]])
            if shape is not None:
                shapes[result[1]] = shape
        jobs = [(it, shapes[it["shape_id"]], self.spec) for it in items if it["shape_id"] in shapes]
        for result in self._map(type(self).example_job, jobs, f"{split} examples"):
            example = tally.example(result, split)
            if example is not None:
                yield example

    def _process_pipeline_result(self, pipeline_result) -> None:
        """Under Beam: the workers' counts (Beam metrics) into this builder's counters."""
        from data_pipelines.builders.beam import read_counts

        for kind, name, n in read_counts(pipeline_result):
            self._count(kind, name, n)


def _one_thread() -> None:
    """Pool initializer: one libigl thread per worker (the pool already uses every core)."""
    os.environ["IGL_NUM_THREADS"] = "1"
