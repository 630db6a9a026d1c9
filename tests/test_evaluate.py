"""`nd3d_jax.evaluate` and `nd3d_jax.reproduce` end to end on the tiny model and a tiny
prepared OmniObject3D (2 test shapes), with tiny random metric models (CLIP, LPIPS).

The metrics themselves are checked against their references in test_clip_metrics.py,
test_lpips.py and test_geometry_metrics.py; here: the wiring (what is rendered, compared and
reported), checked on a case with known answers (the ground truth evaluated against itself).
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from metric_fixtures import write_lpips_folder
from PIL import Image

from data_pipelines.export_examples import example_mesh, shape_examples
from nd3d_jax import cli, evaluate, reproduce
from nd3d_jax.config_cli import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory) -> str:
    """A prepared tiny OmniObject3D: 1 training and 2 test shapes (a split file)."""
    from data_pipelines.prepare import prepare
    from data_pipelines.synthetic.omniobject3d import write_omniobject3d

    base = tmp_path_factory.mktemp("eval_data")
    raw = str(base / "raw")
    names = write_omniobject3d(raw, 3, seed=1, num_views=6, image_size=48, log=lambda m: None)
    split = base / "split.json"
    split.write_text(json.dumps({"train": names[:1], "test": names[1:]}))
    data_dir = str(base / "tfds")
    prepare("omniobject3d", raw, data_dir, config="tiny", num_workers=1, log=lambda m: None,
            split_file=str(split))  # fmt: skip
    return data_dir


@pytest.fixture(scope="module")
def metric_weights(tiny_clip, tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("metric_weights")
    return {
        "clip": str(tiny_clip[0]),
        "cmmd_clip": str(tiny_clip[0]),
        "lpips_alex": write_lpips_folder(str(base / "alex"), "alex"),
        "lpips_vgg": write_lpips_folder(str(base / "vgg"), "vgg"),
    }


def _overrides(metric_weights: dict, data_dir: str) -> list[str]:
    out = [f"--config.metrics.{k}={v}" for k, v in metric_weights.items()]
    return [*out, f"--config.reproduce.omniobject3d={data_dir}"]


@pytest.fixture(scope="module")
def reproduced(tiny_model, eval_data, metric_weights, tmp_path_factory) -> str:
    """`python -m nd3d_jax.reproduce` (in-process) on the tiny config: generates the 2 test
    objects, evaluates them (Table 2) and measures Table 3."""
    out = str(tmp_path_factory.mktemp("reproduce"))
    config = "--config=" + os.path.join(ROOT, "configs/evaluate.py:variant=tiny")
    argv = ["reproduce", config, f"--params={tiny_model}", f"--out={out}",
            *_overrides(metric_weights, eval_data)]  # fmt: skip
    cli.run(reproduce.main, command="evaluate", needs_workdir=False,
                   extra_flags=reproduce.FLAGS, argv=argv)  # fmt: skip
    return out


def test_reproduce_writes_both_tables(reproduced, tiny_model):
    with open(os.path.join(reproduced, "tables.json")) as f:
        tables = json.load(f)
    t2 = tables["table2"]["omniobject3d"]
    assert t2["objects"] == 2 and t2["unavailable"] == {}
    for name in ("cmmd", "fid_clip", "clip_score", "clip_i", "lpips_alex", "lpips_vgg",
                 "chamfer_l2", "normal_consistency", "f1@0.1", "f1@0.3", "f1@0.5"):  # fmt: skip
        assert np.isfinite(t2["mean"][name]), name
    assert -1 <= t2["mean"]["clip_score"] <= 1 and 0 <= t2["mean"]["f1@0.5"] <= 1
    # Table 3: the counts add up to the model's parameters, read independently
    from nd3d_jax.pipeline.multiview import load_trained_params

    params, _ = load_trained_params(tiny_model)
    total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    t3 = tables["table3"]
    assert t3["params_total"] == total == sum(t3["params"].values())
    f = t3["flops"]
    # XLA counts every op, the analytic count only the UNet's matmuls and convolutions
    assert 0.8 < f["xla_step"] / f["analytic_step_unet"] < 2.0
    assert f["xla_object"] == pytest.approx(
        f["xla_context"] + t3["num_steps"] * f["xla_step"] + f["xla_decode"]
    )
    assert t3["fps"] > 0 and t3["seconds_per_object"] > 0
    assert "flax" in tables["software"] and tables["seed"] == 0
    text = open(os.path.join(reproduced, "tables.md")).read()
    for paper in ("2.985", "27.354", "0.899", "4.115", "31.651", "475.9", "510.4", "32.5"):
        assert paper in text
    assert "**ours (this run)**" in text
    # the evaluation it ran: report, table, contact sheet (2 objects: one row each)
    folder = os.path.join(reproduced, "omniobject3d")
    report = json.load(open(os.path.join(folder, "metrics.json")))
    assert sorted(r["name"] for r in report["per_object"]) == sorted(report["sheet"]["best"])
    # each generated object's fidelity (refined vs coarse, texture coverage) from summary.json
    for r in report["per_object"]:
        assert r["pieces"] == f"{r['fidelity']['pieces_coarse']}->{r['fidelity']['pieces_refined']}"
        assert 0 < r["refine_f1@0.01"] <= 1 and 0 < r["texture_seen_painted"] <= 1
    assert set(report["mean_fidelity"]) >= {"f1@0.01", "chamfer_l2", "pieces_changed"}
    sheet = np.asarray(Image.open(os.path.join(folder, "contact_sheet.png")))
    assert sheet.shape == (2 * (96 + 14), 2 * 4 * 96 + 8, 3)
    assert "| lpips_vgg |" in open(os.path.join(folder, "metrics.md")).read()


def test_ground_truth_against_itself_scores_perfectly(reproduced, eval_data, metric_weights,
                                                      tmp_path):  # fmt: skip
    """Each test object's own mesh (vertex colours) as the 'generated' one: LPIPS 0, CLIP-I 1,
    Chamfer 0, F-score 1, CMMD 0, FID ~0; a missing metric folder is reported, the rest run."""
    config = load_config(os.path.join(ROOT, "configs/evaluate.py:variant=tiny"))
    config.metrics.update({**metric_weights, "lpips_vgg": str(tmp_path / "no_such_folder")})
    config.data.data_dir = eval_data
    generated = tmp_path / "generated"
    for name, ex in shape_examples(eval_data, "omniobject3d", "tiny", "test", 0):
        (generated / name).mkdir(parents=True)
        example_mesh(ex).export(str(generated / name / "mesh.glb"))
    report = evaluate.evaluate(config, str(generated), str(tmp_path / "out"))
    m = report["mean"]
    assert m["lpips_alex"] == pytest.approx(0.0, abs=1e-6)
    assert m["clip_i"] == pytest.approx(1.0, abs=1e-5)
    # geometry: the same numbers as the metric called directly (the surfaces are sampled
    # independently, so even a mesh against itself has a sampling Chamfer > 0)
    from nd3d_jax.metrics.geometry import mesh_metrics

    name, ex = shape_examples(eval_data, "omniobject3d", "tiny", "test", 1)[0]
    direct = mesh_metrics(example_mesh(ex), example_mesh(ex), samples=2000)
    row = report["per_object"][0]
    assert row["name"] == name
    for key in ("chamfer_l2", "normal_consistency", "f1@0.1", "f1@0.3", "f1@0.5"):
        assert row[key] == pytest.approx(direct[key], rel=1e-9), key
    assert m["f1@0.5"] > 0.95
    assert m["cmmd"] == pytest.approx(0.0, abs=1e-3)
    assert m["fid_clip"] == pytest.approx(0.0, abs=1e-3)
    assert "no_such_folder" in report["unavailable"]["lpips_vgg"]
    assert "lpips_vgg" not in m and report["objects"] == 2
    # the generated objects of the reproduce run score worse than the ground truth itself
    generated_report = json.load(open(os.path.join(reproduced, "omniobject3d", "metrics.json")))
    assert generated_report["mean"]["lpips_alex"] > m["lpips_alex"] + 1e-3


def test_command_errors(tmp_path, capsys):
    def run(*args):
        argv = ["evaluate", "--config=" + os.path.join(ROOT, "configs/evaluate.py:variant=tiny"),
                *args]  # fmt: skip
        with pytest.raises(SystemExit) as e:
            cli.run(evaluate.main, command="evaluate", needs_workdir=False,
                           extra_flags=evaluate.FLAGS, argv=argv)  # fmt: skip
        return e.value.code, capsys.readouterr().err.strip().splitlines()[-1]

    code, err = run(f"--out={tmp_path}", "--data_dir=x")
    assert code == 2 and "exactly one of --generated" in err
    code, err = run(f"--out={tmp_path}", "--generated=x")
    assert code == 2 and "--data_dir" in err
    code, err = run(f"--out={tmp_path}", f"--generated={tmp_path}", f"--data_dir={tmp_path}")
    assert code == 2 and "prepare" in err  # no prepared data set there: names the command
