import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest

from nd3d_jax.config_cli import (
    ConfigError,
    check_argv,
    check_override_key,
    check_workdir,
    config_to_json,
    load_config,
    parse_arg,
    scan_argv,
    split_argv,
    verbosity_levels,
)
from nd3d_jax.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = textwrap.dedent(
    """
    import ml_collections

    def get_config(arg=None):
        if arg not in (None, "tiny"):
            raise ValueError(f"unknown variant {arg!r}")
        c = ml_collections.ConfigDict()
        c.model = ml_collections.ConfigDict({"width": 64, "depth": 2, "use_bias": True})
        c.lr = 1e-3
        c.sizes = (1, 2)
        if arg == "tiny":
            c.model.width = 8
        return c
    """
)
MAIN = textwrap.dedent(
    """
    import json
    from nd3d_jax import cli
    from nd3d_jax.errors import UserError

    def main(config, workdir):
        if config.lr < 0:
            raise UserError("lr must be >= 0 (--config.lr)")
        print(json.dumps({"width": config.model.width, "lr": config.lr, "workdir": workdir}))

    cli.run(main)
    """
)


@pytest.fixture
def cfg(tmp_path):
    path = tmp_path / "cfg.py"
    path.write_text(CONFIG)
    (tmp_path / "main.py").write_text(MAIN)
    return tmp_path


def _run(cfg, *args):
    return subprocess.run(
        [sys.executable, str(cfg / "main.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cfg,
    )


def test_variant_and_overrides(cfg):
    out = _run(cfg, f"--config={cfg}/cfg.py:tiny", "--config.lr=0.5", "--workdir=w")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"width": 8, "lr": 0.5, "workdir": "w"}
    out = _run(cfg, f"--config={cfg}/cfg.py", "--config.model.width=3", "--workdir=w")
    assert out.returncode == 0 and '"width": 3' in out.stdout
    # absl's other spellings: `--config PATH`, `--config.key VALUE`.
    out = _run(cfg, "--config", f"{cfg}/cfg.py:tiny", "--config.model.width", "5", "--workdir=w")
    assert out.returncode == 0, out.stderr
    assert '"width": 5' in out.stdout


def test_run_writes_config_json_that_reproduces_the_run(cfg):
    out = _run(cfg, f"--config={cfg}/cfg.py:tiny", "--config.lr=0.25", "--workdir=w")
    assert out.returncode == 0, out.stderr
    saved = json.loads((cfg / "w" / "config.json").read_text())
    assert saved == {
        "lr": 0.25,
        "model": {"depth": 2, "use_bias": True, "width": 8},
        "sizes": [1, 2],
    }
    run = json.loads((cfg / "w" / "run.json").read_text())
    assert run["argv"][1:] == [f"--config={cfg}/cfg.py:tiny", "--config.lr=0.25", "--workdir=w"]
    assert run["devices"]["count"] >= 1 and run["versions"]["jax"]
    again = _run(cfg, "--config=w/config.json", "--workdir=w2")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == {"width": 8, "lr": 0.25, "workdir": "w2"}
    assert json.loads((cfg / "w2" / "config.json").read_text()) == saved


def test_unknown_key_is_a_short_clear_error(cfg):
    out = _run(cfg, f"--config={cfg}/cfg.py", "--config.model.widht=3", "--workdir=w")
    assert out.returncode == 2
    assert "unknown config key 'model.widht'" in out.stderr
    assert "did you mean 'model.width'" in out.stderr and "Traceback" not in out.stderr
    out = _run(cfg, f"--config={cfg}/cfg.py", "--noconfig.model.usebias", "--workdir=w")
    assert out.returncode == 2 and "did you mean 'model.use_bias'" in out.stderr
    out = _run(cfg, f"--config={cfg}/cfg.py:huge", "--workdir=w")
    assert out.returncode == 2 and "unknown variant 'huge'" in out.stderr
    out = _run(cfg, f"--config={cfg}/nope.py", "--workdir=w")
    assert out.returncode == 2 and "config file not found" in out.stderr
    out = _run(cfg, f"--config={cfg}/cfg.py", "--workdir=w", "--bogus=1")
    assert out.returncode == 2 and "bogus" in out.stderr and "Traceback" not in out.stderr
    out = _run(cfg, f"--config={cfg}/cfg.py")
    assert out.returncode == 2 and "--workdir=DIR is required" in out.stderr


def test_user_error_in_main_is_one_line_and_debug_shows_the_traceback(cfg):
    out = _run(cfg, f"--config={cfg}/cfg.py", "--config.lr=-1", "--workdir=w")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["error: lr must be >= 0 (--config.lr)"]
    out = _run(cfg, f"--config={cfg}/cfg.py", "--config.lr=-1", "--workdir=w", "--debug")
    assert out.returncode == 1 and "Traceback" in out.stderr and "UserError" in out.stderr


def test_help_and_print_config(cfg):
    out = _run(cfg, "--help")
    assert out.returncode == 0 and "--print_config" in out.stdout and "--workdir" in out.stdout
    assert len(out.stdout.splitlines()) < 40 and "--helpfull" not in out.stdout
    out = _run(cfg, f"--config={cfg}/cfg.py", "--config.model.depth=7", "--print_config")
    assert out.returncode == 0, out.stderr  # no --workdir needed
    assert json.loads(out.stdout)["model"] == {"depth": 7, "use_bias": True, "width": 64}


def test_check_helpers(cfg):
    config = load_config(f"{cfg}/cfg.py:tiny")
    check_override_key(config, "model.depth")
    with pytest.raises(ConfigError, match="keys at model: depth, use_bias, width"):
        check_override_key(config, "model.height")
    with pytest.raises(ConfigError, match="unknown config key 'lr.x': 'lr' is a float"):
        check_override_key(config, "lr.x")  # a leaf has no sub-keys
    with pytest.raises(ConfigError, match="'mdl.width'.*did you mean 'model'"):
        check_argv(["prog", f"--config={cfg}/cfg.py", "--config.mdl.width=1"])
    assert issubclass(ConfigError, UserError)


def test_json_config_round_trip(cfg, tmp_path):
    config = load_config(f"{cfg}/cfg.py:tiny")
    (tmp_path / "c.json").write_text(config_to_json(config))
    loaded = load_config(str(tmp_path / "c.json"))
    assert loaded.to_dict() == config.to_dict()  # sequences come back as tuples
    assert loaded.sizes == (1, 2)
    with pytest.raises(ConfigError, match="takes no ':' argument"):
        load_config(f"{tmp_path / 'c.json'}:tiny")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="cannot read the JSON config"):
        load_config(str(tmp_path / "bad.json"))
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(str(tmp_path))


