"""`python -m nd3d_jax.generate` and `nd3d_jax.pipeline` end to end on the tiny model.

The model is the tiny demo config's (its initial parameters: `generate_fixtures`); coarse
shapes come from coloured synthetic meshes (`--coarse_mesh`), as in `make demo`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import trimesh
from gltf_validator import assert_valid_glb
from PIL import Image

from nd3d_jax.config_cli import load_config
from nd3d_jax.errors import UserError
from nd3d_jax.pipeline import Generator, Result
from nd3d_jax.pipeline.inputs import ObjectInput, prepare_image, read_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = ("mesh.glb", "mesh.obj", "mesh.mtl", "views.png", "preview.png", "turntable.gif",
         "summary.json")  # fmt: skip


def _config(model: str, **overrides):
    c = load_config(os.path.join(ROOT, "configs/generate.py:tiny"))
    c.params = model
    for key, value in overrides.items():
        node = c
        *path, leaf = key.split(".")
        for p in path:
            node = node[p]
        node[leaf] = value
    return c


def _objects(object_inputs, n):
    return [ObjectInput(f"obj{i}", r["image"], r["text"], r["coarse_mesh"])
            for i, r in enumerate(object_inputs[:n])]  # fmt: skip


@pytest.fixture(scope="module")
def generators(tiny_model, tiny_shap_e):
    """{devices: Generator} on 8 devices and on 1, with the tiny Shap-E pipelines."""
    return {
        n: Generator(_config(tiny_model, **{"mesh.num_devices": n,
                                            "prior.image_weights": tiny_shap_e["image"][0],
                                            "prior.text_weights": tiny_shap_e["text"][0]}))
        for n in (8, 1)
    }  # fmt: skip


@pytest.fixture(scope="module")
def sharded_and_single(generators, object_inputs):
    """The same 3 objects (coarse meshes given) on 8 devices and on 1 (a batch of 8 each)."""
    objects = _objects(object_inputs, 3)
    return {n: gen.generate_many(objects) for n, gen in generators.items()}


def _render(r: Result) -> np.ndarray:
    """The textured mesh at its K view cameras (glTF UVs: v up; the atlas's: v down)."""
    from nd3d_jax.texture import render_views

    uv = np.asarray(r.mesh.visual.uv, np.float32) * [1, -1] + [0, 1]
    v, f = np.asarray(r.mesh.vertices, np.float32), np.asarray(r.mesh.faces, np.int32)
    return np.asarray(render_views(r.cameras, v, f, uv.astype(np.float32), r.texture))


def test_sharded_batch_equals_one_device(sharded_and_single):
    eight, one = sharded_and_single[8], sharded_and_single[1]
    for a, b in zip(eight, one, strict=True):
        assert isinstance(a, Result) and isinstance(b, Result)
        np.testing.assert_array_equal(a.refined.faces, b.refined.faces)
        np.testing.assert_allclose(a.refined.vertices, b.refined.vertices, atol=1e-5)
        np.testing.assert_allclose(a.views, b.views, atol=1e-5)
        # Quadric decimation amplifies float noise (3e-7 reorders every face), so the
        # textured meshes are compared as what they show: renders at the K view cameras.
        assert len(a.mesh.faces) == len(b.mesh.faces)
        ra, rb = _render(a), _render(b)
        assert -10 * np.log10(np.mean((ra - rb) ** 2) + 1e-12) >= 40.0
        assert abs(a.coverage - b.coverage) < 0.01 and a.coverage > 0.3
    # different objects (and keys) give different views
    assert np.abs(eight[0].views - eight[1].views).max() > 0.05


def test_overlapped_host_stages_give_the_serial_results(generators, object_inputs, tmp_path):
    """Batches of 1: objects 2 and 3 are sampled while threads bake and write 1 and 2."""
    from nd3d_jax.pipeline.outputs import write_result

    gen, objects = generators[1], _objects(object_inputs, 3)
    written, stages = {}, []
    quick = _config("", **{"output.preview": False, "output.turntable_frames": 0})
    gen.batch_size, saved = 1, gen.batch_size
    try:
        runs = {}
        for workers in (0, 2):
            gen.host_workers = workers

            def write(name, result, workers=workers):
                path = str(tmp_path / f"w{workers}" / name)
                written[workers, name] = write_result(result, path, quick)

            runs[workers] = gen.generate_many(objects, progress=write,
                                              on_stage=lambda *a: stages.append(a))  # fmt: skip
    finally:
        gen.batch_size, gen.host_workers = saved, 0
    for a, b in zip(runs[0], runs[2], strict=True):
        np.testing.assert_array_equal(a.mesh.faces, b.mesh.faces)
        np.testing.assert_allclose(a.texture, b.texture, atol=1e-6)
        pa, pb = written[0, a.name], written[2, b.name]
        assert sorted(map(os.path.basename, pa)) == sorted(map(os.path.basename, pb))
        for name in ("mesh.obj", "views.png"):
            assert open(pa[name], "rb").read() == open(pb[name], "rb").read(), name
    assert {s[1] for s in stages} == {"coarse", "refine", "conditions", "multiview", "bake",
                                      "files"}  # fmt: skip


def test_overlapped_failure_stays_with_its_object(generators, object_inputs, monkeypatch):
    """An unexpected error in one object's host stage (here the unwrapper's RuntimeError) is
    that object's result; the batch after it is still sampled, baked and reported."""
    gen, objects = generators[1], _objects(object_inputs, 2)
    bake, reported = gen.bake, []

    def flaky_bake(refined, views, settings=None):
        if len(reported) == 0:
            raise RuntimeError("xatlas packed 2 atlases")
        return bake(refined, views, settings)

    monkeypatch.setattr(gen, "bake", flaky_bake)
    monkeypatch.setattr(gen, "batch_size", 1)
    monkeypatch.setattr(gen, "host_workers", 1)
    out = gen.generate_many(objects, progress=lambda n, r: reported.append(r))
    assert isinstance(out[0], UserError) and "baking failed" in str(out[0])
    assert str(out[0]).startswith(objects[0].name) and "\n" not in str(out[0])
    assert not isinstance(out[1], Exception) and len(out[1].mesh.faces) > 0
    assert reported == out


def test_result_is_a_textured_mesh(sharded_and_single, tmp_path):
    from nd3d_jax.pipeline.outputs import fidelity_line, write_result

    r = sharded_and_single[8][0]
    k, tile = 4, 32
    assert r.views.shape == (k, tile, tile, 3) and r.image.shape == (512, 512, 3)
    assert set(r.seconds) == {"coarse", "refine", "conditions", "multiview", "bake"}
    assert r.refined.is_watertight
    tex = np.asarray(r.mesh.visual.material.baseColorTexture.convert("RGB"))
    np.testing.assert_array_equal(tex, (np.clip(r.texture, 0, 1) * 255 + 0.5).astype(np.uint8))
    files = write_result(r, str(tmp_path / "obj"), _config(""))
    assert set(FILES) <= set(files)
    assert_valid_glb(files["mesh.glb"])
    scene = trimesh.load(files["mesh.glb"])
    (loaded,) = scene.geometry.values()
    assert len(loaded.faces) == len(r.mesh.faces)
    np.testing.assert_allclose(loaded.visual.uv, r.mesh.visual.uv, atol=1e-6)
    np.testing.assert_array_equal(
        np.asarray(loaded.visual.material.baseColorTexture.convert("RGB")), tex
    )
    sheet = np.asarray(Image.open(files["preview.png"]))
    assert sheet.shape == (3 * 64, 8 * 64, 3)
    gif = Image.open(files["turntable.gif"])
    assert gif.n_frames == 8
    again = write_result(r, str(tmp_path / "obj"), _config(""))  # replaces the old result
    assert again == files and sorted(os.listdir(tmp_path)) == ["obj"]
    bad = _config("", **{"output.turntable_frames": 5})
    with pytest.raises(UserError, match="multiple of 8"):
        write_result(r, str(tmp_path / "obj"), bad)
    summary = json.load(open(files["summary.json"]))
    assert summary["textured"]["faces"] == len(r.mesh.faces)
    fid = summary["fidelity"]
    assert fid["pieces_coarse"] >= 1 and fid["pieces_refined"] >= 1 and fid["f1@0.02"] > 0.5
    assert 0 < fid["texture_painted"] <= fid["texture_visible_painted"] <= 1
    assert {"chamfer_l2", "f1@0.005", "f1@0.01"} <= set(fid)
    assert summary["settings"]["texture"]["size"] == 128
    line = fidelity_line(r.fidelity)  # the logs' and the web demo's status line
    f1 = "/".join(f"{r.fidelity[f'f1@{t}']:.3f}" for t in ("0.005", "0.01", "0.02"))
    assert f"{fid['pieces_coarse']} -> {fid['pieces_refined']} pieces" in line
    assert f"F1@0.005/0.01/0.02 {f1}" in line and "\n" not in line


def test_command_many_objects_with_a_bad_line(tiny_model, object_inputs, tmp_path):
    """Two objects and a bad line; with the objects' folders deleted, a second process makes
    the same files and compiles no XLA program (the persistent compilation cache, in its own
    folder here). Done objects are skipped: `test_nothing_to_do_loads_no_model`."""
    lines = [dict(r, name=f"o{i}") for i, r in enumerate(object_inputs[:2])]
    lines.insert(1, {"image": "missing.png", "text": "nothing here"})
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "nd3d_jax.generate", "--config=configs/generate.py:tiny",
           f"--params={tiny_model}", f"--inputs={inputs}", f"--out={out}",
           "--config.output.turntable_frames=0"]  # fmt: skip
    env = {
        k: v
        for k, v in os.environ.items()  # the commands' own cache defaults
        if k not in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")
    }
    env["ND3D_COMPILATION_CACHE"] = str(tmp_path / "xla")

    def generate():
        run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600, env=env)
        assert run.returncode == 0, run.stderr[-3000:]
        return run.stderr, json.load(open(out / "generate_report.json"))

    stderr, report = generate()
    glbs = sorted(str(p) for p in out.glob("*/mesh.glb"))
    assert len(glbs) == 2
    assert_valid_glb(*glbs)
    assert len(report["done"]) == 2 and len(report["failed"]) == 1
    assert "line 2" in report["failed"][0] and "missing.png" in report["failed"][0]
    assert "2 generated" in stderr and "1 failed" in stderr
    assert report["compiles"]["compiled"] > 10 and os.listdir(tmp_path / "xla")
    # host arrays stay host work: eager jnp on them compiled a program per shape (39 here now;
    # one object alone compiled 134 before)
    assert report["compiles"]["compiled"] <= 48, report["compiles"]["compiled_programs"]

    first = {p: open(p, "rb").read() for p in glbs}
    for p in glbs:
        shutil.rmtree(os.path.dirname(p))
    stderr, report = generate()
    assert "2 generated" in stderr
    c = report["compiles"]
    assert c["compiled"] == 0 and c["cache_hits"] > 10, c["compiled_programs"]
    assert {p: open(p, "rb").read() for p in glbs} == first  # the cached programs' results


