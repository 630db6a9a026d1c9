"""`python -m nd3d_jax.generate`: image + text -> a textured 3D object (GLB, OBJ, previews).

One object:
    python -m nd3d_jax.generate --config=configs/generate.py[:variant] --params=WORKDIR \\
        --image=IMG --text="..." --out=DIR [--coarse_mesh=MESH] [--seed=N] [--config.a.b=v]
Many (one JSON object per line: {"image": ..., "text": ..., "coarse_mesh": ..., "name": ...}):
    python -m nd3d_jax.generate --config=... --params=WORKDIR --inputs=FILE.jsonl --out=DIR

--params is the trainer's WORKDIR (its config.json and params_final/ or checkpoints).
--image: RGB or RGBA of any size; RGBA is cropped to the object and framed like the training
renders, RGB is used whole. --coarse_mesh (OBJ/PLY/GLB, colours optional) replaces Shap-E.
Each object gets a folder (DIR itself for one object, DIR/<name> for many) with mesh.glb,
mesh.obj/.mtl/.png, views.png, preview.png, turntable.gif and summary.json. Objects already
done are skipped; a failed object is reported and skipped; the exit code is 0 unless nothing
could be generated at all.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time

import ml_collections

from nd3d_jax import cli
from nd3d_jax.compile_cache import CompileCounter
from nd3d_jax.config_check import Int, Path
from nd3d_jax.errors import UserError

LOG = logging.getLogger("nd3d_jax.generate")
FLAGS = {
    "image": "input image (RGB or RGBA)",
    "text": "text description",
    "coarse_mesh": "a coarse mesh instead of Shap-E (OBJ/PLY/GLB)",
    "inputs": "a JSON-lines file of objects",
    "out": "output folder",
    "params": "the trainer WORKDIR with the model",
    "seed": "random seed (default: config.seed)",
}


def _log(msg: str) -> None:
    print(f"[generate {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def objects_from_flags(args: dict):
    """(objects or errors, their folders, indices) from the flags."""
    from nd3d_jax.pipeline.inputs import ObjectInput, read_jsonl

    out = args["out"]
    if args["inputs"]:
        if args["image"] or args["text"] or args["coarse_mesh"]:
            raise UserError("--inputs takes its images, texts and meshes from the file: drop "
                            "--image/--text/--coarse_mesh")  # fmt: skip
        rows = read_jsonl(args["inputs"])
        folders = [None if isinstance(r, Exception) else os.path.join(out, r.name) for r in rows]
        names = [r.name for r in rows if not isinstance(r, Exception)]
        if len(set(names)) != len(names):
            raise UserError(f'{args["inputs"]}: two lines share an output name; give "name"s')
        return rows, folders
    if not (args["image"] or args["text"]):
        raise UserError("give --image and/or --text (or --inputs=FILE.jsonl)")
    obj = ObjectInput(os.path.basename(os.path.normpath(out)) or "object", args["image"],
                      args["text"] or "", args["coarse_mesh"])  # fmt: skip
    obj.check()
    return [obj], [out]


def run(config: ml_collections.ConfigDict, args: dict, generator=None) -> dict:
    """Generates every object not yet done; returns {"done", "skipped", "failed", "compiles"
    (`CompileCounter.summary`), "seconds" ("model": loading it, "first_object": from then to
    the first object's result)}. `generator`: an already loaded `Generator` for `config` (else
    one is loaded if needed)."""
    from tqdm import tqdm

    from nd3d_jax.pipeline.generator import Generator
    from nd3d_jax.pipeline.outputs import fidelity_line, is_done, write_result

    if not args["out"]:
        raise UserError("--out=DIR is required")
    rows, folders = objects_from_flags(args)
    report = {"done": [], "skipped": [], "failed": []}
    todo, todo_idx, todo_dirs = [], [], []
    for i, (row, folder) in enumerate(zip(rows, folders, strict=True)):
        if isinstance(row, Exception):
            _log(f"skipped: {row}")
            report["failed"].append(str(row))
        elif is_done(folder):
            report["skipped"].append(folder)
        else:
            todo.append(row)
            todo_idx.append(i)
            todo_dirs.append(folder)
    if report["skipped"]:
        _log(f"{len(report['skipped'])} objects already done (delete their folders to redo)")
    counter = CompileCounter()
    try:
        if todo:
            seed = int(args["seed"]) if args["seed"] is not None else config.seed
            t = time.perf_counter()
            generator = generator or Generator(config, log=_log)
            loaded = time.perf_counter()
            report["seconds"] = {"model": loaded - t}
            bar = tqdm(total=len(todo), desc="generate", unit="object", file=sys.stderr,
                       disable=len(todo) < 2)  # fmt: skip
            by_name = dict(zip([o.name for o in todo], todo_dirs, strict=True))
            lock = threading.Lock()

            def done(_, result):  # in a host worker thread: the files overlap the next batch
                with lock:
                    report["seconds"].setdefault("first_object", time.perf_counter() - loaded)
                if isinstance(result, Exception):
                    with lock:
                        _log(f"failed: {result}")
                        report["failed"].append(str(result))
                        bar.update(1)
                    return
                try:
                    files = write_result(result, by_name[result.name], config)
                except Exception as e:  # noqa: BLE001  (this object's files only; logged)
                    if not isinstance(e, OSError):
                        LOG.exception("%s: writing its files failed", result.name)
                    with lock:
                        _log(f"failed: {result.name}: cannot write its files ({e})")
                        report["failed"].append(f"{result.name}: {e}")
                        bar.update(1)
                    return
                stages = ", ".join(f"{k} {v:.1f}s" for k, v in result.seconds.items())
                with lock:
                    _log(f"{result.name}: {files['mesh.glb']} ({stages}; "
                         f"{fidelity_line(result.fidelity)})")  # fmt: skip
                    report["done"].append(by_name[result.name])
                    bar.update(1)

            generator.generate_many(todo, seed=seed, indices=todo_idx, progress=done)
            bar.close()
    except BaseException as e:  # the objects done so far stay reported
        report["error"] = (str(e).splitlines() or [""])[0] or type(e).__name__
        raise
    finally:
        counter.close()
        for key in ("done", "skipped", "failed"):  # threads finish in any order
            report[key] = sorted(report[key])
        report["compiles"] = counter.summary()  # a warm cache: 0 compiled
        os.makedirs(args["out"], exist_ok=True)
        with open(os.path.join(args["out"], "generate_report.json"), "w") as f:
            json.dump(report, f, indent=2)
    c = report["compiles"]
    _log(f"{len(report['done'])} generated, {len(report['skipped'])} already done, "
         f"{len(report['failed'])} failed; in {args['out']} ({c['compiled']} XLA programs "
         f"compiled, {c['cache_hits']} from the compilation cache)")  # fmt: skip
    if todo and not report["done"] and len(report["failed"]) == len(rows):
        raise UserError("no object could be generated (see the messages above)")
    return report


def main(config: ml_collections.ConfigDict, workdir, args: dict) -> None:
    del workdir
    if args["params"]:
        config.unlock()
        config.params = args["params"]
        config.lock()
    run(config, args)


# cli.run options: --params sets config.params; --out and --seed checked up front
CLI = dict(
    command="generate",
    needs_workdir=False,
    extra_flags=FLAGS,
    flag_keys={"params": "params"},
    # (--image, --coarse_mesh and --inputs are checked per object, naming it, before any model)
    flag_specs={"out": Path("out"), "seed": Int(0)},
)

if __name__ == "__main__":
    cli.run(main, **CLI)
