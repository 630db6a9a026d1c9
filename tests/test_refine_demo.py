import json
import subprocess
import sys

import numpy as np
from PIL import Image

from nd3d_jax.config_cli import load_config
from nd3d_jax.geometry.mesh_ops import load_mesh
from nd3d_jax.refine_demo import run


def test_demo_tiny_end_to_end(tmp_path):
    config = load_config("configs/refine_demo.py:tiny")
    summary = run(config, str(tmp_path))
    for name in ("coarse.glb", "refined.glb", "refined.obj", "summary.json", "preview.png"):
        assert (tmp_path / name).is_file()
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["refined"]["faces"] == summary["refined"]["faces"] > 1000
    assert on_disk["loss"]["last"] < on_disk["loss"]["first"]
    assert on_disk["refined"]["watertight"]
    assert len(on_disk["losses"]) == 50
    assert on_disk["refined"]["chamfer_to_true"] < on_disk["coarse"]["chamfer_to_true"]
    assert np.asarray(Image.open(tmp_path / "preview.png")).shape == (192, 384, 3)
    mesh = load_mesh(tmp_path / "refined.glb")
    assert len(mesh.faces) == summary["refined"]["faces"]


def test_demo_cli_rejects_unknown_keys(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "nd3d_jax.refine_demo",
            "--config=configs/refine_demo.py:tiny",
            "--config.refine.stpes=3",
            f"--workdir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "unknown config key 'refine.stpes'" in out.stderr
