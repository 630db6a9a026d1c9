"""The web demo in a real browser: headless Chromium (Debian's `chromium`; WebGL through
SwiftShader) uploads an image, types a text, clicks Generate and waits for the 3D viewer;
the viewer's canvas must show the object (not a blank clear colour). The screenshot is saved
(and copied to $ND3D_SCREENSHOT when set)."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from app_fixtures import shared_app
from PIL import Image

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run"]  # fmt: skip
CLEAR = np.array([0.93, 0.93, 0.95]) * 255  # the viewer's clear colour (nd3d_jax.app)

if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)
pytest.importorskip("gradio")
sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def server(request):
    return shared_app(request)


def test_page_generates_and_shows_the_object(server, tmp_path):
    image = server.examples[0].image
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
