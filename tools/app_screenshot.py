"""The README's screenshot of the web demo: `python tools/app_screenshot.py [--params=out/demo]
[--example=chair] [--out=docs/app_screenshot.png]` serves the `make demo` model (its held-out
objects are the examples), and headless Chromium (Debian's, as in tests/test_app.py) uploads
one example's image, text and coarse mesh, clicks Generate and saves the page once the preview
sheet is shown. Run it from the repository root after `make demo`."""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nd3d_jax import compile_cache  # noqa: E402
from nd3d_jax.app import serve  # noqa: E402
from nd3d_jax.config_cli import load_config  # noqa: E402

ARGS = ["--headless", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run"]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", default="out/demo")
    p.add_argument("--example", default="chair", help="the first example whose name has this")
    p.add_argument("--out", default="docs/app_screenshot.png")
    p.add_argument("--port", type=int, default=7861)
    a = p.parse_args()
    config = load_config("configs/generate.py:demo")
    config.params = a.params
    compile_cache.setup(config.compilation_cache)  # as the command does
    server = serve(config, port=a.port, warmup=True, quiet=True)
    try:
        (e,) = [x for x in server.examples if a.example in x.name][:1]
        from playwright import sync_api

        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(server.url, wait_until="networkidle")
            page.locator("#image input[type=file]").set_input_files(e.image)
            page.locator("#image img").first.wait_for(state="visible", timeout=60_000)
            page.locator("#text textarea").fill(e.text)
            page.locator("#coarse input[type=file]").set_input_files(e.coarse_mesh)
            page.wait_for_timeout(1000)
            page.locator("#generate").click()
            page.locator("#status").get_by_text("Done in").wait_for(timeout=600_000)
            page.locator("#preview img").first.wait_for(state="visible", timeout=60_000)
            page.wait_for_timeout(4000)  # the GLB loads and the viewer draws it
            page.screenshot(path=a.out, full_page=True)
            browser.close()
        print(f"{a.out}: {e.name}")
    finally:
        server.close()


if __name__ == "__main__":
    main()