def test_parse_arg():
    spec = dict(dataset=("omniobject3d", "pix3d"), variant=("paper", "tiny"), steps=10, fast=False)
    a = parse_arg(None, **spec)
    assert a.to_dict() == dict(dataset="omniobject3d", variant="paper", steps=10, fast=False)
    a = parse_arg("dataset=pix3d, variant=tiny,steps=3,fast=true", **spec)
    assert a.to_dict() == dict(dataset="pix3d", variant="tiny", steps=3, fast=True)
    assert parse_arg("tiny", **spec).variant == "tiny"  # a bare word is the variant
    with pytest.raises(ConfigError, match="unknown dataset 'shapenet'; use one of: omni"):
        parse_arg("dataset=shapenet", **spec)
    with pytest.raises(ConfigError, match=r"unknown config argument 'size' \(known: dataset="):
        parse_arg("size=3", **spec)
    with pytest.raises(ConfigError, match="'x': not a int"):
        parse_arg("steps=x", **spec)
    with pytest.raises(ConfigError, match="use true or false"):
        parse_arg("fast=maybe", **spec)


def test_check_workdir(tmp_path):
    config = load_config(os.path.join(ROOT, "configs/neurodiff3d.py:variant=tiny"))
    work = tmp_path / "w"
    work.mkdir()
    (work / "config.json").write_text(config_to_json(config))
    check_workdir(config, str(work))  # same config
    other = load_config(os.path.join(ROOT, "configs/neurodiff3d.py:variant=tiny"))
    other.model.unet.config.block_out_channels = (16, 48)
    other.train.total_steps = 99
    check_workdir(other, str(work))  # no checkpoints yet: nothing to refuse
    (work / "checkpoints" / "10").mkdir(parents=True)
    with pytest.raises(UserError) as e:
        check_workdir(other, str(work))
    msg = str(e.value)
    assert "model.unet.config.block_out_channels: [16, 32] -> [16, 48]" in msg
    assert "total_steps" not in msg and f"--config={work}/config.json" in msg
    other.model.unet.config.block_out_channels = (16, 32)
    other.data.data_dir = "/elsewhere"
    check_workdir(other, str(work))  # only keys that keep the model changed
    other.data.dataset = "pix3d"
    with pytest.raises(UserError, match='data.dataset: "omniobject3d" -> "pix3d"'):
        check_workdir(other, str(work))


