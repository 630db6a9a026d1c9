"""`python -m nd3d_jax.evaluate`: the paper's metrics on a test split.

    python -m nd3d_jax.evaluate --config=configs/evaluate.py[:variant] \\
        (--generated=DIR | --params=WORKDIR) --data_dir=TFDS_DIR [--split=test] --out=OUT

--generated: a folder of `generate` results, one `<name>/mesh.glb` per test object (`<name>`
as `data_pipelines.export_examples` names them; `make demo` writes out/demo/generated). A mesh
with vertex colours instead of a texture (another method's output) is rendered with those.
--params: a trainer WORKDIR; the test objects are first exported to OUT/inputs and generated
into OUT/generated (objects already there are kept), then evaluated.

For each test object the ground-truth mesh (the prepared mesh with its colours) and the
generated textured mesh are rendered by our rasterizer at the same K cameras
(`config.views`), and every metric of `nd3d_jax.metrics.suite` is computed. OUT gets
metrics.json (per object, means, set metrics, unavailable metrics and why), metrics.md and
contact_sheet.png (ground truth | generated for the worst and best 8 objects by LPIPS;
every object once when there are at most 16).
"""

from __future__ import annotations

import json
import os
import sys
import time

import ml_collections
import numpy as np

from nd3d_jax import cli
from nd3d_jax.config_check import Int, Path
from nd3d_jax.errors import UserError

FLAGS = {
    "generated": "a folder of generated objects (<name>/mesh.glb)",
    "params": "a trainer WORKDIR: generate the test objects first",
    "data_dir": "the prepared data (tfds folder); default config.data.data_dir",
    "split": "the split (default config.data.split)",
    "out": "output folder",
    "seed": "generation seed (default config.seed)",
}
SHEET_ROWS = 8


