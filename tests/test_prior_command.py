"""`python -m nd3d_jax.prior` on the tiny random Shap-E pipelines: outputs, their validity, the
sampled object against the library, batches, and one-line errors that write nothing."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
import trimesh
from gltf_validator import assert_valid_glb
from PIL import Image

from nd3d_jax.prior import load_shap_e
from nd3d_jax.prior.__main__ import atomic, main
from nd3d_jax.prior.image import read_image
from nd3d_jax.prior.mesh import Z_UP_TO_Y_UP

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED, STEPS, RESOLUTION, PREVIEW = 1, 2, 20, 32
STAGES = {"load", "sampling", "mesh", "export", "preview"}


def write_png(path) -> str:
    rng = np.random.default_rng(0)
    image = np.zeros((48, 40, 3), np.uint8)
    image[8:40, 6:34] = rng.integers(0, 256, (32, 28, 3), dtype=np.uint8)  # an object on black
    Image.fromarray(image).save(path)
    return str(path)


def argv(weights, out, *extra) -> list[str]:
    return [
        f"--weights={weights}",
        f"--out={out}",
        f"--seed={SEED}",
        f"--steps={STEPS}",
        f"--resolution={RESOLUTION}",
        f"--preview_size={PREVIEW}",
        *extra,
    ]


@pytest.fixture(scope="module")
def image_run(tiny_shap_e, tmp_path_factory):
    folder, _ = tiny_shap_e["image"]
    tmp = tmp_path_factory.mktemp("prior_image")
    png = write_png(tmp / "input.png")
    out = tmp / "out"
    summary = main(argv(folder, out, f"--image={png}"))
    return folder, png, out, summary


def load_glb(path) -> trimesh.Trimesh:
    scene = trimesh.load(str(path), process=False)
    (mesh,) = scene.geometry.values()
    return mesh


def test_image_run_writes_valid_outputs(image_run):
    folder, png, out, summary = image_run
    assert sorted(os.listdir(out)) == ["coarse.glb", "coarse.ply", "preview.png", "summary.json"]
    assert_valid_glb(out / "coarse.glb")
    glb = load_glb(out / "coarse.glb")
    ply = trimesh.load(str(out / "coarse.ply"), process=False)
    assert len(ply.faces) > 0 and len(ply.faces) == len(glb.faces)
    assert ply.visual.kind == "vertex" and ply.visual.vertex_colors.shape == (len(ply.vertices), 4)
    assert len(np.unique(ply.visual.vertex_colors[:, :3], axis=0)) > 1  # the colour head's values
    # the GLB is the same mesh in glTF's Y-up frame
    np.testing.assert_allclose(
        glb.vertices, trimesh.transform_points(ply.vertices, Z_UP_TO_Y_UP), atol=1e-5
    )

    preview = np.asarray(Image.open(out / "preview.png"))
    assert preview.shape == (2 * PREVIEW, 2 * PREVIEW, 3)  # 4 views in a 2 x 2 grid
    assert (preview != 255).any(axis=-1).mean() > 0.05  # the object covers part of the views
    for view in (preview[:PREVIEW, :PREVIEW], preview[PREVIEW:, PREVIEW:]):
        assert (view != 255).any()

    with open(out / "summary.json") as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(summary))
    assert set(saved["seconds"]) == STAGES and all(t >= 0 for t in saved["seconds"].values())
    inputs = saved["inputs"]
    assert inputs["kind"] == "image" and inputs["image"] == os.path.abspath(png)
    assert inputs["text"] is None and inputs["weights"] == os.path.abspath(folder)
    assert (inputs["seed"], inputs["steps"], inputs["resolution"]) == (SEED, STEPS, RESOLUTION)
    assert (inputs["guidance"], inputs["grid"], inputs["dtype"]) == (3.0, "exact", "float32")
    (obj,) = saved["objects"]
    assert obj["glb"] == str(out / "coarse.glb") and obj["ply"] == str(out / "coarse.ply")
    assert (obj["vertices"], obj["faces"]) == (len(ply.vertices), len(ply.faces))
    assert obj["watertight"] == ply.is_watertight
    np.testing.assert_allclose(obj["bounds"], ply.bounds, atol=1e-6)


def test_image_run_is_the_librarys_sample(image_run):
    """The command's object is `sample_latents(key(seed))` -> `coarse_mesh`, run directly."""
    folder, png, out, _ = image_run
    shap_e = load_shap_e(folder)
    latents = shap_e.sample_latents(jax.random.key(SEED), image=read_image(png), num_steps=STEPS)
    (expected,) = shap_e.coarse_mesh(latents, RESOLUTION)
    ply = trimesh.load(str(out / "coarse.ply"), process=False)
    np.testing.assert_array_equal(ply.faces, expected.faces)
    np.testing.assert_allclose(ply.vertices, expected.vertices, atol=1e-6)
    np.testing.assert_array_equal(ply.visual.vertex_colors, expected.visual.vertex_colors)
    # another seed gives another object
    other = shap_e.sample_latents(jax.random.key(SEED + 1), image=read_image(png), num_steps=STEPS)
    assert not np.allclose(other, latents)


