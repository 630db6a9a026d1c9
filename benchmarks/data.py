"""`python -m nd3d_jax.benchmark data`: SDF signs per shape, and loader examples/s.

SDF signs: seconds per shape to decide inside/outside for the 6144 SDF queries of one shape
(default config) on spheres of about 10k, 100k and 330k faces (raw scans are ~330k), on one
libigl thread: the fast winding number against the exact O(points x faces) sum in the same
run, and the whole preparation of a 330k-face shape (orientation repair, surface and SDF
samples, condition mesh). --quick: 2k faces, 512 queries.

Loader: writes a synthetic Pix3D set in a temporary folder, prepares it with the real builder
(the paper-size `default` config: 512 x 512 images, 4096 surface points, 6144 SDF queries;
`tiny` with --quick) and times batches of the training pipeline (decode,
random flip, batching). The 2-thread row lists the 1-thread row as its reference.

OmniObject3D at full scale: one synthetic object at the real sizes (100 renders of 800 x 800
px, a ~330k-face textured scan; `synthetic.omniobject3d.write_object`), hard-linked under
other names, prepared with the paper-size config on 1 and 2 worker processes. Each worker
count runs twice, on k and 3k objects: the difference gives the seconds per object (start-up
excluded), which project the full set (OMNI_OBJECTS) as start-up + n x per object. The machine
load (1-minute average) before and after is in the device column. --quick: tiny sizes, 1 core.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import numpy as np
import trimesh

from data_pipelines.examples import Spec, prepare_shape
from data_pipelines.loader import data_source, make_iterator
from data_pipelines.mesh_repair import repair_orientation
from data_pipelines.prepare import prepare
from data_pipelines.shape_samples import inside, shape_samples
from data_pipelines.synthetic.omniobject3d import write_object
from data_pipelines.synthetic.pix3d import write_pix3d
from nd3d_jax.benchmark import BenchOptions, Record, measure

BATCH = 4
SIGN_FACES = (10_000, 100_000, 330_000)
SDF_QUERIES = 6144  # the default config's 4096 near-surface + 2048 uniform queries


def _sphere(faces: int) -> trimesh.Trimesh:
    """A unit-diameter UV sphere with about `faces` faces (4 n^2 for n rings and segments)."""
    n = round((faces / 4) ** 0.5)
    return trimesh.creation.uv_sphere(radius=0.5, count=[n, n])


def sign_suite(opts: BenchOptions) -> list[Record]:
    """Seconds per shape for the SDF signs, fast vs exact winding number, one thread."""
    os.environ["IGL_NUM_THREADS"] = "1"  # read by libigl at its first parallel call
    queries = 512 if opts.quick else SDF_QUERIES
    records = []
    for target in (2_000,) if opts.quick else SIGN_FACES:
        mesh = _sphere(target)
        near = shape_samples(mesh, num_surface=1, num_near=queries * 2 // 3,
                             num_uniform=queries - queries * 2 // 3).sdf_points  # fmt: skip
        start = time.perf_counter()
        reference = inside(mesh, near, exact=True)  # ~70 s at 330k faces: timed once
        exact = time.perf_counter() - start
        fast = measure(lambda m=mesh, q=near: inside(m, q), warmup=1, repeats=max(3, opts.repeats))
        same = bool((inside(mesh, near) == reference).all())
        records.append(Record(
            name=f"sdf_signs_{len(mesh.faces) // 1000}k_faces",
            device="host CPU, 1 thread",
            shape=f"{len(mesh.faces)} faces, {queries} queries, signs equal exact: {same}",
            median_s=fast, repeats=max(3, opts.repeats), throughput=1 / fast,
            throughput_unit="shapes/s", reference="exact winding number (same run)",
            reference_median_s=exact,
        ))  # fmt: skip
    if not opts.quick:  # one whole shape as `prepare` does it, from an OBJ on disk
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "scan.obj")
            mesh = _sphere(SIGN_FACES[-1])
            trimesh.Trimesh(mesh.vertices, np.asarray(mesh.faces)[:, ::-1]).export(path)
            total = measure(lambda: prepare_shape(("scan", path, Spec())), warmup=0, repeats=1)
            repair = measure(lambda: repair_orientation(mesh), warmup=0, repeats=1)
        records.append(Record(
            name="prepare_shape_330k_faces", device="host CPU, 1 thread",
            shape=f"{len(mesh.faces)} faces, inward-facing OBJ; repair alone {repair:.2f} s",
            median_s=total, repeats=1, throughput=1 / total, throughput_unit="shapes/s",
        ))  # fmt: skip
    return records


def suite(opts: BenchOptions) -> list[Record]:
    return sign_suite(opts) + loader_suite(opts) + omniobject3d_suite(opts)


OMNI_OBJECTS = 6000  # OmniObject3D: about 6,000 objects in 190 categories
FULL_SIZE = {"num_views": 100, "image_size": 800, "scan_faces": 330_000}  # render_blender.py
QUICK_SIZE = {"num_views": 6, "image_size": 48, "scan_faces": 2_000}


def _omni_copies(src: str, name: str, count: int, out: str) -> None:
    """`count` objects in `out`: the one written under `src`, hard-linked under new names."""
    for source in ("raw_scans", "blender_renders"):
        for i in range(count):
            shutil.copytree(os.path.join(src, source, "chair", name),
                            os.path.join(out, source, "chair", f"chair_{i + 1:03d}"),
                            copy_function=os.link)  # fmt: skip


def omniobject3d_suite(opts: BenchOptions) -> list[Record]:
    """Seconds per OmniObject3D object at the real sizes, on 1 and 2 worker processes."""
    sizes, config = (QUICK_SIZE, "tiny") if opts.quick else (FULL_SIZE, "default")
    quiet = lambda msg: None  # noqa: E731
    os.environ["IGL_NUM_THREADS"] = "1"  # the 1-worker runs are in this process: one core
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "src")
        name = write_object(src, "chair", 1, seed=0, **sizes)
        with open(os.path.join(src, "raw_scans", "chair", name, "Scan", "Scan.obj")) as f:
            faces = sum(line.startswith("f ") for line in f)
        # process warm-up (TensorFlow's image encoders, tfds) outside the timed runs
        _omni_copies(src, name, 1, os.path.join(tmp, "warmup"))
        prepare("omniobject3d", os.path.join(tmp, "warmup"), os.path.join(tmp, "tfds_warmup"),
                config="tiny", num_workers=1, test_fraction=0.0, log=quiet)  # fmt: skip
        for workers in (1,) if opts.quick else (1, 2):
            load = os.getloadavg()[0]
            walls = {}
            for count in (workers, 3 * workers):
                raw = os.path.join(tmp, f"raw_{workers}_{count}")
                _omni_copies(src, name, count, raw)
                start = time.perf_counter()
                # one split: every run's jobs go to its pool (start-up in both runs alike)
                report = prepare("omniobject3d", raw, os.path.join(tmp, f"tfds_{workers}_{count}"),
                                 config=config, num_workers=workers, test_fraction=0.0,
                                 log=quiet)  # fmt: skip
                walls[count] = time.perf_counter() - start
                assert sum(report["written"].values()) == count, report
            (n1, w1), (n2, w2) = sorted(walls.items())
            per = max((w2 - w1) / (n2 - n1), 1e-9)  # --quick's tiny objects: within noise
            full = w1 - n1 * per + OMNI_OBJECTS * per
            ref = records[0] if records else None
            records.append(Record(
                name=f"prepare_omniobject3d_{config}_{workers}core",
                device=f"host CPU ({os.cpu_count()} cores, load {load:.1f}-"
                       f"{os.getloadavg()[0]:.1f})",
                shape=f"{sizes['num_views']} renders x {sizes['image_size']} px, {faces} faces;"
                      f" {n1}/{n2} objects in {w1:.0f}/{w2:.0f} s; {OMNI_OBJECTS:,} objects:"
                      f" {full / 3600:.1f} h",
                median_s=per, repeats=1, throughput=1 / per, throughput_unit="objects/s",
                reference=ref and f"{ref.name} (same run)",
                reference_median_s=ref and ref.median_s,
            ))  # fmt: skip
    return records


def loader_suite(opts: BenchOptions) -> list[Record]:
    config = "tiny" if opts.quick else "default"
    quiet = lambda msg: None  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        raw, data_dir = os.path.join(tmp, "raw"), os.path.join(tmp, "tfds")
        write_pix3d(raw, 3 if opts.quick else 6, num_views=2,
                    image_size=48 if opts.quick else 256, log=quiet)  # fmt: skip
        prepare("pix3d", raw, data_dir, config=config, log=quiet)
        source = data_source(data_dir, "pix3d", "train", config=config)
        records = []
        for threads in (1, 2):
            it = make_iterator(source, batch_size=BATCH, train=True, seed=0, shard_index=0,
                               shard_count=1, num_threads=threads, prefetch=0)  # fmt: skip
            median = measure(lambda it=it: next(it), warmup=opts.warmup + 1,
                             repeats=max(8, opts.repeats))  # fmt: skip
            ref = records[0] if records else None
            records.append(Record(
                name=f"loader_pix3d_{config}_{threads}thread",
                device=f"host CPU ({os.cpu_count()} cores)",
                shape=f"batch {BATCH}, {source[0]['image'].shape[0]} px, {len(source)} examples",
                median_s=median,
                repeats=max(8, opts.repeats),
                throughput=BATCH / median,
                throughput_unit="examples/s",
                reference=ref and f"{ref.name} (same pipeline)",
                reference_median_s=ref and ref.median_s,
            ))  # fmt: skip
    return records
