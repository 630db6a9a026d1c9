"""Generation on one GPU: seconds per object per stage at the paper's sizes (random weights),
beside the paper's 7 s per object (Table 3). Standalone: no `nd3d_jax.benchmark` and no
tensorflow/tfds; needs trimesh, libigl, xatlas, fast-simplification, ml_collections and grain
(carry their wheels: `GEN_SITE=/tmp/site` is appended to sys.path, after the machine's own
packages).

    PYTHONPATH=. python benchmarks/gpu_generate.py            # paper sizes
    PYTHONPATH=. python benchmarks/gpu_generate.py --quick    # tiny model (CPU is fine)

`python -m nd3d_jax.benchmark generate` runs the quick form on CPU in subprocesses (8
simulated devices vs 1).

What runs: `configs/neurodiff3d.py:random` (SD 1.5-sized UNet and VAE, CLIP ViT-B/32,
ResNet-18, the adapter; bfloat16 compute) with random parameters, sampled by the generation
pipeline with `configs/generate.py`'s paper settings (50 DDIM steps with guidance, K = 4 views
of 256 px, refinement eq 4-7 on a 64^3 tet grid, 1024-texel textures). Coarse shapes are
synthetic objects given as coarse meshes (a random Shap-E makes noise, not shapes); Shap-E's
own stage is `benchmarks/gpu_prior.py` (64 Heun steps), and the 128^3 coarse-mesh extraction
is timed here on a real shape's SDF. Each batch size runs twice; the second (warm) run counts,
and the first's seconds and compile counts are kept (`first_*`): with `--compilation_cache`
given a folder that an earlier run filled, that is the first object with a warm cache. Prints
JSON and writes $OUT/generate_gpu.json (`--out_name`) when $OUT is set.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.8")
if os.environ.get("GEN_SITE"):
    sys.path.append(os.environ["GEN_SITE"])
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

T0 = time.perf_counter()
CATEGORIES = ("chair", "sofa", "table", "mug", "lamp", "bed", "vase", "desk")


def log(msg: str) -> None:
    print(f"[gpu_generate {time.perf_counter() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def write_inputs(folder: str, n: int) -> list:
    """n synthetic objects: a coloured coarse mesh and an RGBA photo each."""
    from data_pipelines.export_examples import write_synthetic_inputs
    from nd3d_jax.pipeline.inputs import ObjectInput

    categories = [CATEGORIES[i % len(CATEGORIES)] for i in range(n)]
    return [ObjectInput(**row) for row in write_synthetic_inputs(folder, categories)]


def model(quick: bool, gen_config, mesh, workdir: str):
    import flax.linen as nn

    from configs import neurodiff3d
    from nd3d_jax.pipeline.multiview import MultiView
    from nd3d_jax.stages.neurodiff3d import NeuroDiff3DStage

    train_config = neurodiff3d.get_config("variant=tiny" if quick else "variant=random")
    train_config.data.data_dir = os.path.join(workdir, "data")
    t = time.perf_counter()
    stage = NeuroDiff3DStage(train_config)
    # random parameters of the right shapes (N(0, 0.02); norm scales and running variances 1,
    # running means 0), drawn on the host: compiling the paper model's init takes minutes on a
    # GPU, eager per-leaf draws compile one program per shape, and the timings do not depend on
    # the values
    flat = jax.tree_util.tree_flatten_with_path(nn.unbox(stage.abstract_params()))
    rng = np.random.default_rng(0)

    def leaf(path, x):
        name = str(path[-1])
        if name in ("['scale']", "['var']"):
            return np.ones(x.shape, x.dtype)
        if name == "['mean']":
            return np.zeros(x.shape, x.dtype)
        return (0.02 * rng.standard_normal(x.shape, np.float32)).astype(x.dtype)

    params = jax.device_put(jax.tree.unflatten(flat[1], [leaf(p, x) for p, x in flat[0]]))
    params = jax.block_until_ready(params)
    count = sum(x.size for x in jax.tree.leaves(params))
    log(f"model: {count / 1e6:.1f}M parameters, init {time.perf_counter() - t:.1f}s")
    mv = MultiView(workdir, gen_config, mesh, train_config=train_config, params=params)
    return mv, count


def coarse_extraction(resolution: int) -> float:
    """Seconds to mesh a real shape's SDF sampled on the R^3 coarse grid (the Shap-E stage's
    host part after the field query)."""
    from data_pipelines.shape_samples import signed_distance
    from data_pipelines.synthetic.shapes import make_object
    from nd3d_jax.pipeline.coarse import normalised
    from nd3d_jax.prior.mesh import extract_coarse, grid_points

    unit = normalised(make_object("chair", 0), "chair")
    sdf = signed_distance(unit, grid_points(resolution) * 0.6)
    extract_coarse(sdf, resolution)
    t = time.perf_counter()
    mesh = extract_coarse(sdf, resolution)
    seconds = time.perf_counter() - t
    log(f"coarse extraction {resolution}^3: {seconds:.2f}s ({len(mesh.faces)} faces)")
    return seconds


def run_batch(gen, objects, label: str) -> dict:
    t = time.perf_counter()
    results = gen.generate_many(objects)
    wall = time.perf_counter() - t
    bad = [r for r in results if isinstance(r, Exception)]
    if bad:
        raise RuntimeError(f"{label}: {bad[0]}")
    stages = {k: statistics.mean(r.seconds[k] for r in results) for k in results[0].seconds}
    faces = statistics.mean(len(r.mesh.faces) for r in results)
    parts = ", ".join(f"{k} {v:.2f}" for k, v in stages.items())
    log(f"{label}: {wall / len(objects):.2f} s/object; {parts}; {faces:.0f} faces")
    return {"seconds_per_object": wall / len(objects), "stages": stages, "faces": faces,
            "results": results}  # fmt: skip


def bake_export(gen, result, size: int, gen_config, tmp: str) -> dict:
    """Warm seconds (medians of 3) of one object's bake at `size` texels (decimation,
    unwrapping, back-projection) and of writing its GLB alone and its
    files without the renders (GLB, OBJ, views, summary: what `output.preview=false` and no
    turntable write), at the paper's sizes whatever the model: the object's coarse mesh refined
    with configs/generate.py's paper settings (64^3 grid, ~20k faces), its colours rendered by
    the paper's K = 4 cameras at 256 px, baked with the paper's texture settings."""
    from configs import generate as generate_config
    from data_pipelines.shape_samples import closest_colors
    from nd3d_jax.geometry.refine import refine_mesh
    from nd3d_jax.pipeline.coarse import mesh_field, rgba
    from nd3d_jax.pipeline.generator import refine_settings, texture_settings
    from nd3d_jax.pipeline.multiview import view_cameras
    from nd3d_jax.pipeline.outputs import write_result
    from nd3d_jax.texture import export_glb
    from nd3d_jax.texture.views import render_colored

    paper = generate_config.get_config("variant=paper")
    coarse = result.coarse
    refined = refine_mesh(coarse, mesh_field(coarse), refine_settings(paper)).mesh
    refined.visual.vertex_colors = rgba(closest_colors(coarse, refined.vertices))
    cameras = view_cameras(paper.cameras, 4, 256)  # the paper model's 2 x 2 grid of 256 px
    views = render_colored(refined, cameras) / 255.0
    settings = dataclasses.replace(texture_settings(paper), size=size)
    gen.bake(refined, views, settings, cameras)  # compiles
    times = []
    for _ in range(3):
        t = time.perf_counter()
        mesh, texture, _ = gen.bake(refined, views, settings, cameras)
        times.append(time.perf_counter() - t)
    bake_s = statistics.median(times)
    baked = dataclasses.replace(result, refined=refined, mesh=mesh, texture=texture,
                                views=views, cameras=cameras)  # fmt: skip
    c = gen_config.copy_and_resolve_references()
    c.output.update(preview=False, turntable_frames=0)
    glb_s, files_s = [], []
    for i in range(3):  # the first call also imports the exporters
        t = time.perf_counter()
        export_glb(mesh, os.path.join(tmp, f"alone{i}.glb"), up="y")
        glb_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        write_result(baked, os.path.join(tmp, f"bake_export{i}"), c)
        files_s.append(time.perf_counter() - t)
    glb_s, files_s = statistics.median(glb_s), statistics.median(files_s)
    log(f"bake {size} px {bake_s:.2f}s, GLB {glb_s:.2f}s, files without renders {files_s:.2f}s "
        f"({len(refined.faces)} refined faces, {len(mesh.faces)} baked)")  # fmt: skip
    return {"texture_size": size, "refined_faces": len(refined.faces), "faces": len(mesh.faces),
            "bake_s": bake_s, "glb_s": glb_s, "files_s": files_s}  # fmt: skip


def overlap(gen, objects, gen_config, tmp: str) -> dict:
    """Objects/s for `objects` (files written, no renders) serially and with host workers (one
    thread prepares the next batch, two bake and write the last), beside 1 / (the device's
    seconds per object), both after a warm-up pass over the same objects. Two device bounds:
    the sampling program's alone, and with the refinement's stage added (its fitting, grid query
    and marching tets run on the device too, and one device runs one program at a time; its
    host part makes this bound a little low)."""
    from nd3d_jax.pipeline.outputs import write_result

    c = gen_config.copy_and_resolve_references()
    c.output.update(preview=False, turntable_frames=0)
    out = {"objects": len(objects), "batch_size": gen.batch_size}
    gen.host_workers = 2
    gen.generate_many(objects)  # warm-up: both timed passes find every shape bucket compiled
    for workers in (0, 2):
        gen.host_workers = workers
        folder = os.path.join(tmp, f"overlap_{workers}")
        t = time.perf_counter()
        results = gen.generate_many(
            objects, progress=lambda name, r, f=folder: None if isinstance(r, Exception)
            else write_result(r, os.path.join(f, name), c))  # fmt: skip
        wall = time.perf_counter() - t
        bad = [r for r in results if isinstance(r, Exception)]
        if bad:
            raise RuntimeError(f"overlap: {bad[0]}")
        out[f"workers_{workers}_objects_per_s"] = len(objects) / wall
        if workers == 0:
            out["device_s_per_object"] = statistics.mean(r.seconds["multiview"] for r in results)
            out["refine_s_per_object"] = statistics.mean(r.seconds["refine"] for r in results)
    gen.host_workers = 0
    out["bound_objects_per_s"] = 1 / out["device_s_per_object"]
    out["bound_with_refine_objects_per_s"] = 1 / (
        out["device_s_per_object"] + out["refine_s_per_object"]
    )
    log(f"{len(objects)} objects: {out['workers_0_objects_per_s']:.2f}/s serial, "
        f"{out['workers_2_objects_per_s']:.2f}/s overlapped; device bound "
        f"{out['bound_objects_per_s']:.2f}/s (sampling), "
        f"{out['bound_with_refine_objects_per_s']:.2f}/s (with refinement)")  # fmt: skip
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--batches", default="1,4")
    p.add_argument("--texture_faces", default="8000", help="extra runs at these max_faces")
    p.add_argument("--devices", type=int, default=1, help="the data axis (0: every device)")
    p.add_argument("--no_outputs", action="store_true", help="skip timing the file writing")
    p.add_argument(
        "--bake_size",
        type=int,
        default=0,
        help="also time one object's bake and GLB/OBJ export at this texture size",
    )
    p.add_argument(
        "--overlap",
        type=int,
        default=0,
        help="also time this many objects serially and with host workers",
    )
    p.add_argument(
        "--compilation_cache",
        default="off",
        help="a persistent compilation cache folder (as the commands' `compilation_cache`): "
        "run twice with one folder for the first object with a warm cache",
    )
    p.add_argument("--out_name", default="generate_gpu.json", help="the JSON's name in $OUT")
    a = p.parse_args(argv)
    from configs import generate as generate_config
    from nd3d_jax import compile_cache
    from nd3d_jax.pipeline import Generator
    from nd3d_jax.pipeline.generator import device_mesh
    from nd3d_jax.pipeline.outputs import write_result

    batches = [int(b) for b in a.batches.split(",")]
    gen_config = generate_config.get_config("variant=tiny" if a.quick else "variant=paper")
    gen_config.prior.image_weights = gen_config.prior.text_weights = ""
    gen_config.batch_size = max(batches)
    cache = compile_cache.setup(a.compilation_cache)
    mesh = device_mesh(a.devices)
    out = {"device": jax.devices()[0].device_kind, "devices": mesh.size, "jax": jax.__version__,
           "config": "tiny" if a.quick else "paper (random weights, bfloat16)",
           "paper_seconds_per_object": 7.0, "compilation_cache": cache}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        objects = write_inputs(tmp, max(batches))
        mv, count = model(a.quick, gen_config, mesh, tmp)
        out["parameters"] = count
        gen = Generator(gen_config, log=log, model=mv)
        out["coarse_extraction_128_s"] = coarse_extraction(32 if a.quick else 128)
        runs = {}
        for b in batches:
            gen.batch_size = b  # one sampling program per batch size, as a user would run
            counter = compile_cache.CompileCounter()
            first = run_batch(gen, objects[:b], f"batch {b} (first: compiles or loads)")
            counter.close()
            c = counter.summary()
            runs[f"batch_{b}"] = run_batch(gen, objects[:b], f"batch {b}")
            runs[f"batch_{b}"].update(first_s_per_object=first["seconds_per_object"],
                                      first_compiled=c["compiled"],
                                      first_cache_hits=c["cache_hits"])  # fmt: skip
            log(f"batch {b} first: {c['compiled']} programs compiled, {c['cache_hits']} loaded "
                f"from the cache ({cache or 'off'})")  # fmt: skip
        for faces in [int(f) for f in a.texture_faces.split(",") if f]:
            gen.texture_settings = dataclasses.replace(gen.texture_settings, max_faces=faces)
            b = max(batches)
            run_batch(gen, objects[:b], f"batch {b}, texture max_faces {faces} (warm-up)")
            runs[f"batch_{b}_faces_{faces}"] = run_batch(
                gen, objects[:b], f"batch {b}, texture max_faces {faces}"
            )
        if a.bake_size:
            out["bake_export"] = bake_export(gen, runs[f"batch_{max(batches)}"]["results"][0],
                                             a.bake_size, gen_config, tmp)  # fmt: skip
        if a.overlap:
            out["overlap"] = overlap(gen, write_inputs(os.path.join(tmp, "many"), a.overlap),
                                     gen_config, tmp)  # fmt: skip
        if not a.no_outputs:
            last = runs[f"batch_{max(batches)}"]["results"][0]
            write_result(last, os.path.join(tmp, "written"), gen_config)  # compiles
            t = time.perf_counter()
            write_result(last, os.path.join(tmp, "written"), gen_config)
            out["write_outputs_s"] = time.perf_counter() - t
            log(f"writing one object's files: {out['write_outputs_s']:.2f}s")
        for r in runs.values():
            del r["results"]
        out["runs"] = runs
    text = json.dumps(out, indent=2)
    print(text)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], a.out_name), "w") as f:
            f.write(text)
    return out


if __name__ == "__main__":
    main()
