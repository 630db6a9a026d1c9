"""The web demo (`python -m nd3d_jax.app`): one server (tiny model, tiny Shap-E, warmed up at
start-up), called through its API with `gradio_client`, and driven in a real browser: headless
Chromium (Debian's `chromium`, which `make test` installs; WebGL through SwiftShader) uploads an
image, types a text, clicks Generate and waits for the 3D viewer, whose canvas must show the
object (not a blank clear colour). The screenshot is copied to $ND3D_SCREENSHOT when set."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
import trimesh
from app_fixtures import ROOT, huge_png, shared_app
from gltf_validator import assert_valid_glb
from PIL import Image

pytest.importorskip("gradio")
from gradio_client import Client, handle_file  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run"]  # fmt: skip
CLEAR = np.array([0.93, 0.93, 0.95]) * 255  # the viewer's clear colour (nd3d_jax.app)


@pytest.fixture(scope="module")
def server(request):
    return shared_app(request)


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    """Output files are downloaded over HTTP, as a remote caller gets them."""
    return Client(server.url, verbose=False,
                  download_files=str(tmp_path_factory.mktemp("downloads")))  # fmt: skip


def _call(client, server, image=None, text="", coarse=None, **settings):
    r = server.runner.default_request(**settings)
    return client.predict(None if image is None else handle_file(image), text,
                          None if coarse is None else handle_file(coarse), r.seed, r.guidance,
                          r.steps, r.texture_size, api_name="/generate")  # fmt: skip


def _texture(glb: str) -> np.ndarray:
    (mesh,) = trimesh.load(glb).geometry.values()
    return np.asarray(mesh.visual.material.baseColorTexture.convert("RGB"))


def test_image_and_text_give_a_valid_textured_glb(server, client):
    example = server.examples[0]
    glb, archive, preview, status = _call(client, server, example.image, "a red chair")
    assert_valid_glb(glb)
    (mesh,) = trimesh.load(glb).geometry.values()
    assert len(mesh.faces) > 100 and mesh.visual.uv.shape == (len(mesh.vertices), 2)
    with zipfile.ZipFile(archive) as z:
        names = set(z.namelist())
        mtl = z.read("mesh.mtl").decode()
    texture = [line.split()[-1] for line in mtl.splitlines() if line.startswith("map_Kd")]
    assert {"mesh.glb", "mesh.obj", "mesh.mtl", "preview.png", *texture} <= names
    assert len(texture) == 1
    assert np.asarray(Image.open(preview)).shape == (3 * 64, 8 * 64, 3)
    assert "Done in" in status and "128 px" in status
    # the same object through `Generator.generate` (its own sampler, guidance static): the
    # staged page runs the same stages with the same keys
    result = server.runner.gen.generate(image=example.image, text="a red chair", seed=0)
    np.testing.assert_allclose(_texture(glb), _texture_of(result), atol=2)


def _texture_of(result) -> np.ndarray:
    return np.asarray(result.mesh.visual.material.baseColorTexture.convert("RGB"))


def test_two_requests_at_once_run_in_order_and_compile_nothing(server, client):
    """Both wait in one queue (the second is told its place); guidance is traced and the
    warm-up compiled the example's shapes, so neither compiles a program."""
    from gradio_client.utils import Status

    e = server.examples[0]
    before = len(server.runner.history)
    args = (handle_file(e.image), e.text, handle_file(e.coarse_mesh), 0)
    first = client.submit(*args, 2.0, 2, 128, api_name="/generate")
    while first.status().code in (Status.STARTING, Status.JOINING_QUEUE):
        time.sleep(0.01)
    second = client.submit(*args, 6.0, 2, 128, api_name="/generate")
    seen, stages = set(), set()
    while not (first.done() and second.done()):
        seen.add(second.status().code)
        progress = first.status().progress_data
        stages.update(p.desc for p in progress or () if p.desc)
        time.sleep(0.01)
    outs = [first.result(timeout=300), second.result(timeout=300)]
    new = server.runner.history[before:]
    assert [h["guidance"] for h in new] == [2.0, 6.0]
    assert new[0]["finished"] <= new[1]["started"]  # one at a time, in order
    assert [(h["compiles"], h["lowered"]) for h in new] == [(0, 0), (0, 0)], new
    assert Status.IN_QUEUE in seen, seen
    assert any(s[:4] in ("1/5 ", "2/5 ", "3/5 ", "4/5 ", "5/5 ") for s in stages), stages
    assert "guidance 2," in outs[0][3] and "guidance 6," in outs[1][3]
    assert "compiled: 0" in outs[1][3]
    assert_valid_glb(*(o[0] for o in outs))
    # the guidance took effect: the views (and so the textures) differ
    assert np.abs(_texture(outs[0][0]).astype(int) - _texture(outs[1][0])).max() > 10


@pytest.mark.parametrize(
    "kind, message",
    [
        ("nothing", "give an image, a text, or both"),
        ("text file", "notes.txt: not a readable image"),
        ("huge image", "too large to decode"),
    ],
)
def test_bad_input_gets_a_message_and_the_app_keeps_serving(server, client, kind, message,
                                                            tmp_path):  # fmt: skip
    from gradio_client.exceptions import AppError

    if kind == "nothing":
        image = None
    elif kind == "text file":
        image = str(tmp_path / "notes.txt")
        open(image, "w").write("not an image\n")
    else:
        image = huge_png(str(tmp_path / "huge.png"))
    with pytest.raises(AppError, match=message):
        _call(client, server, image, "" if kind == "nothing" else "a chair")
    e = server.examples[1]
    glb, *_, status = _call(client, server, e.image, e.text, e.coarse_mesh)
    assert_valid_glb(glb)
    assert "Done in" in status
    # gradio writes a .pyi stub beside any gr.Component subclass's source: we define none
    assert not os.path.exists(os.path.join(ROOT, "nd3d_jax", "app.pyi"))


def test_command_without_a_model_names_make_demo(tmp_path):
    run = subprocess.run([sys.executable, "-m", "nd3d_jax.app",
                          f"--config={ROOT}/configs/generate.py:demo"], capture_output=True,
                         text=True, cwd=tmp_path, timeout=120,
                         env={**os.environ, "PYTHONPATH": ROOT})  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert "make demo" in run.stderr and len(run.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="no chromium: make test installs it")
def test_page_generates_and_shows_the_object(server, tmp_path):
    image = server.examples[0].image
    from playwright import sync_api

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.goto(server.url, wait_until="networkidle")
            page.locator("#image input[type=file]").set_input_files(image)
            page.locator("#image img").first.wait_for(state="visible", timeout=60_000)
            page.locator("#text textarea").fill("a red chair")
            page.locator("#generate").click()
            page.locator("#status").get_by_text("Done in").wait_for(timeout=240_000)
            canvas = page.locator("#viewer canvas").first
            canvas.wait_for(state="visible", timeout=60_000)
            page.wait_for_timeout(3000)  # the GLB loads and the render loop draws it
            canvas.screenshot(path=str(tmp_path / "canvas.png"))
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        finally:
            browser.close()
    if os.environ.get("ND3D_SCREENSHOT"):
        shutil.copy(tmp_path / "page.png", os.environ["ND3D_SCREENSHOT"])
    pixels = np.asarray(Image.open(tmp_path / "canvas.png").convert("RGB"), np.float32)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    # the object covers part of the canvas, in colours far from the clear colour
    off = np.abs(pixels - CLEAR).max(axis=-1) > 40
    assert 0.01 < off.mean() < 0.95, off.mean()
    assert pixels[off].std(axis=0).max() > 5  # shaded and textured, not one flat colour
