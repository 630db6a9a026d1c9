"""Parts 1 and 2 of `benchmarks/gpu.sh` (standalone: no tensorflow, no `nd3d_jax.benchmark` CLI).

    PYTHONPATH=. python benchmarks/gpu_train.py train [--quick] [--batch=8] [--repeats=5]
    PYTHONPATH=. python benchmarks/gpu_train.py unet [--quick] [--batch=2] [--repeats=5]

train: the neurodiff3d train step at `configs/neurodiff3d.py:variant=random` (SD-1.5 UNet and
VAE, CLIP B/32, ResNet-18, adapter; random weights; bfloat16 compute, remat) on
`benchmarks.train.synthetic_batch`; step time, examples/s and MFU (analytic
`stage.train_flops_per_example()` over `train.PEAK_FLOPS`). --quick: `variant=tiny`.
unet: the SD-1.5 UNet forward (latent 64, context 77x768), ours (float32 and bfloat16 compute)
beside diffusers' `UNet2DConditionModel` (float32 and float16) with the same random weights on
the same device (CUDA when torch sees it). --quick: `presets.TINY_UNET` at latent 32.
Prints JSON; writes $OUT/train_gpu.json or $OUT/unet_gpu.json when $OUT is set.
"""

from __future__ import annotations

import os
import sys

if os.environ.get("GEN_SITE"):
    sys.path.append(os.environ["GEN_SITE"])
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from nd3d_jax.benchmark import device_name, measure  # noqa: E402


def train(quick: bool, batch: int | None, repeats: int) -> dict:
    from benchmarks.train import synthetic_batch
    from nd3d_jax import sharding, train_state
    from nd3d_jax import train as train_lib
    from nd3d_jax.config_cli import load_config
    from nd3d_jax.stages import get_stage

    spec = "configs/neurodiff3d.py:variant=" + ("tiny" if quick else "random")
    config = load_config(os.path.join(ROOT, spec))
    config.data.batch_size = batch or config.data.batch_size
    b = config.data.batch_size
    stage = get_stage(config)
    mesh = sharding.make_mesh(-1, 1)
    with jax.set_mesh(mesh):
        t = time.perf_counter()
        ts = train_state.create(stage, config, mesh, sharding.DEFAULT_RULES, log=lambda *a: None)
        init_s = time.perf_counter() - t
        host = synthetic_batch(config, b)
        step_fn = train_lib.make_train_step(stage, ts.tx, ts.mask, config.optim, ts.schedule)
        t = time.perf_counter()
        compiled = train_lib.compile_step(
            step_fn, ts.state, ts.shardings, host, mesh, b, log=lambda *a: None
        )
        compile_s = time.perf_counter() - t
        batch_arrays = sharding.global_batch(host, mesh)
        holder = {"state": ts.state}

        def step():
            holder["state"], metrics = compiled(holder["state"], batch_arrays)
            return metrics["loss"]

        median = measure(step, warmup=1, repeats=repeats)
        loss = float(step())
    flops = stage.train_flops_per_example() * b
    peak = train_lib.peak_flops(jax.devices()[0])
    mem = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
    return dict(
        config=spec, device=device_name(), dtype=str(config.model.dtype), batch=b,
        init_s=init_s, compile_s=compile_s, step_s=median, repeats=repeats,
        examples_per_s=b / median, flops_per_step=flops,
        mfu=flops / median / (peak * jax.device_count()) if peak else None,
        peak_flops=peak, peak_bytes=mem, loss=loss,
    )  # fmt: skip


def unet(quick: bool, batch: int, repeats: int) -> dict:
    import torch

    from benchmarks.diffusion import _inputs, _pair
    from configs import presets
    from nd3d_jax.models.unet import UNet
    from nd3d_jax.models.unet_flops import unet_forward_flops

    preset, size = (presets.TINY_UNET, 32) if quick else (presets.SD15_UNET, 64)
    ours, params, ref = _pair(preset)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    ref = ref.to(dev)
    fwd_in, ref_in = _inputs(ours.config, batch, size)
    ref_in = [x.to(dev) for x in ref_in]
    flops = float(unet_forward_flops(ours.config, batch, size, size, 77))
    out = dict(device=device_name(), torch_device=dev, batch=batch, latent=size, flops=flops)

    def sync(x):
        if dev == "cuda":
            torch.cuda.synchronize()
        return None

    with torch.inference_mode():
        for name, dtype in (("float32", torch.float32), ("float16", torch.float16)):
            if dtype == torch.float16 and dev == "cpu":
                continue  # half convolutions on CPU: slow or missing, not a fair figure
            ref = ref if dtype == torch.float32 else ref.to(dtype)
            args = [x.to(dtype) if x.is_floating_point() else x for x in ref_in]
            out[f"diffusers_{name}_s"] = measure(
                lambda a=args, m=ref: sync(m(*a).sample), warmup=1, repeats=repeats
            )
    del ref
    if dev == "cuda":
        torch.cuda.empty_cache()
    for name, dtype in (("float32", jnp.float32), ("bfloat16", jnp.bfloat16)):
        model = UNet(ours.config, dtype=dtype)
        fwd = jax.jit(lambda p, x, t, c, m=model: m.apply({"params": p}, x, t, c))
        out[f"ours_{name}_s"] = measure(lambda f=fwd: f(params, *fwd_in), warmup=1, repeats=repeats)
    for k in [k for k in out if k.endswith("_s")]:
        out[k[:-2] + "_tflops"] = flops / out[k] / 1e12
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("part", choices=("train", "unet"))
    p.add_argument("--quick", action="store_true", help="tiny sizes (CPU is fine)")
    p.add_argument("--batch", type=int, help="train: config's (8); unet: 2")
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args(argv)
    if a.part == "train":
        result = train(a.quick, a.batch, 2 if a.quick else a.repeats)
    else:
        result = unet(a.quick, a.batch or 2, 2 if a.quick else a.repeats)
    print(json.dumps(result, indent=1))
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], f"{a.part}_gpu.json"), "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
