"""`python -m nd3d_jax.benchmark NAME [NAME ...] [--out=FILE.json] [--repeats=N] [--quick]`

Each suite is a module with `suite(opts: BenchOptions) -> list[Record]`, imported only when
asked for. Times are medians over `repeats` calls after `warmup` calls, with every result
blocked on; a record that names a reference implementation timed it in the same run, and
`ratio` is ours / reference (below 1: we are faster). Prints a markdown table; `--out` writes
the records as a JSON list.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import jax

from nd3d_jax import compile_cache
from nd3d_jax.config_cli import ArgumentParser

SUITES = {
    "geometry": "benchmarks.geometry",
    "render": "benchmarks.render",
    "data": "benchmarks.data",
    "encoders": "benchmarks.encoders",
    "diffusion": "benchmarks.diffusion",
    "train": "benchmarks.train",
    "prior": "benchmarks.prior",
    "generate": "benchmarks.generate",
    "refine": "benchmarks.refine",
    "unwrap": "benchmarks.unwrap",
}


@dataclasses.dataclass
class BenchOptions:
    quick: bool = False  # tiny sizes: smoke runs in tests and CI
    repeats: int = 5
    warmup: int = 1


@dataclasses.dataclass
class Record:
    name: str
    device: str
    shape: str
    median_s: float
    repeats: int
    throughput: float | None = None
    throughput_unit: str | None = None
    reference: str | None = None
    reference_median_s: float | None = None
    ratio: float | None = None  # median_s / reference_median_s
    xla_flops: float | None = None  # XLA cost_analysis() of the compiled program
    analytic_flops: float | None = None  # counted by hand from the configuration
    notes: str | None = None  # what else the suite measured (printed as a last column)

    def __post_init__(self):
        if self.reference_median_s and self.ratio is None:
            self.ratio = self.median_s / self.reference_median_s


def device_name() -> str:
    d = jax.devices()[0]
    return f"{d.platform}: {d.device_kind} x{jax.device_count()}"


def measure(fn: Callable[[], object], *, warmup: int = 1, repeats: int = 5) -> float:
    """Median wall time of `fn()` in seconds, blocking on its (JAX) result each call."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _fmt(x: float | None, scale: float = 1.0, digits: int = 3) -> str:
    return "" if x is None else f"{x * scale:.{digits}g}"


def markdown_table(records: list[Record]) -> str:
    head = "| name | device | shape | median ms | throughput | reference | ref ms | ratio |"
    flops = any(r.xla_flops or r.analytic_flops for r in records)
    notes = any(r.notes for r in records)
    head += " GFLOP xla / analytic |" if flops else ""
    head += " notes |" if notes else ""
    rows = [head, "|" + "---|" * (8 + flops + notes)]
    for r in records:
        tput = f"{r.throughput:.4g} {r.throughput_unit}" if r.throughput is not None else ""
        rows.append(
            f"| {r.name} | {r.device} | {r.shape} | {_fmt(r.median_s, 1e3, 4)} | {tput} | "
            f"{r.reference or ''} | {_fmt(r.reference_median_s, 1e3, 4)} | {_fmt(r.ratio)} |"
            + (
                f" {_fmt(r.xla_flops, 1e-9, 4)} / {_fmt(r.analytic_flops, 1e-9, 4)} |"
                if flops
                else ""
            )
            + (f" {r.notes or ''} |" if notes else "")
        )
    return "\n".join(rows)


def run_suites(names: list[str], opts: BenchOptions) -> list[Record]:
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        raise ValueError(f"unknown benchmark {unknown}; available: {', '.join(sorted(SUITES))}")
    records = []
    for name in names:
        print(f"[benchmark] {name} ...", file=sys.stderr, flush=True)
        t = time.perf_counter()
        records += importlib.import_module(SUITES[name]).suite(opts)
        print(f"[benchmark] {name} done in {time.perf_counter() - t:.1f}s", file=sys.stderr)
    return records


def main(argv: list[str] | None = None) -> list[Record]:
    parser = ArgumentParser(prog="python -m nd3d_jax.benchmark", description=__doc__)
    parser.add_argument("names", nargs="+", help=f"suites: {', '.join(sorted(SUITES))}")
    parser.add_argument("--out", help="write the records to this JSON file")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    args = parser.parse_args(argv)
    try:
        compile_cache.setup()  # programs compiled by an earlier run load from the cache
        records = run_suites(args.names, BenchOptions(args.quick, args.repeats, args.warmup))
    except ValueError as e:  # UserError included
        parser.error(str(e))
    print(markdown_table(records))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump([dataclasses.asdict(r) for r in records], f, indent=2)
        print(f"wrote {args.out}", file=sys.stderr)
    return records


if __name__ == "__main__":
    main()
