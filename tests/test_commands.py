"""Every `python -m` command: `--help` lists its own flags and exits 0; each expected mistake is
one line on stderr, exit code 2, no traceback, before any compilation.

The cases run in two child processes (one for `--help`, one for the bad inputs), each command
through `runpy` as `python -m` runs it, so the imports are paid once.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from nd3d_jax.config_cli import config_to_json, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNER = textwrap.dedent(
    """
    import contextlib, io, json, runpy, sys, traceback, warnings
    warnings.filterwarnings("ignore", category=RuntimeWarning, module="runpy")
    results = []
    for module, args in json.load(open(sys.argv[1])):
        out, err, code = io.StringIO(), io.StringIO(), 0
        sys.argv = [module, *args]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_module(module, run_name="__main__", alter_sys=True)
            except SystemExit as e:  # as the interpreter exits: a string is printed, code 1
                if isinstance(e.code, str):
                    print(e.code, file=sys.stderr)
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:
                traceback.print_exc()
                code = 1
        results.append({"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()})
    json.dump(results, sys.__stdout__)
    """
)


def run_all(cases: list[tuple[str, list[str]]], tmp_path) -> list[dict]:
    (tmp_path / "runner.py").write_text(RUNNER)
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    out = subprocess.run(
        [sys.executable, str(tmp_path / "runner.py"), str(tmp_path / "cases.json")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


# module -> flags its --help must list
HELP = {
    "nd3d_jax.train": ["--config", "--workdir", "--print_config", "--verbosity", "--debug"],
    "nd3d_jax.refine_demo": ["--config", "--workdir", "--print_config"],
    "nd3d_jax.params": ["--config", "--print_config"],
    "nd3d_jax.render": ["--out", "--size", "--views", "--kind", "--up"],
    "nd3d_jax.benchmark": ["--out", "--repeats", "--quick"],
    "data_pipelines.prepare": ["--dataset", "--manual_dir", "--data_dir", "--overwrite"],
    "data_pipelines.synthetic": ["--layout", "--out", "--num_objects", "--overwrite"],
    "nd3d_jax.weights.convert": ["--dtype"],
    "nd3d_jax.prior": ["--weights", "--image", "--text", "--out", "--batch", "--grid", "--dtype"],
}


def test_help_lists_each_commands_own_flags(tmp_path):
    results = run_all([(m, ["--help"]) for m in HELP], tmp_path)
    for (module, wanted), r in zip(HELP.items(), results, strict=True):
        text = r["stdout"]
        assert r["code"] == 0, (module, r["stderr"][-2000:])
        missing = [f for f in wanted if f not in text]
        assert not missing, f"{module} --help lacks {missing}"
        # its own flags, not absl's (or grain's, orbax's, ...) hundreds
        assert len(text.splitlines()) < 60 and "--alsologtostderr" not in text, module
        assert "Traceback" not in r["stderr"], module
    train_help = results[0]["stdout"]
    assert "--config=FILE.py --print_config" in train_help  # how to list the config's keys


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    """(name, module, args, words the one error line must contain) for every case."""
    tmp = tmp_path_factory.mktemp("bad_inputs")
    empty = tmp / "empty"
    empty.mkdir()
    # a folder prepared for omniobject3d only (tfds layout: <dataset>/<config>/<version>)
    prepared = tmp / "prepared"
    (prepared / "omniobject3d" / "tiny" / "1.0.0").mkdir(parents=True)
    (prepared / "omniobject3d" / "tiny" / "1.0.0" / "dataset_info.json").write_text("{}")
    # a workdir holding checkpoints of the tiny model
    used = tmp / "used"
    (used / "checkpoints" / "10").mkdir(parents=True)
    tiny = load_config(os.path.join(ROOT, "configs/neurodiff3d.py:variant=tiny"))
    (used / "config.json").write_text(config_to_json(tiny))
    stale = tmp / "stale_dataset"
    stale.mkdir()
    (stale / "old_object.obj").write_text("")
    mesh = tmp / "tri.obj"
    mesh.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nf 1 3 2\nf 1 2 4\nf 1 4 3\nf 2 3 4\n")

    tiny_cfg = "--config=configs/neurodiff3d.py:variant=tiny"
    gen = "--config=configs/generate.py:tiny"
    w = f"--workdir={tmp}/w"
    train = "nd3d_jax.train"
    cases = [
        # train: the mistakes of issue 15, all before any compilation
        ("missing data_dir", train, [tiny_cfg, w], ["--config.data.data_dir"]),
        ("empty data_dir", train, [tiny_cfg, w, f"--config.data.data_dir={empty}"],
         ["--config.data.data_dir"]),
        ("nonexistent data_dir", train, [tiny_cfg, w, f"--config.data.data_dir={tmp}/nope"],
         ["--config.data.data_dir"]),
        ("dataset not prepared", train,
         ["--config=configs/neurodiff3d.py:dataset=pix3d,variant=tiny", w,
          f"--config.data.data_dir={prepared}"], ["pix3d"]),
        ("beta_schedule", train, [tiny_cfg, w, "--config.schedule.beta_schedule=foo"],
         ["beta_schedule", "foo", "scaled_linear"]),
        ("prediction_type", train, [tiny_cfg, w, "--config.schedule.prediction_type=x0"],
         ["prediction_type", "epsilon"]),
        ("stage", train, [tiny_cfg, w, "--config.stage=foo"], ["stage", "foo", "neurodiff3d"]),
        ("wrong config", train, ["--config=configs/refine_demo.py:tiny", w], ["refine_demo"]),
        ("unknown key", train, [tiny_cfg, w, "--config.train.totl_steps=3"],
         ["train.totl_steps", "train.total_steps"]),
        ("unknown dataset", train, [tiny_cfg, w, "--config.data.dataset=shapenet"],
         ["shapenet", "pix3d", "omniobject3d"]),
        ("unknown config argument", train, ["--config=configs/neurodiff3d.py:size=3", w],
         ["size", "dataset=", "variant="]),
        ("unknown variant", train, ["--config=configs/neurodiff3d.py:variant=huge", w],
         ["huge", "tiny"]),
        ("missing weights", train,
         ["--config=configs/neurodiff3d.py", w, "--config.weights_dir=/elsewhere",
          f"--config.data.data_dir={prepared}"], ["/elsewhere"]),
        ("workdir of another model", train,
         [tiny_cfg, f"--workdir={used}", "--config.model.text_length=12"],
         ["model.text_length: 16 -> 12", "--workdir"]),
        ("bad value", train, [tiny_cfg, w, "--config.train.total_steps=many"], ["total_steps"]),
        ("no workdir", train, [tiny_cfg], ["--workdir"]),
        ("workdir is a file", train, [tiny_cfg, f"--workdir={mesh}"], ["--workdir", "is a file"]),
        ("batch_size 0", train, [tiny_cfg, w, "--config.data.batch_size=0"],
         ["--config.data.batch_size=0", "an int >= 1"]),
        ("no config", train, [w], ["--config"]),
        ("config file missing", train, ["--config=configs/nope.py", w], ["configs/nope.py"]),
        ("bad verbosity", train, [tiny_cfg, w, "--verbosity=loud"], ["verbosity", "quiet"]),
        ("unknown flag", train, [tiny_cfg, w, "--wokdir=x"], ["wokdir"]),
        # the other config-driven commands
        ("refine: wrong config", "nd3d_jax.refine_demo", [tiny_cfg, w], ["train"]),
        ("refine: unknown key", "nd3d_jax.refine_demo",
         ["--config=configs/refine_demo.py:tiny", w, "--config.refine.stpes=3"],
         ["refine.stpes"]),
        ("refine: shape kind", "nd3d_jax.refine_demo",
         ["--config=configs/refine_demo.py:tiny", w, "--config.shape.kind=cube"],
         ["cube", "--config.shape.kind"]),
        ("params: wrong config", "nd3d_jax.params", ["--config=configs/refine_demo.py"],
         ["refine_demo"]),
        ("params: missing weights", "nd3d_jax.params",
         ["--config=configs/neurodiff3d.py", "--config.weights_dir=/elsewhere"], ["/elsewhere"]),
        ("generate: unwritable out", "nd3d_jax.generate",
         ["--config=configs/generate.py:tiny", "--text=a", "--out=/proc/nd3d_none/out"],
         ["--out=/proc/nd3d_none/out", "not writable"]),
        ("generate: no input", "nd3d_jax.generate", [gen, f"--out={tmp}/g"],
         ["give --image and/or --text"]),
        ("generate: no model", "nd3d_jax.generate", [gen, f"--out={tmp}/g", "--text=a chair"],
         ["no model: pass --params"]),
        ("generate: image missing", "nd3d_jax.generate",
         [gen, f"--out={tmp}/g", "--image=nope.png"], ["image not found: nope.png"]),
        ("generate: no out", "nd3d_jax.generate", [gen, "--text=a chair"],
         ["--out=DIR is required"]),
        ("generate: coarse mesh missing", "nd3d_jax.generate",
         [gen, f"--out={tmp}/g", "--text=t", "--coarse_mesh=a.txt"], ["coarse mesh not found"]),
        ("evaluate: data not prepared", "nd3d_jax.evaluate",
         ["--config=configs/evaluate.py:tiny", f"--generated={tmp}", f"--data_dir={empty}",
          f"--out={tmp}/eval"], ["--data_dir=", "no prepared data set"]),
        # the commands without a config
        ("render: missing mesh", "nd3d_jax.render", [f"{tmp}/nope.obj", f"--out={tmp}/x.png"],
         ["not found"]),
        ("render: directory", "nd3d_jax.render", [str(tmp), f"--out={tmp}/x.png"],
         ["is a directory"]),
        ("render: out extension", "nd3d_jax.render", [str(mesh), f"--out={tmp}/x.txt"],
         ["--out", ".png"]),
        ("render: size", "nd3d_jax.render", [str(mesh), f"--out={tmp}/x.png", "--size=2"],
         ["--size"]),
        ("synthetic: non-empty out", "data_pipelines.synthetic",
         ["--layout=pix3d", f"--out={stale}", "--num_objects=1"], ["--overwrite"]),
        ("synthetic: layout", "data_pipelines.synthetic",
         ["--layout=shapenet", f"--out={tmp}/s"], ["shapenet"]),
        ("prepare: missing manual_dir", "data_pipelines.prepare",
         ["--dataset=pix3d", f"--manual_dir={tmp}/nope", f"--data_dir={tmp}/d"], ["nope"]),
        ("convert: missing folder", "nd3d_jax.weights.convert", [f"{tmp}/nope", f"{tmp}/o"],
         ["nope"]),
        ("benchmark: unknown suite", "nd3d_jax.benchmark", ["nope"], ["nope"]),
    ]  # fmt: skip
    results = run_all([(m, a) for _, m, a, _ in cases], tmp)
    return {name: (words, r) for (name, _, _, words), r in zip(cases, results, strict=True)}


CASES = [
    "missing data_dir", "empty data_dir", "nonexistent data_dir", "dataset not prepared",
    "beta_schedule", "prediction_type", "stage", "wrong config", "unknown key",
    "unknown dataset", "unknown config argument", "unknown variant", "missing weights",
    "workdir of another model", "bad value", "no workdir", "no config", "config file missing",
    "bad verbosity", "unknown flag", "refine: wrong config", "refine: unknown key",
    "refine: shape kind", "params: wrong config", "params: missing weights", "workdir is a file",
    "batch_size 0", "generate: unwritable out", "generate: no input", "generate: no model",
    "generate: image missing", "generate: no out", "generate: coarse mesh missing",
    "evaluate: data not prepared",
    "render: missing mesh", "render: directory", "render: out extension", "render: size",
    "synthetic: non-empty out", "synthetic: layout", "prepare: missing manual_dir",
    "convert: missing folder", "benchmark: unknown suite",
]  # fmt: skip


# a line of our own log (config_cli.setup_logging's format), e.g. "I10:59:10 nd3d_jax.train] ..."
LOG_LINE = re.compile(r"^[DIWEC]\d\d:\d\d:\d\d (nd3d_jax|data_pipelines)[\w.]*\] ")


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_line_exit_2(bad_inputs, name):
    """The error is one line, the last; before it only our own INFO log lines (no warnings,
    no stray prints of other libraries)."""
    words, r = bad_inputs[name]
    lines = [line for line in r["stderr"].splitlines() if line.strip()]
    assert "Traceback" not in r["stderr"], r["stderr"][-3000:]
    assert r["code"] == 2, (r["code"], r["stderr"][-2000:])
    assert lines and lines[-1].startswith("error: "), r["stderr"][-2000:]
    assert all(LOG_LINE.match(line) for line in lines[:-1]), r["stderr"][-2000:]
    for word in words:
        assert word in lines[-1], (word, lines[-1])


def test_debug_shows_the_traceback(tmp_path):
    args = ["--config=configs/neurodiff3d.py:variant=tiny", "--config.stage=foo", "--debug"]
    (r,) = run_all([("nd3d_jax.params", args)], tmp_path)
    assert r["code"] == 1 and "Traceback" in r["stderr"] and "unknown stage 'foo'" in r["stderr"]


def test_synthetic_overwrite_clears_the_folder(tmp_path, capsys):
    from data_pipelines.synthetic.__main__ import main

    (tmp_path / "old_object.obj").write_text("")
    args = ["--layout=omniobject3d", f"--out={tmp_path}", "--num_objects=1", "--num_views=1"]
    main([*args, "--image_size=16", "--overwrite"])
    assert not (tmp_path / "old_object.obj").exists()
    assert (tmp_path / "raw_scans" / "bed" / "bed_001" / "Scan" / "Scan.obj").is_file()
    assert "wrote 1 objects" in capsys.readouterr().out