def _log(msg: str) -> None:
    print(f"[evaluate {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def apply_flags(config: ml_collections.ConfigDict, args: dict) -> None:
    """--data_dir, --split and --params override the config."""
    config.unlock()
    if args.get("data_dir"):
        config.data.data_dir = args["data_dir"]
    if args.get("split"):
        config.data.split = args["split"]
    if args.get("params"):
        config.params = args["params"]
    config.lock()
    if bool(args.get("generated")) == bool(args.get("params")):
        raise UserError("give exactly one of --generated=DIR and --params=WORKDIR")
    if not args.get("out"):
        raise UserError("--out=DIR is required")
    if not config.data.data_dir:
        raise UserError("--data_dir=TFDS_DIR is required (the prepared data's folder)")
    if config.coarse not in ("prior", "ground_truth"):
        raise UserError(f"coarse={config.coarse!r}: use 'prior' or 'ground_truth'")


def generate_test_objects(config: ml_collections.ConfigDict, args: dict, generator=None) -> str:
    """Exports the test objects and generates them (skipping done ones) with `generator` (or
    one loaded from `config.params`); returns the folder."""
    from data_pipelines.export_examples import export_examples
    from nd3d_jax import generate

    d, out = config.data, args["out"]
    with_mesh = config.coarse == "ground_truth"
    inputs = export_examples(d.data_dir, d.dataset, d.config_name, d.split, d.count,
                             os.path.join(out, "inputs"), with_mesh)  # fmt: skip
    folder = os.path.join(out, "generated")
    generate.run(config, {"inputs": inputs, "out": folder, "image": None, "text": None,
                          "coarse_mesh": None, "seed": args.get("seed")}, generator)  # fmt: skip
    return folder


def evaluate(config: ml_collections.ConfigDict, generated: str, out: str, suite=None) -> dict:
    """Renders, measures and writes the report for every test object; returns the report."""
    from tqdm import tqdm

    from data_pipelines.export_examples import example_mesh, shape_examples
    from nd3d_jax.metrics.suite import MetricSuite, mean_of
    from nd3d_jax.pipeline.multiview import view_cameras
    from nd3d_jax.texture.views import load_mesh_file, render_colored, render_mesh

    d, t0 = config.data, time.perf_counter()
    examples = shape_examples(d.data_dir, d.dataset, d.config_name, d.split, d.count)
    if not os.path.isdir(generated):
        raise UserError(f"--generated={generated}: no such folder")
    suite = suite or MetricSuite(config, log=_log)
    cams = view_cameras(config.views, config.views.count, config.views.size)
    rows, missing, gt_all, gen_all, strips = [], [], [], [], {}
    for name, ex in tqdm(examples, desc="evaluate", unit="object", file=sys.stderr,
                         disable=len(examples) < 2):  # fmt: skip
        path = os.path.join(generated, name, "mesh.glb")
        if not os.path.isfile(path):
            missing.append(name)
            continue
        gt_mesh, gen_mesh = example_mesh(ex), load_mesh_file(path)
        gt = render_colored(gt_mesh, cams, f"{name} (ground truth)")
        gen = render_mesh(gen_mesh, cams, path)
        caption = ex["caption"].decode() if isinstance(ex["caption"], bytes) else ex["caption"]
        metrics = suite.per_object(gt, gen, str(caption), gt_mesh, gen_mesh)
        rows.append({"name": name, "caption": str(caption), **metrics,
                     **_fidelity(os.path.join(generated, name))})  # fmt: skip
        gt_all.append(gt)
        gen_all.append(gen)
        strips[name] = (gt, gen)
    if missing:
        _log(f"{len(missing)} test objects have no {generated}/<name>/mesh.glb: "
             f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")  # fmt: skip
    if not rows:
        raise UserError(f"{generated} holds none of the {len(examples)} test objects' meshes")
    set_metrics = suite.per_set(np.concatenate(gt_all), np.concatenate(gen_all))
    report = {
        "dataset": d.dataset, "split": d.split, "data_dir": d.data_dir, "generated": generated,
        "objects": len(rows), "missing": missing, "views": config.views.to_dict(),
        "coarse": config.coarse,
        "mean": {**mean_of(rows, suite.names), **set_metrics},
        "mean_fidelity": _mean_fidelity(rows),
        "unavailable": suite.unavailable, "per_object": rows,
        "seconds": round(time.perf_counter() - t0, 1),
    }  # fmt: skip
    write_report(report, out, strips)
    return report


def _fidelity(folder: str) -> dict:
    """The object's fidelity from its summary.json (refined vs coarse, texture coverage): the
    whole dict, and three columns for the table."""
    try:
        with open(os.path.join(folder, "summary.json")) as f:
            fid = json.load(f).get("fidelity") or {}
    except (OSError, ValueError):
        return {}
    if not fid:
        return {}
    return {"fidelity": fid, "pieces": f"{fid['pieces_coarse']}->{fid['pieces_refined']}",
            "refine_f1@0.01": fid["f1@0.01"],
            "texture_seen_painted": fid["texture_visible_painted"]}  # fmt: skip


def _mean_fidelity(rows: list[dict]) -> dict:
    fids = [r["fidelity"] for r in rows if "fidelity" in r]
    if not fids:
        return {}
    out = {k: float(np.mean([f[k] for f in fids])) for k in fids[0] if k.startswith(("f1@",
           "chamfer", "texture_"))}  # fmt: skip
    out["pieces_changed"] = sum(f["pieces_coarse"] != f["pieces_refined"] for f in fids)
    return out


def _sort_metric(rows: list[dict]) -> str | None:
    for name in ("lpips_vgg", "lpips_alex", "clip_i", "chamfer_l2"):
        if rows and all(name in r for r in rows):
            return name
    return None


def write_report(report: dict, out: str, strips: dict) -> None:
    """metrics.json, metrics.md and contact_sheet.png in `out`."""
    from nd3d_jax.metrics.sheet import contact_sheet, markdown

    os.makedirs(out, exist_ok=True)
    rows = report["per_object"]
    key = _sort_metric(rows)
    if key is not None:
        lower = key != "clip_i"
        ranked = sorted(rows, key=lambda r: r[key], reverse=not lower)
        report["sheet"] = {"order": key, "best": [r["name"] for r in ranked[:SHEET_ROWS]],
                           "worst": [r["name"] for r in ranked[::-1][:SHEET_ROWS]]}  # fmt: skip
        if len(ranked) <= 2 * SHEET_ROWS:  # every object once, worst first
            picked = [(f"#{len(ranked) - i} {key} {r[key]:.3f}", r["name"])
                      for i, r in enumerate(ranked[::-1])]  # fmt: skip
        else:
            picked = [(f"worst {key} {r[key]:.3f}", r["name"]) for r in ranked[::-1][:SHEET_ROWS]]
            picked += [(f"best {key} {r[key]:.3f}", r["name"]) for r in ranked[:SHEET_ROWS]]
        contact_sheet([(label, *strips[n]) for label, n in picked],
                      os.path.join(out, "contact_sheet.png"))  # fmt: skip
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(out, "metrics.md"), "w") as f:
        f.write(markdown(report))


def main(config: ml_collections.ConfigDict, workdir, args: dict) -> None:
    del workdir
    apply_flags(config, args)
    generated = args["generated"] or generate_test_objects(config, args)
    report = evaluate(config, generated, args["out"])
    means = ", ".join(f"{k} {v:.4g}" for k, v in report["mean"].items())
    _log(f"{report['objects']} objects: {means}")
    _log(f"wrote {args['out']}/metrics.json, metrics.md, contact_sheet.png")


# cli.run options: --params, --data_dir and --split set their config keys (checked
# with the config); the other flags' values checked up front
CLI = dict(
    command="evaluate",
    needs_workdir=False,
    extra_flags=FLAGS,
    flag_keys={"params": "params", "data_dir": "data.data_dir", "split": "data.split"},
    flag_specs={"generated": Path("folder"), "out": Path("out"), "seed": Int(0)},
)

if __name__ == "__main__":
    cli.run(main, **CLI)
