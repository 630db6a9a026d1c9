"""`python -m nd3d_jax.app`: the web demo. A page where a person gives an image and/or a text
(and, without Shap-E weights, a coarse mesh), and gets the textured 3D object to turn around in
a viewer, a zip of GLB + OBJ/MTL/PNG to download and the preview sheet.

    python -m nd3d_jax.app --config=configs/generate.py[:variant] [--params=WORKDIR] \\
        [--host=127.0.0.1] [--port=7860] [--out=DIR] [--warmup=true] [--config.a.b=v]

--params is the trainer WORKDIR (default: out/demo, which `make demo` writes). The pipeline
(`nd3d_jax.pipeline.Generator`) is loaded once and each request goes through
`Generator.generate` with the request's settings, its stage callback naming the stage that runs
(prior, refinement, multi-view diffusion, baking, export); the viewer shows the GLB as soon as
it is written, the preview sheet and the zip follow. Requests are
queued and served one at a time (the page shows the queue position). Every compiled program is
cached for the server's lifetime, and on disk for the next server (the persistent compilation
cache, `nd3d_jax.compile_cache`): guidance and seed are traced arguments (no recompilation);
sampling steps and texture size change static shapes, so each is one of three choices, each
compiled once on first use. --warmup (default true) runs the first example at start-up, so a
request at the default settings compiles nothing new (meshes are padded to size buckets; a
much larger mesh may add a program once). Analytics are off and nothing is fetched from the
network; --out (default: a temporary folder) keeps the last 16 requests' files.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable

import ml_collections

from nd3d_jax import cli
from nd3d_jax.compile_cache import CompileCounter
from nd3d_jax.config_check import Bool, Int, Path
from nd3d_jax.errors import UserError

LOG = logging.getLogger("nd3d_jax.app")
DEFAULT_PARAMS = "out/demo"
KEEP_REQUESTS = 16  # request folders kept under --out
MAX_SEED = 2**31 - 1
FLAGS = {
    "params": "the trainer WORKDIR with the model (default: out/demo from `make demo`)",
    "host": "address to serve on (default 127.0.0.1; 0.0.0.0 for every interface)",
    "port": "port (default 7860)",
    "out": "folder for the requests' files (default: a temporary folder)",
    "warmup": "true (default): generate the first example at start-up, compiling everything",
}
STAGE_NAMES = ("prior", "refine", "conditions", "multiview", "bake", "export")
# the page's words for the Generator's stages (`on_stage`)
STAGE_TEXT = {
    "coarse": "1/5 prior: the coarse shape (Shap-E or the given mesh)",
    "refine": "2/5 refinement: the coarse field on the tet grid, SDF MLP correction",
    "conditions": "2/5 refinement: the model's conditions",
    "multiview": "3/5 multi-view diffusion",
    "bake": "4/5 texture baking",
    "files": "5/5 export: GLB, OBJ",
}


def _log(msg: str) -> None:
    print(f"[app {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclasses.dataclass(frozen=True)
class Request:
    """One page submission (paths are files on the server)."""

    image: str | None = None
    text: str = ""
    coarse_mesh: str | None = None
    seed: int = 0
    guidance: float = 2.0
    steps: int = 25
    texture_size: int = 512


@dataclasses.dataclass
class Output:
    folder: str  # write_result's files: mesh.glb, mesh.obj/.mtl, textures, preview.png, ...
    glb: str
    seconds: dict[str, float]
    compiles: int  # XLA programs compiled while serving this request (cache misses)
    result: object  # the Generator's Result
    request: Request
    zip: str | None = None  # with the preview sheet: after `Runner.previews`
    preview: str | None = None
    lowered: int = 0  # jit cache misses (a persistent-cache hit is lowered, not compiled)

    def markdown(self) -> str:
        from nd3d_jax.pipeline.outputs import fidelity_line

        r, res = self.request, self.result
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())
        fidelity = fidelity_line(res.fidelity).replace("@", "\\@")  # "F1@0.005" is no e-mail
        what = "Done" if self.preview else "Object ready, making the preview sheet"
        return (
            f"**{what} in {sum(self.seconds.values()):.1f} s** ({stages}).  \n"
            f"{len(res.mesh.faces)} faces, texture {r.texture_size} px; "
            f"{fidelity}.  \n"
            f"Seed {r.seed}, guidance {r.guidance:g}, {r.steps} steps; new XLA programs "
            f"compiled: {self.compiles}."
        )


def choices(default: int, low: int, high: int) -> list[int]:
    """Three values around `default` (half, it, double) within [low, high]."""
    return sorted({min(high, max(low, v)) for v in (default // 2, default, default * 2)})


class Runner:
    """The loaded pipeline serving one request at a time (thread-safe)."""

    def __init__(self, config: ml_collections.ConfigDict, log: Callable[[str], None] = _log):
        from nd3d_jax.pipeline.generator import Generator

        config = ml_collections.ConfigDict(config.to_dict())
        config.batch_size = 1  # one object a request (padded to the data axis)
        config.host_workers = 0  # the request's thread bakes it
        self.config, self.log = config, log
        self.counter = CompileCounter()
        self.gen = Generator(config, log=log)
        num_train = int(self.gen.model.stage.schedule.num_train_timesteps)
        self.step_choices = choices(int(config.sample.num_steps), 1, num_train)
        self.texture_choices = choices(int(config.texture.size), 64, 4096)
        self._lock = threading.Lock()
        self.history: list[dict] = []  # per request: id, compiles, lowered, seconds, times

    def default_request(self, **kw) -> Request:
        c = self.config
        base = dict(seed=int(c.seed), guidance=float(c.sample.guidance),
                    steps=int(c.sample.num_steps), texture_size=int(c.texture.size))  # fmt: skip
        return Request(**{**base, **kw})

    def close(self) -> None:
        self.counter.close()

    # ------------------------------------------------------------------ checks
    def check(self, r: Request) -> None:
        """A one-line `UserError` for a request the pipeline cannot run."""
        from nd3d_jax.pipeline.inputs import ObjectInput

        if not r.image and not r.text.strip():
            raise UserError("give an image, a text, or both")
        ObjectInput("object", r.image, r.text, r.coarse_mesh).check()
        p = self.config.prior
        if not r.coarse_mesh and not (p.image_weights or p.text_weights):
            raise UserError(
                "this model has no Shap-E weights to make the coarse shape: upload a coarse "
                "mesh (OBJ/PLY/GLB/OFF/STL) or pick an example"
            )
        if r.steps not in self.step_choices:
            raise UserError(f"sampling steps must be one of {self.step_choices}, got {r.steps}")
        if r.texture_size not in self.texture_choices:
            raise UserError(
                f"texture size must be one of {self.texture_choices}, got {r.texture_size}"
            )
        if not 0 <= r.seed <= MAX_SEED:
            raise UserError(f"seed must be in [0, {MAX_SEED}], got {r.seed}")
        if not (math.isfinite(r.guidance) and 0 <= r.guidance <= 100):
            raise UserError(f"guidance must be in [0, 100], got {r.guidance}")

    def request_config(self, r: Request) -> ml_collections.ConfigDict:
        """The config with the request's settings (for summary.json)."""
        c = ml_collections.ConfigDict(self.config.to_dict())
        c.seed, c.sample.guidance, c.sample.num_steps = r.seed, float(r.guidance), r.steps
        c.texture.size = r.texture_size
        return c

    # ------------------------------------------------------------------ a request
    def run(self, r: Request, folder: str, progress: Callable[[float, str], None] | None = None,
            previews: bool = True) -> Output:  # fmt: skip
        """Generates one object into `folder` through `Generator.generate` (its stages reported
        to `progress` as (fraction done, words)); the GLB first, then (`previews`, else call
        `previews()`) the preview sheet, turntable and zip. Keys as `generate --seed`."""
        with self._lock:
            c, began = self.counter, time.time()
            start = (c.compiled, c.lowered)
            out = self._run(r, folder, progress or (lambda f, d: None))
            if previews:
                self._previews(out)
            out.compiles, out.lowered = c.compiled - start[0], c.lowered - start[1]
            self.history.append({"id": len(self.history), "compiles": out.compiles,
                                 "lowered": out.lowered, "seconds": out.seconds,
                                 "guidance": r.guidance, "started": began,
                                 "finished": time.time()})  # fmt: skip
            total = sum(out.seconds.values())
            self.log(f"request {len(self.history) - 1}: {out.glb} in {total:.1f}s, "
                     f"{out.compiles} programs compiled")  # fmt: skip
            return out

    def previews(self, out: Output) -> Output:
        """The preview sheet, turntable and zip of a `run(previews=False)` output."""
        with self._lock:
            c = self.counter
            start = (c.compiled, c.lowered)
            self._previews(out)
            out.compiles += c.compiled - start[0]
            out.lowered += c.lowered - start[1]
            self.history[-1].update(compiles=out.compiles, lowered=out.lowered,
                                    seconds=out.seconds)  # fmt: skip
            return out

    def _run(self, r: Request, folder: str, progress) -> Output:
        from nd3d_jax.pipeline.generator import RequestSettings
        from nd3d_jax.pipeline.outputs import write_result

        self.check(r)

        def on_stage(_name, stage, fraction):
            progress(fraction, STAGE_TEXT[stage] + (
                f": {r.steps} steps" if stage == "multiview" else
                f": {r.texture_size} px" if stage == "bake" else ""))  # fmt: skip

        settings = RequestSettings(r.steps, float(r.guidance), r.texture_size)
        result = self.gen.generate(r.image, r.text, r.coarse_mesh, "object", r.seed, settings,
                                   on_stage)  # fmt: skip
        seconds = {STAGE_NAMES[0] if k == "coarse" else k: v for k, v in result.seconds.items()}
        t = time.perf_counter()
        files = write_result(result, folder, self.request_config(r), previews=False)
        seconds["export"] = time.perf_counter() - t
        progress(0.9, "the preview sheet")
        return Output(folder, files["mesh.glb"], seconds, 0, result, r)

    def _previews(self, out: Output) -> None:
        from nd3d_jax.pipeline.outputs import add_previews

        t = time.perf_counter()
        files = add_previews(out.result, out.folder, self.request_config(out.request))
        archive = out.folder.rstrip("/") + ".zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
            for name in sorted(files):
                if name.startswith("mesh.") or name.endswith(".png"):
                    z.write(files[name], name)
        out.zip, out.preview = archive, files.get("preview.png")
        out.seconds["previews"] = time.perf_counter() - t