def test_text_batch_writes_one_object_per_noise(tiny_shap_e, tmp_path):
    folder, _ = tiny_shap_e["text"]
    out = tmp_path / "out"
    summary = main(argv(folder, out, "--text=a small red chair", "--batch=2", "--guidance=4"))
    names = [f"coarse_{i}.{s}" for i in range(2) for s in ("glb", "ply")]
    assert sorted(os.listdir(out)) == sorted([*names, "preview.png", "summary.json"])
    assert_valid_glb(out / "coarse_0.glb", out / "coarse_1.glb")
    plys = [trimesh.load(str(out / f"coarse_{i}.ply"), process=False) for i in range(2)]
    for i, ply in enumerate(plys):
        assert len(load_glb(out / f"coarse_{i}.glb").faces) == len(ply.faces) > 0
        assert summary["objects"][i]["faces"] == len(ply.faces)
    # different noise, different objects
    a, b = plys
    assert len(a.vertices) != len(b.vertices) or not np.allclose(a.vertices, b.vertices)

    preview = np.asarray(Image.open(out / "preview.png"))
    assert preview.shape == (2 * 2 * PREVIEW, 2 * PREVIEW, 3)  # one 2 x 2 grid per object
    for row in np.split(preview, 2):
        assert (row != 255).any()
    inputs = summary["inputs"]
    assert inputs["kind"] == "text" and inputs["text"] == "a small red chair"
    assert (inputs["batch"], inputs["guidance"], inputs["image"]) == (2, 4.0, None)


def test_atomic_write_leaves_the_old_file_or_the_new_one(tmp_path):
    path = tmp_path / "coarse.glb"
    path.write_bytes(b"old")

    def crash(tmp):
        assert tmp.endswith(".glb") and os.path.dirname(tmp) == str(tmp_path)
        with open(tmp, "wb") as f:
            f.write(b"trunc")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic(str(path), crash)
    assert os.listdir(tmp_path) == ["coarse.glb"] and path.read_bytes() == b"old"
    atomic(str(path), lambda tmp: pathlib.Path(tmp).write_bytes(b"new"))
    assert os.listdir(tmp_path) == ["coarse.glb"] and path.read_bytes() == b"new"


# ------------------------------------------------------------------------ errors
def bad_image(tmp):
    path = tmp / "broken.png"
    path.write_bytes(b"not a png at all")
    return path


ERRORS = {
    # name: (weights kind or a path builder, extra flags, words the message must hold)
    "missing weights": (lambda t: t / "nope", ["--text=a"], ["not found", "nope"]),
    "not a pipeline": (lambda t: t, ["--text=a"], ["model_index.json"]),
    "text folder, image": ("text", ["--image={png}"], ["text-to-3D", "cannot take an image"]),
    "image folder, text": ("image", ["--text=a chair"], ["image-to-3D", "cannot take a text"]),
    "missing image": ("image", ["--image={tmp}/none.png"], ["image not found", "none.png"]),
    "unreadable image": ("image", ["--image={bad}"], ["unreadable image", "broken.png"]),
    "empty text": ("text", ["--text="], ["--text is empty"]),
    "blank text": ("text", ["--text=   "], ["--text is empty"]),
    "both inputs": ("text", ["--text=a", "--image={png}"], ["not allowed with"]),
    "no input": ("text", [], ["--image", "--text", "required"]),
    "steps": ("text", ["--text=a", "--steps=0"], ["--steps", ">= 1"]),
    "resolution": ("text", ["--text=a", "--resolution=1"], ["--resolution", ">= 2"]),
    "batch": ("text", ["--text=a", "--batch=0"], ["--batch", ">= 1"]),
    "out is a file": ("text", ["--text=a", "--out={tmp}/taken"], ["taken", "is a file"]),
}


@pytest.mark.parametrize("case", ERRORS)
def test_errors_are_one_line_and_write_nothing(case, tiny_shap_e, tmp_path, capsys):
    weights, extra, words = ERRORS[case]
    weights = tiny_shap_e[weights][0] if isinstance(weights, str) else weights(tmp_path)
    taken = tmp_path / "taken"
    taken.write_text("keep")
    paths = dict(png=write_png(tmp_path / "in.png"), bad=bad_image(tmp_path), tmp=tmp_path)
    args = argv(weights, tmp_path / "out", *(e.format(**paths) for e in extra))
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert all(w in err for w in words), err
    assert not (tmp_path / "out").exists() and taken.read_text() == "keep"


def test_command_line_exit_code(tmp_path):
    """As `python -m` runs it: exit code 2 and one line, no traceback."""
    out = subprocess.run(
        [sys.executable, "-m", "nd3d_jax.prior", f"--weights={tmp_path}/missing", "--text=a",
         f"--out={tmp_path}/out"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().count("\n") == 0 and "Shap-E folder not found" in out.stderr
    assert not (tmp_path / "out").exists()