def test_nothing_to_do_loads_no_model(tiny_model, object_inputs, tmp_path, monkeypatch):
    """A rerun whose objects are all done returns before loading the model."""
    from configs.generate import get_config
    from nd3d_jax import generate as generate_cmd
    from nd3d_jax.pipeline import generator
    from nd3d_jax.pipeline.outputs import SUMMARY

    (tmp_path / "inputs.jsonl").write_text(json.dumps(dict(object_inputs[0], name="o0")) + "\n")
    done = tmp_path / "out" / "o0"
    done.mkdir(parents=True)
    (done / SUMMARY).write_text("{}")  # written last: the object is done

    def no_model(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(generator.Generator, "__init__", no_model)
    config = get_config("tiny")
    config.params = tiny_model
    args = dict(inputs=str(tmp_path / "inputs.jsonl"), out=str(tmp_path / "out"), image=None,
                text=None, coarse_mesh=None, seed=None)  # fmt: skip
    report = generate_cmd.run(config, args)
    assert report["skipped"] == [str(done)] and not report["done"] and not report["failed"]


def test_prepare_image_crops_rgba_and_keeps_rgb_whole():
    rgba = np.zeros((50, 80, 4), np.uint8)
    rgba[10:30, 20:30] = [200, 10, 10, 255]  # a 20 x 10 object
    out = prepare_image(Image.fromarray(rgba, "RGBA"), 100, object_fraction=0.5)
    red = (out[..., 0] > 150) & (out[..., 1] < 80)
    rows, cols = np.nonzero(red)
    # the object's longer side (20 px) fills half the square (40 px -> 100 px: 50 px)
    assert abs((rows.max() - rows.min() + 1) - 50) <= 2
    assert abs((cols.max() - cols.min() + 1) - 25) <= 2
    assert abs((rows.min() + rows.max()) / 2 - 49.5) <= 1.5  # centred
    assert (out[: rows.min() - 8] > 245).all() and (out[rows.max() + 9 :] > 245).all()  # white
    rgb = np.zeros((20, 40, 3), np.uint8)  # black, no alpha: used whole, padded with white
    out = prepare_image(Image.fromarray(rgb), 40)
    assert (out[10:30] < 30).all() and (out[:8] > 225).all() and (out[32:] > 225).all()
    empty = np.zeros((8, 8, 4), np.uint8)
    with pytest.raises(UserError, match="alpha channel is empty"):
        prepare_image(Image.fromarray(empty, "RGBA"), 16)


def test_read_jsonl_reports_each_bad_line(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    lines = ['{"image": "a.png", "text": "x"}', "not json", '{"text": ""}',
             '{"text": "ok", "colour": 1}', '["a"]', '{"text": "a chair"}']  # fmt: skip
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n\n")
    rows = read_jsonl(str(path))
    assert [isinstance(r, UserError) for r in rows] == [False, True, True, True, True, False]
    assert rows[0].image == str(tmp_path / "a.png") and rows[0].name == "0000_a"
    assert "line 2" in str(rows[1]) and "line 3" in str(rows[2])
    assert "give an image, a text, or both" in str(rows[2])
    assert "unknown keys ['colour']" in str(rows[3])
    assert rows[5].name == "0005_a_chair"


def test_shap_e_coarse_shapes_from_image_and_text(generators, object_inputs):
    """No coarse mesh: Shap-E makes it, img2img for an image, the text pipeline for a text
    alone (whose model input image is then the coarse shape seen from the first view)."""
    gen = generators[8]
    objects = [ObjectInput("img", object_inputs[0]["image"], "a chair"),
               ObjectInput("txt", None, "a round thing")]  # fmt: skip
    img, txt = gen.generate_many(objects)
    for r in (img, txt):
        assert isinstance(r, Result), r
        assert len(r.coarse.faces) > 100 and len(r.refined.faces) > 100
        lo, hi = r.coarse.bounds
        assert np.isclose((hi - lo).max(), 1.0, atol=1e-4)  # the unit-cube frame
        assert r.coverage > 0.3
    assert (txt.image < 250).any(axis=-1).mean() > 0.05  # the rendered coarse shape, not blank
    # a group's latents come from each object's own key: alone, the same coarse mesh
    (again,) = gen.generate_many(objects[1:], indices=[1])
    np.testing.assert_allclose(again.coarse.vertices, txt.coarse.vertices, atol=1e-5)
