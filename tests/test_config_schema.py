"""Every key of every config in configs/ (each variant) is checked: set to a value of the wrong
type, and (numbers, choices, non-empty strings, patterns) to one out of range, each command
that takes the config exits 2 with one line naming the key, before its `main` (which here
fails the test if reached). The commands run in-process (`cli.run(main, **CLI)`, as
`python -m` does), the bad values arriving in a `config.json` (types no flag parser checks);
paths that must be folders, files, writable, weights or prepared data are tried the same way;
one real subprocess shows exit code 2 and no traceback end to end."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from nd3d_jax import app, cli, config_cli, evaluate, generate, params, refine_demo, reproduce, train
from nd3d_jax.config_check import OPEN, Spec, leaves
from nd3d_jax.config_schema import schema_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = {
    "neurodiff3d.py": ["", ":random", ":tiny", ":dataset=pix3d,variant=tiny"],
    "demo.py": ["", ":tiny"],
    "generate.py": ["", ":demo", ":tiny"],
    "evaluate.py": ["", ":demo", ":tiny"],
    "refine_demo.py": ["", ":tiny"],
}
# config kind -> the commands taking it (module, needs --workdir)
COMMANDS = {
    "train": [(train, True), (params, False)],
    "generate": [(generate, False), (app, False)],
    "evaluate": [(evaluate, False), (reproduce, False)],
    "refine_demo": [(refine_demo, True)],
}
UNWRITABLE = "/proc/nd3d_no_such_folder/out"  # not creatable, even for root
SCRATCH = {}  # "dir": where each run's config.json goes (the `scratch` fixture)
FIRST_SEEN: dict[tuple[str, str], str] = {}  # (config kind, key) -> the first config holding it


@pytest.fixture(scope="module", autouse=True)
def scratch():
    """A folder for the config.json of each run: in memory where there is a tmpfs (the walk
    writes a few thousand)."""
    SCRATCH["dir"] = tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    yield
    shutil.rmtree(SCRATCH.pop("dir"), ignore_errors=True)


def test_every_config_file_and_variant_is_walked():
    assert sorted(VARIANTS) == sorted(
        n for n in os.listdir(os.path.join(ROOT, "configs")) if n.endswith(".py") and n not in
        ("__init__.py", "presets.py")
    )  # fmt: skip


def _configs():
    for name, variants in VARIANTS.items():
        for v in variants:
            spec = os.path.join(ROOT, "configs", name + v)
            yield name + v, config_cli.load_config(spec)


CONFIGS = dict(_configs())


def _set(d: dict, dotted: str, value) -> dict:
    d = copy.deepcopy(d)
    node = d
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    return d


def wrong_type(spec: Spec):
    if "str" in spec.kinds:
        return 3 if not spec.numeric else [3]
    return "x"


def out_of_range(spec: Spec):
    """A value of the right type that `spec` refuses (None: it has no range)."""
    if spec.numeric:
        step = 1 if spec.kinds == ("int",) else 0.5
        if spec.low is not None:
            bad = spec.low if spec.low_open else spec.low - step
            while bad in spec.also:
                bad -= step
            return bad
        if spec.high is not None:
            return spec.high if spec.high_open else spec.high + step
        if spec.multiple:
            return spec.multiple + 1
        return None
    if spec.kinds == ("str",) and not spec.path:
        if spec.choices:
            return "no_such_choice"
        if spec.pattern:
            return "not valid!"
        if not spec.empty:
            return ""
        return None
    if "seq" in spec.kinds and spec.item is not None:
        bad = out_of_range(spec.item)
        n = spec.length or max(1, spec.min_length)
        if bad is not None:
            return [bad] * n
        if spec.length is not None:
            return [wrong_type(spec.item)] * (spec.length + 1)
    return None


def run_command(module, needs_workdir: bool, config: dict, tmp_path, *flags) -> tuple[int, str]:
    """`module`'s command line in-process on `config` (written as a config.json): (exit code,
    stderr). Its `main` must not be reached."""
    path = os.path.join(SCRATCH["dir"], "config.json")
    with open(path, "w") as f:
        json.dump(config, f)
    argv = [module.__name__, f"--config={path}", *flags]
    if needs_workdir and not any(f.startswith("--workdir") for f in flags):
        argv.append(f"--workdir={tmp_path}/w")

    def main(*args):
        raise AssertionError(f"{module.__name__} ran main: the config passed its checks")

    with pytest.raises(SystemExit) as e:
        cli.run(main, **module.CLI, argv=argv)
    return e.value.code, e


def _one_line_naming(capsys, key: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert key in lines[0], (key, lines[0])
    return lines[0]


@pytest.mark.parametrize("name", CONFIGS)
def test_every_key_refuses_a_wrong_type_and_a_value_out_of_range(name, tmp_path, capsys):
    config = CONFIGS[name]
    schema = schema_for(config.command)
    base = config.to_dict()
    tried = {"type": 0, "range": 0}
    for key, value, spec in leaves(config, schema):
        assert isinstance(spec, Spec), f"{name}: {key}={value!r} has no schema entry"
        assert spec.problem(value) is None, (key, value, spec.problem(value))  # defaults pass
        # the config's own command on every variant; the others taking it once a key
        first = FIRST_SEEN.setdefault((config.command, key), name) == name
        commands = COMMANDS[config.command] if first else COMMANDS[config.command][:1]
        for what, bad in (("type", wrong_type(spec)), ("range", out_of_range(spec))):
            if bad is None:
                continue
            for module, workdir in commands:
                code, _ = run_command(module, workdir, _set(base, key, bad), tmp_path)
                assert code == 2, (module.__name__, key, bad)
                _one_line_naming(capsys, f"--config.{key}")
            tried[what] += 1
    numeric = [k for k, _, s in leaves(config, schema) if s.numeric]
    assert tried["type"] == len(leaves(config, schema)) and tried["range"] >= len(numeric)


def test_the_keys_without_a_range_are_these():
    """Every other key, number, choice or string, has a value out of range that is refused
    (and booleans and paths their own checks); these are folders whose absence is fine (the
    metric is reported unavailable) and the compilation cache's folder (any folder, or "off";
    `compile_cache.setup` refuses one it cannot create or write)."""
    no_range = set()
    for config in CONFIGS.values():
        for key, _, spec in leaves(config, schema_for(config.command)):
            if out_of_range(spec) is None and not spec.path and spec.kinds != ("bool",):
                no_range.add(key)
    metrics = {f"metrics.{m}" for m in ("clip", "cmmd_clip", "lpips_alex", "lpips_vgg")}
    assert no_range == metrics | {"compilation_cache"}


def test_dataclass_sections_follow_their_class():
    """refine and texture take their schema from RefineSettings / TextureSettings: a field
    added there is checked with no edit of the schema."""
    from nd3d_jax.geometry.refine import RefineSettings
    from nd3d_jax.texture.atlas import TextureSettings

    for section, cls in (("refine", RefineSettings), ("texture", TextureSettings)):
        schema = schema_for("generate")[section]
        assert set(schema) - {OPEN} == {f.name for f in dataclasses.fields(cls)}
        for name, spec in cls.LIMITS.items():
            assert schema[name] is spec
    assert schema_for("refine_demo")["refine"]["steps"].problem(0) is not None


def _paths(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    empty = tmp_path / "empty"
    empty.mkdir()
    return {
        # kind -> a bad value
        "folder": str(a_file),
        "out": str(a_file),
        "weights": str(tmp_path / "nope"),
        "weights_folder": str(tmp_path / "nope"),
        "prepared": str(empty),
        "training_data": str(empty),
        "trained": str(empty),
        "shap_e": str(empty),
    }


def test_paths_are_checked_as_what_they_must_be(tmp_path, capsys):
    bad = _paths(tmp_path)
    seen = set()
    for name, config in CONFIGS.items():
        paths = [(k, s) for k, _, s in leaves(config, schema_for(config.command)) if s.path]
        base = config.to_dict()
        for key, _ in paths:  # every other path unset (the paper configs name weights)
            base = _set(base, key, "")
        if config.command == "train":
            base = _set(base, "data.synthetic_objects", 1)  # data_dir then not needed
        for key, spec in paths:
            kind = spec.path.partition(":")[0]
            d = _set(base, key, bad[kind])
            if kind == "training_data":
                d = _set(d, "data.synthetic_objects", 0)
            module, workdir = COMMANDS[config.command][0]
            code, _ = run_command(module, workdir, d, tmp_path)
            assert code == 2, (name, key)
            _one_line_naming(capsys, f"--config.{key}")
            seen.add(kind)
    assert seen == set(bad)


def test_workdir_out_and_data_folder_mistakes(tmp_path, capsys):
    bad = _paths(tmp_path)
    demo = CONFIGS["demo.py:tiny"].to_dict()
    code, _ = run_command(train, True, demo, tmp_path, f"--workdir={bad['out']}")
    assert code == 2 and "is a file" in _one_line_naming(capsys, "--workdir=")
    code, _ = run_command(train, True, demo, tmp_path, f"--workdir={UNWRITABLE}")
    assert code == 2 and "not writable" in _one_line_naming(capsys, "--workdir=")
    refine = CONFIGS["refine_demo.py:tiny"].to_dict()
    code, _ = run_command(refine_demo, True, refine, tmp_path, f"--workdir={bad['out']}")
    assert code == 2 and "is a file" in _one_line_naming(capsys, "--workdir=")
    # a data folder without prepared data (train; evaluate's --data_dir)
    no_data = _set(_set(demo, "data.synthetic_objects", 0), "data.data_dir", bad["prepared"])
    code, _ = run_command(train, True, no_data, tmp_path)
    line = _one_line_naming(capsys, "--config.data.data_dir")
    assert code == 2 and "python -m data_pipelines.prepare" in line
    ev = CONFIGS["evaluate.py:tiny"].to_dict()
    code, _ = run_command(evaluate, False, ev, tmp_path, f"--data_dir={bad['prepared']}",
                          f"--generated={tmp_path}", f"--out={tmp_path}/o")  # fmt: skip
    assert code == 2 and "no prepared data" in _one_line_naming(capsys, "--data_dir=")
    # an unwritable or file --out, a --params that is no trainer workdir, a bad --port
    gen = CONFIGS["generate.py:tiny"].to_dict()
    for module, config, extra in (
        (generate, gen, ["--text=a chair"]),
        (evaluate, ev, [f"--generated={tmp_path}"]),
        (reproduce, ev, []),
        (app, gen, []),
    ):
        for out in (UNWRITABLE, bad["out"]):
            code, _ = run_command(module, False, config, tmp_path, f"--out={out}", *extra)
            assert code == 2, (module.__name__, out)
            _one_line_naming(capsys, "--out=")
    code, _ = run_command(generate, False, gen, tmp_path, f"--params={bad['trained']}")
    assert code == 2 and "not a trainer workdir" in _one_line_naming(capsys, "--params=")
    code, _ = run_command(app, False, gen, tmp_path, "--port=70000")
    assert code == 2 and "1, 65535" in _one_line_naming(capsys, "--port=70000")


def test_overrides_that_do_not_parse_say_what_is_allowed(tmp_path, capsys):
    """Through the flag parser (`--config.KEY=VALUE`), not a config.json."""
    demo = CONFIGS["demo.py:tiny"].to_dict()
    for flag, words in (
        ("--config.data.batch_size=abc", ["'abc'", "an int >= 1"]),
        ("--config.data.batch_size=0", ["=0:", "an int >= 1"]),
        ("--config.optim.b2=1.0", ["a number in [0, 1)"]),
        ("--config.sample.sampler=dpm", ["'dpm'", "ddim, ddpm"]),
    ):
        code, _ = run_command(train, True, demo, tmp_path, flag)
        line = _one_line_naming(capsys, flag.partition("=")[0])
        assert code == 2 and all(w in line for w in words), line


def test_the_issues_example_end_to_end(tmp_path):
    """As a user types it: exit code 2, one line, no traceback, no workdir written."""
    out = subprocess.run(
        [sys.executable, "-m", "nd3d_jax.train", "--config=configs/demo.py:tiny",
         "--config.data.batch_size=0", f"--workdir={tmp_path}/W"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip() == (
        "error: --config.data.batch_size=0: out of range; use an int >= 1"
    ), out.stderr
    assert not (tmp_path / "W").exists()
