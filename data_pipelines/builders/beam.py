"""The builders' example generation as an Apache Beam pipeline (tfds's own Beam support).

Given `beam_runner` or `beam_options` (`prepare --beam_runner=... --beam_options=...`), tfds
runs the split generators' PTransforms in one pipeline and writes their output itself; this
module is that PTransform. The unit of work is a shape with its examples: the shape is
prepared once (the slow part), then each of its examples, in the same jobs as the process
pool (`data_pipelines.examples`), so both paths write the same examples under the same keys.
What the pool path counts on the builder (skips by reason, shape warnings, examples written)
the workers count in Beam metrics, which the builder reads back from the pipeline result;
`strict` fails the pipeline at the first bad example, and tfds then leaves no data set.
Imported only when Beam is used (apache_beam is slow to import).
"""

from __future__ import annotations

import logging
import os

import apache_beam as beam
from apache_beam.metrics.metric import Metrics, MetricsFilter

from data_pipelines.builders.tally import Tally
from data_pipelines.examples import prepare_shape

NAMESPACE = "nd3d_prepare"  # metrics "nd3d_prepare/<kind>", kind: skipped, shapes, written
KINDS = ("skipped", "shapes", "written")
LOG = logging.getLogger("data_pipelines.prepare")


class PrepareGroup(beam.DoFn):
    """(shape_id, mesh path, items) -> the shape's (key, example)s, counting as it goes."""

    def __init__(self, split: str, settings: dict):
        self.split, self.settings = split, settings

    def setup(self):
        os.environ.setdefault("IGL_NUM_THREADS", "1")  # one libigl thread per worker
        s = self.settings
        self.tally = Tally(s["spec"], s["strict"], s["keep_implausible"], LOG.info, _count)

    def process(self, group):
        shape_id, path, items = group
        s = self.settings
        result = prepare_shape((shape_id, path, s["spec"], s["textured"]))
        shape = self.tally.shape(result, len(items))
        if shape is None:
            return
        for item in items:
            example = self.tally.example(s["example_job"]((item, shape, s["spec"])), self.split)
            if example is not None:
                yield example


def _count(kind: str, name: str, n: int) -> None:
    Metrics.counter(f"{NAMESPACE}/{kind}", name).inc(n)


class PrepareExamples(beam.PTransform):
    """A split's groups -> (key, example): spread over the workers, one group a task."""

    def __init__(self, groups: list[tuple], split: str, settings: dict):
        super().__init__()
        self.groups, self.split, self.settings = groups, split, settings

    def expand(self, pipeline):
        return (
            pipeline
            | "Groups" >> beam.Create(self.groups, reshuffle=False)
            | "Spread" >> beam.Reshuffle()
            | "Prepare" >> beam.ParDo(PrepareGroup(self.split, self.settings))
        )


def read_counts(pipeline_result) -> list[tuple[str, str, int]]:
    """(kind, name, n) of every count in a finished pipeline, summed over its steps (committed
    values where the runner has them, else attempted)."""
    totals: dict[tuple[str, str], int] = {}
    for counter in pipeline_result.metrics().query(MetricsFilter())["counters"]:
        namespace, name = counter.key.metric.namespace, counter.key.metric.name
        kind = namespace.removeprefix(f"{NAMESPACE}/")
        if kind == namespace or kind not in KINDS:
            continue
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[kind, name] = totals.get((kind, name), 0) + int(value or 0)
    return [(kind, name, n) for (kind, name), n in sorted(totals.items())]