def test_verbosity_levels():
    assert verbosity_levels("quiet") == (logging.INFO, logging.WARNING)
    assert verbosity_levels("0") == verbosity_levels("info") == (logging.INFO, logging.INFO)
    assert verbosity_levels("1") == verbosity_levels("DEBUG") == (logging.DEBUG,) * 2
    assert verbosity_levels("-1") == (logging.WARNING,) * 2
    with pytest.raises(UserError, match="unknown --verbosity 'loud'"):
        verbosity_levels("loud")


def test_scan_argv_reads_every_spelling(tmp_path):
    flagfile = tmp_path / "flags.txt"
    flagfile.write_text("--config.lr=0.1\n")
    argv = [
        "prog",
        "-config",
        "c.py:tiny",
        "--config.model.width",
        "3",
        "--noconfig.model.use_bias",
    ]
    spec, overrides = scan_argv([*argv, f"--flagfile={flagfile}", "--workdir=w"])
    assert spec == "c.py:tiny" and overrides == ["model.width", "model.use_bias", "lr"]
    assert scan_argv(["prog", "--config=c.py", "--configs=x"]) == ("c.py", [])
    assert scan_argv(["prog"]) == (None, []) and scan_argv(["prog", "--config"]) == (None, [])
    assert split_argv(["p", "--config", "c.py", "--workdir=w"]) == ("c.py", ["p", "--workdir=w"])


def test_repo_configs():
    config = load_config(os.path.join(ROOT, "configs/refine_demo.py"))
    assert config.refine.steps == 50 and config.refine.num_key_points == 2048
    tiny = load_config(os.path.join(ROOT, "configs/refine_demo.py:tiny"))
    assert tiny.refine.hidden_dim < config.refine.hidden_dim and tiny.command == "refine_demo"

    paper = load_config(os.path.join(ROOT, "configs/neurodiff3d.py"))
    assert (paper.data.dataset, paper.weights_dir, paper.command) == (
        "omniobject3d",
        "weights",
        "train",
    )
    # sub-model folders stay relative: resolved under weights_dir when used
    assert paper.model.clip.path == "clip-vit-base-patch32"
    assert paper.model.unet.path == "stable-diffusion-v1-5/unet"
    assert "total_steps" not in paper.optim and paper.train.total_steps == 50_000
    assert paper.sample.to_dict() == dict(
        num_steps=50, guidance=7.5, eta=0.0, clip=0.0, sampler="ddim"
    )
    gen = load_config(os.path.join(ROOT, "configs/generate.py"))
    assert gen.command == "generate" and gen.image.size == 512  # paper: 512 x 512 inputs
    assert (gen.refine.steps, gen.refine.learning_rate, gen.refine.num_key_points) == (
        50,
        1e-4,
        2048,
    )  # eq 4-7
    assert (gen.sample.num_steps, gen.texture.size, gen.prior.num_steps) == (50, 1024, 64)
    for removed in ("preview_steps", "guidance", "clip_sample"):
        assert removed not in paper.train
    pix3d = load_config(os.path.join(ROOT, "configs/neurodiff3d.py:dataset=pix3d,variant=random"))
    assert pix3d.data.dataset == "pix3d" and pix3d.weights_dir == ""
    assert pix3d.model.unet.path == "" and pix3d.model.unet.config.cross_attention_dim == 768
    tiny = load_config(os.path.join(ROOT, "configs/neurodiff3d.py:variant=tiny"))
    assert tiny.train.total_steps <= 20 and tiny.sample.num_steps == 2 and not tiny.model.vae.use
    assert tiny.model.clip.config.text_config.hidden_size == 32
    assert (
        load_config(os.path.join(ROOT, "configs/neurodiff3d.py:tiny")).to_dict() == tiny.to_dict()
    )

    demo = load_config(os.path.join(ROOT, "configs/demo.py"))
    assert demo.sample.to_dict() == dict(
        num_steps=25, guidance=2.0, eta=0.0, clip=1.0, sampler="ddim"
    )
    assert demo.train.total_steps == 300 and demo.model.tile_size == 32
    demo_tiny = load_config(os.path.join(ROOT, "configs/demo.py:variant=tiny"))
    assert demo_tiny.train.total_steps == 6 and demo_tiny.sample.num_steps == 2
    with pytest.raises(ConfigError, match="unknown variant 'huge'"):
        load_config(os.path.join(ROOT, "configs/demo.py:huge"))