# ---------------------------------------------------------------------- examples
def bundled_examples(params: str, folder: str) -> list:
    """`make demo`'s held-out objects (WORKDIR/held_out/inputs.jsonl: image, text, coarse mesh)
    if there, else four procedural ones written into `folder`."""
    from nd3d_jax.pipeline.inputs import ObjectInput, read_jsonl

    held = os.path.join(params, "held_out", "inputs.jsonl")
    rows = []
    if os.path.isfile(held):
        rows = [r for r in read_jsonl(held) if not isinstance(r, Exception)]
    if not rows:
        from data_pipelines.export_examples import write_synthetic_inputs

        made = write_synthetic_inputs(folder, ("chair", "mug", "sofa", "table"))
        rows = [ObjectInput(r["name"], r["image"], r["text"], r["coarse_mesh"]) for r in made]
    return rows


# ---------------------------------------------------------------------- the page
@dataclasses.dataclass
class Server:
    runner: Runner
    demo: object  # gr.Blocks
    url: str
    out: str
    examples: list

    def close(self) -> None:
        self.demo.close()
        self.runner.close()


def _request_folder(out: str, counter: list[int], r: Request) -> str:
    """OUT/NNNNN/<name>: the request's files (its zip beside them); older ones are deleted."""
    from nd3d_jax.pipeline.inputs import slug

    counter[0] += 1
    shutil.rmtree(os.path.join(out, f"{counter[0] - KEEP_REQUESTS:05d}"), ignore_errors=True)
    stem = os.path.splitext(os.path.basename(r.image))[0] if r.image else r.text
    return os.path.join(out, f"{counter[0]:05d}", slug(stem or "object"))


