"""`python -m nd3d_jax.benchmark generate`: generation on CPU with the tiny model, per stage, and
a batch of 8 objects split over 8 simulated devices beside 1 device.

Each measurement is `benchmarks/gpu_generate.py --quick` in its own process (the simulated
device count is fixed when JAX starts): coarse meshes given, the tiny config's refinement,
sampler and 128-texel bake. Per stage: seconds per object of a warm batch of 1; throughput:
objects/s of a warm batch of 8, the multi-view program's batch on the data axis of 8 devices
vs 1 (the host stages run one object at a time either way). The `unwrap` suite's rows come
first: UV unwrapping by ours beside xatlas on the same meshes (benchmarks/unwrap.py).
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
               notes=f"{over / bound:.2f} x the device bound 1 / {o['device_s_per_object']:.3f} s"),
    ]  # fmt: skip
    return records
