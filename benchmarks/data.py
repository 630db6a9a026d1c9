"""`python -m nd3d_jax.benchmark data`: loader examples/s with 1 and 2 worker threads.

Writes a synthetic Pix3D set in a temporary folder, prepares it with the real builder (the
paper-size `default` config: 512 x 512 images, 4096 surface points, 6144 SDF queries; `tiny`
with --quick) and times batches of the training pipeline (decode, CLIP normalisation, random
flip, batching). The 2-thread row lists the 1-thread row as its reference.
"""

from __future__ import annotations

import os
import tempfile

from data_pipelines.loader import data_source, make_iterator
from data_pipelines.prepare import prepare
from data_pipelines.synthetic.pix3d import write_pix3d
from nd3d_jax.benchmark import BenchOptions, Record, measure

BATCH = 4


def suite(opts: BenchOptions) -> list[Record]:
    config = "tiny" if opts.quick else "default"
    quiet = lambda msg: None  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        raw, data_dir = os.path.join(tmp, "raw"), os.path.join(tmp, "tfds")
        write_pix3d(raw, 6, num_views=2, image_size=48 if opts.quick else 256, log=quiet)
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
