"""`python -m nd3d_jax.benchmark generate`: generation on CPU with the tiny model, per stage, and
a batch of 8 objects split over 8 simulated devices beside 1 device.

Each measurement is `benchmarks/gpu_generate.py --quick` in its own process (the simulated
device count is fixed when JAX starts): coarse meshes given, the tiny config's refinement,
sampler and 128-texel bake. Per stage: seconds per object of a warm batch of 1; throughput:
objects/s of a warm batch of 8, the multi-view program's batch on the data axis of 8 devices
vs 1 (the host stages run one object at a time either way). The `unwrap` suite's rows come
first: UV unwrapping by ours beside xatlas on the same meshes (benchmarks/unwrap.py).

Compile once per machine (`compile_records`): `python -m nd3d_jax.generate` on one object, twice,
with a new compilation cache folder (one CPU device): the programs each process compiled and the
seconds in those compiles, and the seconds from the model loaded to the object's result. The
paper model's init (`init_records`, `configs/neurodiff3d.py:random`, 1.2B parameters, in a
process of its own, no compilation cache): the abstract trace that records the initializers,
the host draw of the random parameters (nothing compiled), and the compile of the optimizer
state's and EMA's init, the only XLA program of the init.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from benchmarks import unwrap
from nd3d_jax.benchmark import BenchOptions, Record

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(devices: int, batch: int, *extra: str) -> dict:
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "OUT": out, "PYTHONPATH": ROOT,
               "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}  # fmt: skip
        script = os.path.join(ROOT, "benchmarks", "gpu_generate.py")
        cmd = [sys.executable, script, "--quick", f"--batches={batch}", "--texture_faces=",
               f"--devices={devices}", "--no_outputs", *extra]  # fmt: skip
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        with open(os.path.join(out, "generate_gpu.json")) as f:
            return json.load(f)


def suite(opts: BenchOptions) -> list[Record]:
    return _stage_records(opts) + compile_records() + init_records(opts.quick)


def _stage_records(opts: BenchOptions) -> list[Record]:
    unwrapping = unwrap.suite(opts)  # the rest: each run is one warm batch after a compiling one
    device = "cpu: 8 simulated devices"
    first = _run(1, 1, "--bake_size=1024")
    one = first["runs"]["batch_1"]
    records = unwrapping + [
        Record(f"generate_stage_{stage}", device, "tiny, 1 object", seconds, 1)
        for stage, seconds in one["stages"].items()
    ]
    records.append(Record("generate_object", device, "tiny, 1 object",
                          one["seconds_per_object"], 1, 1 / one["seconds_per_object"],
                          "objects/s"))  # fmt: skip
    per = {}
    for devices in (1, 8):
        run = _run(devices, 8)["runs"]["batch_8"]
        per[devices] = run["seconds_per_object"]
        records.append(Record(f"generate_batch8_devices{devices}", device, "tiny, 8 objects",
                              run["seconds_per_object"], 1, 1 / run["seconds_per_object"],
                              "objects/s"))  # fmt: skip
        records.append(Record(f"generate_batch8_devices{devices}_multiview", device,
                              "tiny, 8 objects", run["stages"]["multiview"], 1))  # fmt: skip
    records[-2].reference, records[-2].reference_median_s = "1 device", per[1]
    records[-2].ratio = per[8] / per[1]
    be = first["bake_export"]
    shape = f"{be['faces']} faces, {be['texture_size']} px"
    records += [Record("generate_bake_1024", device, shape, be["bake_s"], 1),
                Record("generate_export_glb", device, shape, be["glb_s"], 1),
                Record("generate_files_no_renders", device, shape, be["files_s"], 1,
                       notes="mesh.glb, mesh.obj/.mtl/.png, views.png, summary.json")]  # fmt: skip
    n = 8 if opts.quick else 32
    o = _run(8, 8, f"--overlap={n}")["overlap"]
    serial, over = o["workers_0_objects_per_s"], o["workers_2_objects_per_s"]
    bound = o["bound_objects_per_s"]
    records += [
        Record(f"generate_{n}_objects_serial", device, f"tiny, batches of {o['batch_size']}",
               1 / serial, 1, serial, "objects/s"),
        Record(f"generate_{n}_objects_overlapped", device, f"tiny, batches of {o['batch_size']}",
               1 / over, 1, over, "objects/s", "serial", 1 / serial,
               notes=f"{over / bound:.2f} x the device bound 1 / {o['device_s_per_object']:.3f} s "
               f"(sampling), {over * (o['device_s_per_object'] + o['refine_s_per_object']):.2f} "
               f"x 1 / {o['device_s_per_object'] + o['refine_s_per_object']:.3f} s (+ refinement)"),
    ]  # fmt: skip
    return records


# ---------------------------------------------------------------- compile once per machine
def _cpu_env(**extra) -> dict:
    """A fresh process's environment: one CPU device, XLA's default flags, no JAX cache
    settings (the commands' own defaults, or `extra`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "ND3D_"))}
    return {**env, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", "PYTHONPATH": ROOT, **extra}


def tiny_model_workdir(folder: str, seed: int = 0) -> str:
    """A trainer WORKDIR of the tiny demo model (config.json, params_final/ at its random init,
    drawn on the host: nothing compiles), as `python -m nd3d_jax.train
    --config=configs/demo.py:tiny` leaves it."""
    import jax
    import orbax.checkpoint as ocp

    from nd3d_jax import sharding, train_state
    from nd3d_jax.config_cli import config_to_json, load_config
    from nd3d_jax.stages import get_stage

    config = load_config(os.path.join(ROOT, "configs/demo.py:tiny"))
    stage = get_stage(config)
    mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
    abstract, shardings, *_ = train_state.abstract_state(
        stage, config, mesh, sharding.DEFAULT_RULES
    )
    params = train_state.random_init(stage, abstract["params"], shardings["params"], set(), seed)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        f.write(config_to_json(config) + "\n")
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.abspath(os.path.join(folder, "params_final")), params)
    return folder


def compile_records() -> list[Record]:
    """Two `generate` processes, one object each, sharing a new compilation cache folder."""
    from data_pipelines.export_examples import write_synthetic_inputs

    device = "cpu: 1 device"
    with tempfile.TemporaryDirectory() as tmp:
        model = tiny_model_workdir(os.path.join(tmp, "model"))
        (obj,) = write_synthetic_inputs(os.path.join(tmp, "inputs"), ("chair",))
        env = _cpu_env(ND3D_COMPILATION_CACHE=os.path.join(tmp, "xla"))
        reports = []
        for run in ("first", "second"):
            out = os.path.join(tmp, run)
            cmd = [sys.executable, "-m", "nd3d_jax.generate", "--config=configs/generate.py:tiny",
                   f"--params={model}", f"--image={obj['image']}", f"--text={obj['text']}",
                   f"--coarse_mesh={obj['coarse_mesh']}", f"--out={out}",
                   "--config.output.turntable_frames=0"]  # fmt: skip
            subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)  # fmt: skip
            with open(os.path.join(out, "generate_report.json")) as f:
                reports.append(json.load(f))
    records = []
    for run, r in zip(("first", "second"), reports, strict=True):
        c = r["compiles"]
        shape = f"tiny, 1 object: {c['compiled']} compiled, {c['cache_hits']} from the cache"
        records.append(Record(f"generate_{run}_process_compile", device, shape, c["compile_s"],
                              1, c["compiled"], "programs compiled"))  # fmt: skip
        records.append(Record(f"generate_{run}_process_first_object", device, shape,
                              r["seconds"]["first_object"], 1))  # fmt: skip
    for i in (2, 3):  # the second process beside the first
        records[i].reference, records[i].reference_median_s = (
            "first process",
            records[i - 2].median_s,
        )
        records[i].ratio = records[i].median_s / records[i].reference_median_s
    return records


