"""`python -m nd3d_jax.reproduce`: the paper's Tables 2 and 3 beside our numbers.

    python -m nd3d_jax.reproduce --out=OUT [--config=configs/evaluate.py[:variant]] \\
        [--params=WORKDIR] [--config.reproduce.omniobject3d=TFDS] [--config.reproduce.pix3d=TFDS]

Table 2 (CMMD, FID_CLIP, CLIP-score; Section 4.3): for each data set given a prepared folder,
the test objects are generated with the model of WORKDIR and evaluated
(`nd3d_jax.evaluate`, into OUT/<data set>/), beside the paper's rows.
Table 3 (Section 4.4): parameters of each module and in total, FLOPs of one generation (XLA's
cost analysis and the analytic count), frames per second and seconds per object measured on
this device (definitions in `nd3d_jax.metrics.model_cost`), beside 475.9M / 510.4G / 32.5 / 7 s.
OUT gets tables.md and tables.json, with the device, software versions, config and seeds.
On `:demo` (after `make demo`) it runs end to end on the synthetic data on a CPU: the numbers
mean nothing there, the pipeline is exercised.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import tempfile
import time

import ml_collections
import numpy as np

from nd3d_jax import cli, config_cli
from nd3d_jax.config_check import Int, Path
from nd3d_jax.errors import UserError

FLAGS = {"out": "output folder", "params": "the trainer WORKDIR", "seed": "generation seed"}
DATASETS = ("omniobject3d", "pix3d")
TABLE2_COLUMNS = ("cmmd", "fid_clip", "clip_score")


def _log(msg: str) -> None:
    print(f"[reproduce {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def software() -> dict:
    import flax
    import jax
    import jaxlib

    dev = jax.devices()[0]
    return {"python": platform.python_version(), "jax": jax.__version__,
            "jaxlib": jaxlib.__version__, "flax": flax.__version__, "numpy": np.__version__,
            "device": f"{jax.device_count()} x {dev.device_kind} ({dev.platform})"}  # fmt: skip


def table2(config: ml_collections.ConfigDict, generator, out: str, seed) -> dict:
    """{data set: evaluation means and unavailable metrics} for each prepared folder given."""
    from nd3d_jax import evaluate

    results = {}
    for name in DATASETS:
        data_dir = config.reproduce[name]
        if not data_dir:
            _log(f"Table 2: no {name} (set --config.reproduce.{name}=TFDS_DIR)")
            continue
        config.unlock()
        config.data.update(dataset=name, data_dir=data_dir)
        config.lock()
        folder = os.path.join(out, name)
        generated = evaluate.generate_test_objects(config, {"out": folder, "seed": seed},
                                                   generator)  # fmt: skip
        report = evaluate.evaluate(config, generated, folder)
        results[name] = {"mean": report["mean"], "unavailable": report["unavailable"],
                         "objects": report["objects"], "folder": folder}  # fmt: skip
    return results


def _timing_object(folder: str, out: str):
    """One object to time: the first exported test input, else a synthetic one."""
    from data_pipelines.export_examples import write_synthetic_inputs
    from nd3d_jax.pipeline.inputs import read_jsonl

    for name in DATASETS:
        path = os.path.join(out, name, "inputs", "inputs.jsonl")
        if os.path.isfile(path):
            rows = [r for r in read_jsonl(path) if not isinstance(r, Exception)]
            if rows:
                return rows[0]
    row = write_synthetic_inputs(folder, ["chair"])[0]
    from nd3d_jax.pipeline.inputs import ObjectInput

    return ObjectInput(row["name"], row["image"], row["text"], row["coarse_mesh"])


def table3(config: ml_collections.ConfigDict, generator, out: str) -> dict:
    """Parameters, FLOPs, FPS and seconds per object on this device."""
    from nd3d_jax.metrics.model_cost import DiffusionCost, parameter_counts

    counts = {f"neurodiff3d/{k}": v for k, v in parameter_counts(generator.model.params).items()
              if k != "total"}  # fmt: skip
    for kind, shap_e in sorted(generator._shap_e.items()):
        for part in ("prior", "renderer", "encoder"):
            n = parameter_counts(getattr(shap_e, f"{part}_params"))["total"]
            counts[f"shap_e_{kind}/{part}"] = n
    total = sum(counts.values())
    with tempfile.TemporaryDirectory() as tmp:
        obj = _timing_object(tmp, out)
        _log(f"Table 3: timing {obj.name} (a first run compiles)")
        generator.generate(obj.image, obj.text, obj.coarse_mesh, name=obj.name)
        repeats = max(1, int(config.reproduce.repeats))
        runs = [generator.generate(obj.image, obj.text, obj.coarse_mesh, name=obj.name)
                for _ in range(repeats)]  # fmt: skip
    seconds = [sum(r.seconds.values()) for r in runs]
    last = runs[-1]
    s = config.sample
    example = generator.model.example(last.refined, last.image, obj.text)
    cost = DiffusionCost(generator.model, example, s.guidance)
    flops = cost.flops(int(s.num_steps))
    fps = cost.steps_per_second(repeats)
    return {
        "params": counts, "params_total": total, "flops": flops, "num_steps": int(s.num_steps),
        "fps": fps, "seconds_per_object": float(np.median(seconds)),
        "stage_seconds": {k: float(np.median([r.seconds[k] for r in runs]))
                          for k in last.seconds},
        "timed_object": obj.name, "repeats": repeats,
    }  # fmt: skip


def _cell(value, scale: float = 1.0, digits: int = 3) -> str:
    return "—" if value is None else f"{value / scale:.{digits}f}"


def _row(label: str, values: dict) -> str:
    return f"| {label} | " + " | ".join(_cell(values.get(c)) for c in TABLE2_COLUMNS) + " |"


def markdown(t2: dict, t3: dict, meta: dict) -> str:
    from configs.evaluate import PAPER_BASELINES, PAPER_TABLE2, PAPER_TABLE3

    sw = meta["software"]
    lines = ["# Reproduction of Tables 2 and 3", "",
             f"Device: {sw['device']}; jax {sw['jax']}, flax {sw['flax']}; seed {meta['seed']}; "
             f"model `{meta['params']}`.", ""]  # fmt: skip
    if meta["command_line"]:
        lines += [f"`{meta['command_line']}`", ""]
    lines += ["## Table 2: generation quality", ""]
    if not t2:
        lines += ["No data set given (set --config.reproduce.omniobject3d / .pix3d).", ""]
    for name, r in t2.items():
        lines += [f"### {name} ({r['objects']} test objects)", "",
                  "| method | CMMD ↓ | FID_CLIP ↓ | CLIP-score ↑ |", "|---|---|---|---|",
                  _row("NeuroDiff3D (paper)", PAPER_TABLE2[name])]  # fmt: skip
        lines += [_row(f"{base} (paper)", v) for base, v in PAPER_BASELINES[name].items()]
        lines.append(_row("**ours (this run)**", r["mean"]))
        extra = {k: v for k, v in r["mean"].items() if k not in TABLE2_COLUMNS}
        if extra:
            lines += ["", "Also measured: " + ", ".join(f"{k} {v:.4f}" for k, v in extra.items())]
        missing = sorted(r["unavailable"].items())
        if missing:
            lines += ["", "Unavailable: " + "; ".join(f"{k}: {v}" for k, v in missing)]
        lines.append("")
    f, p = t3["flops"], PAPER_TABLE3
    stages = ", ".join(f"{k} {v:.2f}" for k, v in t3["stage_seconds"].items())
    lines += ["## Table 3: cost", "", "| | paper | ours |", "|---|---|---|",
              f"| Params (M) | {p['params_m']} | {t3['params_total'] / 1e6:.1f} |",
              f"| GFLOPs per object (XLA / analytic UNet) | {p['gflops']} | "
              f"{f['xla_object'] / 1e9:.1f} / {f['analytic_object_unet'] / 1e9:.1f} |",
              "| GFLOPs per guided step (XLA / analytic UNet) | — | "
              f"{f['xla_step'] / 1e9:.2f} / {f['analytic_step_unet'] / 1e9:.2f} |",
              f"| FPS (guided steps/s, one object) | {p['fps']} | {t3['fps']:.1f} |",
              f"| Seconds per object | {p['seconds']} | {t3['seconds_per_object']:.2f} |", "",
              f"Seconds per stage (median of {t3['repeats']}): {stages}.", "",
              "| module | parameters |", "|---|---|"]  # fmt: skip
    lines += [f"| {k} | {v:,} |" for k, v in t3["params"].items()]
    lines += ["", "FLOPs and FPS as defined in `nd3d_jax/metrics/model_cost.py` (the paper "
              f"does not define them); {t3['num_steps']} steps per object."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(config: ml_collections.ConfigDict, workdir, args: dict) -> None:
    from nd3d_jax.pipeline.generator import Generator

    del workdir
    out = args["out"]
    if not out:
        raise UserError("--out=DIR is required")
    if args["params"]:
        config.unlock()
        config.params = args["params"]
        config.lock()
    seed = int(args["seed"]) if args["seed"] is not None else config.seed
    generator = Generator(config, log=_log)
    t2 = table2(config, generator, out, seed)
    t3 = table3(config, generator, out)
    command = None  # in-process callers (tests) have another program's argv
    if sys.argv and sys.argv[0].endswith(os.path.join("nd3d_jax", "reproduce.py")):
        command = "python -m nd3d_jax.reproduce " + shlex.join(sys.argv[1:])
    meta = {"software": software(), "command_line": command, "params": config.params,
            "seed": seed, "config": config.to_dict()}  # fmt: skip
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "tables.json"), "w") as f:
        json.dump({"table2": t2, "table3": t3, **meta}, f, indent=2, default=str)
    text = markdown(t2, t3, meta)
    with open(os.path.join(out, "tables.md"), "w") as f:
        f.write(text)
    print(text)
    _log(f"wrote {out}/tables.md and tables.json")


def default_argv(argv: list[str]) -> list[str]:
    """`argv` with `--config=configs/evaluate.py` (the paper variant) when it has none."""
    if config_cli.split_argv(argv)[0] is not None:
        return argv
    import configs.evaluate

    return [argv[0], f"--config={configs.evaluate.__file__}", *argv[1:]]


CLI = dict(command="evaluate", needs_workdir=False, extra_flags=FLAGS,
           flag_keys={"params": "params"},
           flag_specs={"out": Path("out"), "seed": Int(0)})  # fmt: skip

if __name__ == "__main__":
    cli.run(main, **CLI, argv=default_argv(sys.argv))
