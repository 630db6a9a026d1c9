"""Every ```python block of README.md runs as written, in a working directory holding what the
README's paths name: tiny random weights under `weights/` (the folder names of
`configs/neurodiff3d.py`) and a prepared tiny Pix3D under `data/tfds`."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
from generate_fixtures import write_model_workdir
from hf_fixtures import make_clip_folder, make_diffusers_folder, make_resnet_folder
from PIL import Image
from shap_e_fixtures import save_shap_e

from configs import presets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
# a tiny VAE with SD's factor 8 (four levels), as the README's latent sizes assume
VAE_FACTOR_8 = presets.derive(
    presets.TINY_VAE,
    block_out_channels=(8, 8, 16, 16),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
)


def readme_blocks() -> list[tuple[int, str]]:
    """(line number, code) of each ```python block."""
    text = open(os.path.join(ROOT, "README.md")).read()
    return [(text[: m.start()].count("\n") + 2, m.group(1)) for m in BLOCK.finditer(text)]


BLOCKS = readme_blocks()


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 4


@pytest.fixture(scope="module")
def readme_cwd(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("readme")
    w = cwd / "weights"
    make_clip_folder(w / presets.PAPER_WEIGHTS["clip"], presets.TINY_CLIP)
    make_resnet_folder(w / presets.PAPER_WEIGHTS["resnet"], presets.TINY_RESNET18)
    make_diffusers_folder(w / presets.PAPER_WEIGHTS["unet"], "UNet2DConditionModel",
                          presets.TINY_UNET)  # fmt: skip
    make_diffusers_folder(w / presets.PAPER_WEIGHTS["vae"], "AutoencoderKL", VAE_FACTOR_8)
    adapter = presets.derive(presets.TINY_ADAPTER, downscale_factor=8)
    make_diffusers_folder(w / "t2i-adapter", "T2IAdapter", adapter)
    save_shap_e(w / "shap-e-img2img", "image")
    write_model_workdir(str(cwd / "out" / "run"))  # the generation block's trainer WORKDIR
    rgba = np.zeros((48, 40, 4), np.uint8)
    rgba[8:40, 10:30] = (150, 90, 40, 255)
    Image.fromarray(rgba, "RGBA").save(cwd / "chair.png")
    return cwd


@pytest.mark.parametrize("line, code", BLOCKS, ids=[f"README.md:{n}" for n, _ in BLOCKS])
def test_readme_python_block_runs(readme_cwd, request, monkeypatch, line, code):
    if "data/tfds" in code:  # the prepared data sets (session fixture of data_fixtures.py)
        data = readme_cwd / "data"
        if not data.exists():
            data.mkdir()
            os.symlink(request.getfixturevalue("prepared")["data_dir"], data / "tfds")
    monkeypatch.chdir(readme_cwd)
    exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})
