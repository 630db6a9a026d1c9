import subprocess
import sys
import textwrap

import pytest

from nd3d_jax.config_cli import (
    ConfigError,
    check_argv,
    check_override_key,
    load_config,
    scan_argv,
)

CONFIG = textwrap.dedent(
    """
    import ml_collections

    def get_config(arg=None):
        if arg not in (None, "tiny"):
            raise ValueError(f"unknown variant {arg!r}")
        c = ml_collections.ConfigDict()
        c.model = ml_collections.ConfigDict({"width": 64, "depth": 2, "use_bias": True})
        c.lr = 1e-3
        if arg == "tiny":
            c.model.width = 8
        return c
    """
)
MAIN = textwrap.dedent(
    """
    import json
    from nd3d_jax import config_cli

    def main(config, workdir):
        print(json.dumps({"width": config.model.width, "lr": config.lr, "workdir": workdir}))

    config_cli.run(main)
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
    )


def test_variant_and_overrides(cfg):
    out = _run(cfg, f"--config={cfg}/cfg.py:tiny", "--config.lr=0.5", "--workdir=w")
    assert out.returncode == 0, out.stderr
    assert (
        '"width": 8' in out.stdout and '"lr": 0.5' in out.stdout and '"workdir": "w"' in out.stdout
    )
    out = _run(cfg, f"--config={cfg}/cfg.py", "--config.model.width=3", "--workdir=w")
    assert out.returncode == 0 and '"width": 3' in out.stdout
    # absl's other spellings: `--config PATH`, `--config.key VALUE`.
    out = _run(cfg, "--config", f"{cfg}/cfg.py:tiny", "--config.model.width", "5", "--workdir=w")
    assert out.returncode == 0, out.stderr
    assert '"width": 5' in out.stdout


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


def test_check_helpers(cfg):
    config = load_config(f"{cfg}/cfg.py:tiny")
    check_override_key(config, "model.depth")
    with pytest.raises(ConfigError, match="keys at model: depth, use_bias, width"):
        check_override_key(config, "model.height")
    with pytest.raises(ConfigError, match="unknown config key 'lr.x': 'lr' is a float"):
        check_override_key(config, "lr.x")  # a leaf has no sub-keys
    with pytest.raises(ConfigError, match="'mdl.width'.*did you mean 'model'"):
        check_argv(["prog", f"--config={cfg}/cfg.py", "--config.mdl.width=1"])


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


def test_repo_config_variants():
    config = load_config("configs/refine_demo.py")
    assert config.refine.steps == 50 and config.refine.num_key_points == 2048
    tiny = load_config("configs/refine_demo.py:tiny")
    assert tiny.refine.hidden_dim < config.refine.hidden_dim