def _shown(path: str) -> str:
    """A path as the page shows it: relative to the working folder when it lies inside it."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _image_input(gr, **kwargs):
    """A gr.Image whose upload reaches the handler as its file, undecoded: `read_image` then
    gives the one-line message for a file that is not an image or is too large to decode
    (gr.Image's own preprocessing would open it with PIL first). The instance's `preprocess`
    is replaced rather than subclassed: gradio writes a `.pyi` stub beside the source file of
    every gr.Component subclass."""
    image = gr.Image(**kwargs)
    decode = image.preprocess

    def preprocess(payload):
        if payload is not None and payload.path and not (payload.url or "").startswith("data:"):
            return payload.path
        return decode(payload)

    image.preprocess = preprocess
    return image


def build_ui(runner: Runner, examples: list, out: str):
    """The gr.Blocks page; queue it (`demo.queue(default_concurrency_limit=1)`) to serve."""
    import gradio as gr

    from nd3d_jax.pipeline.generator import OBJECT_ERRORS
    from nd3d_jax.pipeline.inputs import MESH_SUFFIXES

    c, counter = runner.config, [0]
    has_prior = bool(c.prior.image_weights or c.prior.text_weights)

    def generate(image, text, coarse_mesh, seed, guidance, steps, texture_size,
                 progress=gr.Progress()):  # noqa: B008  (gradio's way)  # fmt: skip
        try:
            r = Request(image or None, text or "", coarse_mesh or None,
                        int(seed if seed is not None else c.seed), float(guidance),
                        int(steps), int(texture_size))  # fmt: skip
            folder = _request_folder(out, counter, r)
            o = runner.run(r, folder, lambda f, d: progress(f, desc=d), previews=False)
        except (*OBJECT_ERRORS, TypeError) as e:
            msg = " ".join(str(e).split("\n")) or type(e).__name__
            for path in (image, coarse_mesh):  # the upload's name, not the server's path
                if path:
                    msg = msg.replace(str(path), os.path.basename(str(path)))
            runner.log(f"request failed: {msg}")
            raise gr.Error(msg, print_exception=False) from e
        yield o.glb, None, None, o.markdown()  # the viewer first
        try:
            runner.previews(o)
        except Exception as e:  # noqa: BLE001  (the object is shown: keep it, say what failed)
            runner.log(f"previews failed: {type(e).__name__}: {e}")
            gr.Warning(f"the preview sheet and zip could not be made: {e}")
            return
        yield o.glb, o.zip, o.preview, o.markdown()

    prior = ("Shap-E makes the coarse shape from the image (else the text)" if has_prior else
             "this model has no Shap-E weights: give a coarse mesh or pick an example")  # fmt: skip
    with gr.Blocks(title="NeuroDiff3D (JAX)", analytics_enabled=False,
                   delete_cache=(3600, 3600)) as demo:  # fmt: skip
        gr.Markdown(
            "## NeuroDiff3D in JAX: image + text → textured 3D object\n"
            f"Model: `{_shown(runner.gen.model.params_path)}`. Stages: prior (coarse shape) → "
            "refinement → multi-view diffusion → texture baking → export. "
            f"{prior[0].upper() + prior[1:]}. One request runs at a time; others wait in "
            "the queue (their position is shown)."
        )
        with gr.Row():
            with gr.Column(scale=1):
                image = _image_input(
                    gr,
                    label="Image (RGBA is cropped to its alpha)", type="filepath",
                    image_mode=None, height=260, sources=["upload", "clipboard"], elem_id="image",
                )  # fmt: skip
                text = gr.Textbox(label="Description", placeholder="a wooden chair", lines=1,
                                  elem_id="text")  # fmt: skip
                coarse = gr.File(label="Coarse mesh (optional; replaces Shap-E)",
                                 file_types=list(MESH_SUFFIXES), type="filepath",
                                 elem_id="coarse", height=90)  # fmt: skip
                with gr.Accordion("Settings", open=False):
                    seed = gr.Number(label="Seed", value=int(c.seed), precision=0, minimum=0,
                                     maximum=MAX_SEED)  # fmt: skip
                    guidance = gr.Slider(0.0, max(15.0, 2 * float(c.sample.guidance)), step=0.5,
                                         value=float(c.sample.guidance),
                                         label="Guidance (multi-view diffusion)")  # fmt: skip
                    steps = gr.Dropdown(
                        runner.step_choices, value=int(c.sample.num_steps),
                        label="Sampling steps (each choice compiles once)",
                    )  # fmt: skip
                    texture = gr.Dropdown(
                        runner.texture_choices, value=int(c.texture.size),
                        label="Texture size, px (each choice compiles once)",
                    )  # fmt: skip
                button = gr.Button("Generate", variant="primary", elem_id="generate")
                gr.Examples([[e.image, e.text, e.coarse_mesh] for e in examples],
                            [image, text, coarse], label="Examples (image, text, coarse mesh)",
                            cache_examples=False)  # fmt: skip
            with gr.Column(scale=1):
                viewer = gr.Model3D(label="Textured object (drag to turn, scroll to zoom)",
                                    clear_color=(0.93, 0.93, 0.95, 1.0), height=420,
                                    elem_id="viewer")  # fmt: skip
                download = gr.File(label="Download: GLB + OBJ/MTL/PNG (zip)", elem_id="download")
                status = gr.Markdown(elem_id="status")
        preview = gr.Image(label="Preview sheet: input | coarse | refined | conditions N, "
                           "T_hat; the generated views; the textured object turning",
                           type="filepath", interactive=False, elem_id="preview")  # fmt: skip
        button.click(generate, [image, text, coarse, seed, guidance, steps, texture],
                     [viewer, download, preview, status], api_name="generate")  # fmt: skip
    return demo


def serve(config: ml_collections.ConfigDict, *, host: str = "127.0.0.1", port: int = 7860,
          out: str | None = None, warmup: bool = True, log: Callable[[str], None] = _log,
          quiet: bool = False) -> Server:  # fmt: skip
    """Loads the pipeline, optionally warms it up, and starts the page in a background thread
    (`Server.demo.block_thread()` waits on it; `Server.close()` stops it)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio  # noqa: F401  (fails early, before the model loads, if the extra is missing)

    out = os.path.abspath(out or tempfile.mkdtemp(prefix="nd3d_app_"))
    os.makedirs(out, exist_ok=True)
    runner = Runner(config, log)
    try:
        examples = bundled_examples(config.params, os.path.join(out, "examples"))
        if warmup:
            e = examples[0]
            t = time.perf_counter()
            runner.run(runner.default_request(image=e.image, text=e.text,
                                              coarse_mesh=e.coarse_mesh),
                       os.path.join(out, "warmup"))  # fmt: skip
            c = runner.counter
            log(f"warm-up ({e.name}, default settings) in {time.perf_counter() - t:.1f}s; "
                f"{c.compiled} programs compiled, {c.cache_hits} loaded from the compilation "
                "cache")  # fmt: skip
        demo = build_ui(runner, examples, out)
        demo.queue(default_concurrency_limit=1)
        files = [f for e in examples for f in (e.image, e.coarse_mesh) if f]
        allowed = sorted({out, *(os.path.dirname(os.path.abspath(f)) for f in files)})
        _, url, _ = demo.launch(server_name=host, server_port=port, prevent_thread_lock=True,
                                share=False, show_error=True, quiet=quiet, ssr_mode=False,
                                allowed_paths=allowed, max_file_size="64mb",
                                footer_links=["api"])  # fmt: skip
    except BaseException:
        runner.close()
        raise
    log(f"serving {url} (model {runner.gen.model.params_path}; outputs in {out})")
    return Server(runner, demo, url, out, examples)


def _flag_bool(value: str | None, default: bool, name: str) -> bool:
    if value is None:
        return default
    v = value.strip().lower()
    if v not in ("true", "false", "1", "0", "yes", "no"):
        raise UserError(f"--{name}={value}: use true or false")
    return v in ("true", "1", "yes")


def main(config: ml_collections.ConfigDict, workdir, args: dict) -> None:
    del workdir
    params = args["params"] or config.params or DEFAULT_PARAMS
    if not args["params"] and not os.path.isfile(os.path.join(params, "config.json")):
        raise UserError(
            f"no model at {params}: run `make demo` first (it trains one into out/demo), or "
            "pass --params=WORKDIR"
        )
    try:
        port = int(args["port"] or 7860)
    except ValueError:
        raise UserError(f"--port={args['port']}: give a number") from None
    if not 0 < port < 65536:
        raise UserError(f"--port={port}: use 1-65535")
    warmup = _flag_bool(args["warmup"], True, "warmup")
    config.unlock()
    config.params = params
    config.lock()
    server = serve(config, host=args["host"] or "127.0.0.1", port=port, out=args["out"],
                   warmup=warmup)  # fmt: skip
    try:
        server.demo.block_thread()
    finally:
        server.close()


# cli.run options: --params sets config.params; the flags' values checked up front
CLI = dict(command="generate", needs_workdir=False, extra_flags=FLAGS,
           flag_keys={"params": "params"},
           flag_specs={"port": Int(1, 65535), "warmup": Bool(), "out": Path("out")})  # fmt: skip

if __name__ == "__main__":
    cli.run(main, **CLI)