def init_seconds(variant: str) -> dict:
    """The paper model's init on one device, in stages (run in a process of its own)."""
    import time

    import jax

    from nd3d_jax import sharding, train_state
    from nd3d_jax.config_cli import load_config
    from nd3d_jax.stages import get_stage

    jax.config.update("jax_enable_compilation_cache", False)
    config = load_config(os.path.join(ROOT, f"configs/neurodiff3d.py:variant={variant}"))
    config.optim.ema_decay = 0.9999
    stage = get_stage(config)
    mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
    t = time.perf_counter()
    abstract, shardings, tx, mask, _ = train_state.abstract_state(
        stage, config, mesh, sharding.DEFAULT_RULES
    )
    out = {"trace_s": time.perf_counter() - t}
    t = time.perf_counter()
    params = train_state.random_init(stage, abstract["params"], shardings["params"], set(), 0)
    jax.block_until_ready(params)
    out["draw_s"] = time.perf_counter() - t
    out["parameters"] = sum(x.size for x in jax.tree.leaves(params))
    out["leaves"] = len(jax.tree.leaves(params))
    del params
    abstract_params = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract["params"], shardings["params"],
    )  # fmt: skip
    t = time.perf_counter()
    train_state.init_rest(config, tx, mask, shardings).lower(abstract_params).compile()
    out["compile_s"] = time.perf_counter() - t
    return out


def init_records(quick: bool) -> list[Record]:
    variant = "tiny" if quick else "random"
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "generate.py"), "init", variant]
    run = subprocess.run(cmd, check=True, env=_cpu_env(), capture_output=True, text=True)
    r = json.loads(run.stdout.strip().splitlines()[-1])
    device, shape = "cpu: 1 device", f"neurodiff3d.py:{variant}, {r['leaves']} leaves"
    return [
        Record("init_compile", device, shape + ", optimizer state + EMA", r["compile_s"], 1),
        Record(
            "init_random_params_host",
            device,
            shape,
            r["draw_s"],
            1,
            r["parameters"] / r["draw_s"],
            "parameters/s",
        ),  # fmt: skip
        Record("init_trace", device, shape, r["trace_s"], 1),
    ]


if __name__ == "__main__" and sys.argv[1:2] == ["init"]:
    print(json.dumps(init_seconds(sys.argv[2])))
