"""Shap-E (P1) on one GPU: our JAX sampling and field query beside diffusers (torch CUDA), the
same random weights, in the same run. Standalone (no `nd3d_jax.benchmark`, no trimesh,
ml_collections or tensorflow); needs jax, flax, orbax, torch, transformers and diffusers.

    PYTHONPATH=. python benchmarks/gpu_prior.py            # published sizes, 64 Heun steps
    PYTHONPATH=. python benchmarks/gpu_prior.py --quick    # tiny presets, 3 steps (CPU is fine)

Published `openai/shap-e-img2img` sizes (prior 24 x 1024, CLIP ViT-L/14 at 224 px, renderer
defaults; ~0.85B parameters) with random weights built by diffusers / transformers directly on
the GPU, saved and loaded by our importer. Measured, warm (medians of --repeats calls):

- sampling, 64 Heun steps (127 evaluations) with guidance 3.0, batch 1 and 4:
  ours in bfloat16 and float32 compute (parameters float32; XLA's default matmul precision,
  TF32 on recent GPUs) with the first call (compile + run) and compile ~ first - warm;
  diffusers' `ShapEImg2ImgPipeline(output_type="latent")` in float32 (torch's default: no TF32)
  and after `pipe.to(torch.float16)` (as diffusers' Shap-E example loads it). Every run starts
  from the same noise and pixels; each result's max |x - diffusers float32| is reported.
- the 128^3 field query of one latent: ours (`ShapE.query`, 65536-point chunks) and diffusers'
  `decode_to_mesh` STF query (float32) with chunks of 4096 (its default) and 65536.

Prints a JSON summary to stdout and writes it to $OUT/prior_gpu.json when $OUT is set.
"""

from __future__ import annotations

import os

# Both frameworks share the GPU: JAX's default preallocation (75%) would starve torch.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.45")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import prior as bench  # noqa: E402

T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[gpu_prior {time.perf_counter() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def sync_torch(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def times(fn, repeats: int, sync) -> tuple[list[float], object]:
    """Wall times of `repeats` calls of `fn` (each synchronised), and the last result."""
    out, ts = None, []
    for _ in range(repeats):
        t = time.perf_counter()
        out = sync(fn())
        ts.append(time.perf_counter() - t)
    return ts, out


def jax_sync(x):
    return jax.block_until_ready(x)


def our_variants(folder: str) -> dict:
    """{"float32": ShapE, "bfloat16": ShapE} sharing one set of float32 parameters: what
    `load_shap_e(folder, dtype)` builds for each compute dtype, loaded once."""
    from nd3d_jax.prior.shap_e import ShapE
    from nd3d_jax.weights.shap_e import load_shap_e as load_weights

    w = load_weights(folder, jnp.float32)
    bf16 = w._replace(
        prior=(w.prior[0].clone(dtype=jnp.bfloat16), w.prior[1]),
        encoder=(w.encoder[0].clone(dtype=jnp.bfloat16), w.encoder[1]),
    )
    return {"bfloat16": ShapE(bf16), "float32": ShapE(w)}


def max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).max())


def torch_sampling(pipe, inputs, batches, steps, guidance, sigma, repeats, device, dtype_name):
    """Times the diffusers pipeline per batch; returns (results, latents per batch)."""

    def sync(x):
        sync_torch(device)
        return x

    images, pixels, noise = inputs
    # warm the kernels (cuBLAS / cuDNN handles, allocator) with a 2-step run
    bench.reference_sampler(pipe, pixels[:1], noise[:1], sigma, 2, guidance)()
    sync_torch(device)
    out, latents = [], {}
    for b in batches:
        run = bench.reference_sampler(pipe, pixels[:b], noise[:b], sigma, steps, guidance)
        ts, result = times(run, repeats, sync)
        latents[b] = result.float().cpu().numpy()
        med = statistics.median(ts)
        entry = dict(impl="diffusers", dtype=dtype_name, batch=b, times_s=ts)
        out.append(entry | dict(median_s=med, s_per_object=med / b))
        log(f"diffusers {dtype_name} batch {b}: {med:.3f} s ({med / b:.3f} s/object)")
    return out, latents


def our_sampling(shap_e, inputs, batches, steps, guidance, repeats, dtype_name, ref_latents):
    images, _, noise = inputs
    out = []
    for b in batches:

        def run(b=b):
            return shap_e.sample_latents(
                image=images[:b], num_steps=steps, guidance=guidance, initial_noise=noise[:b]
            )

        t = time.perf_counter()
        first = jax_sync(run())
        first_s = time.perf_counter() - t
        ts, result = times(run, repeats, jax_sync)
        med = statistics.median(ts)
        entry = dict(
            impl="ours", dtype=dtype_name, batch=b, first_call_s=first_s,
            compile_s=max(first_s - med, 0.0), times_s=ts, median_s=med, s_per_object=med / b,
            max_abs_diff_vs_diffusers_first=max_diff(result, ref_latents[b]),
            max_abs_diff_first_vs_warm=max_diff(first, result),
        )  # fmt: skip
        out.append(entry)
        log(
            f"ours {dtype_name} batch {b}: first {first_s:.1f} s, warm {med:.3f} s "
            f"({med / b:.3f} s/object), max|ours - first diffusers run| "
            f"{entry['max_abs_diff_vs_diffusers_first']:.3g}"
        )
    return out


def field_query(shap_e, pipe, latent, resolution, repeats, device):
    import torch

    points = bench.grid_points(resolution)
    renderer = pipe.shap_e_renderer
    t_latent = torch.from_numpy(latent[None].copy()).to(device)
    t_points = torch.from_numpy(points[None]).to(device)
    j_latent, j_points = jnp.asarray(latent[None]), jax.device_put(points)
    out = dict(resolution=resolution, points=len(points), ours_chunk=shap_e.settings.chunk)

    t = time.perf_counter()
    jax_sync(shap_e.query(j_latent, j_points))
    out["ours_first_call_s"] = time.perf_counter() - t
    ts, _ = times(lambda: shap_e.query(j_latent, j_points), repeats, jax_sync)
    out["ours_times_s"], out["ours_median_s"] = ts, statistics.median(ts)
    out["ours_points_per_s"] = len(points) / out["ours_median_s"]
    log(f"field ours: {out['ours_median_s'] * 1e3:.1f} ms")

    def sync(x):
        sync_torch(device)
        return x

    for chunk in bench.FIELD_CHUNKS:
        run = bench.reference_field(renderer, t_latent, t_points, chunk)
        sync(run())  # warm
        ts, ref_sdf = times(run, repeats, sync)
        med = statistics.median(ts)
        out[f"diffusers_chunk{chunk}_times_s"] = ts
        out[f"diffusers_chunk{chunk}_median_s"] = med
        out[f"diffusers_chunk{chunk}_points_per_s"] = len(points) / med
        out[f"ratio_ours_over_diffusers_chunk{chunk}"] = out["ours_median_s"] / med
        log(f"field diffusers chunk {chunk}: {med * 1e3:.1f} ms")
    diffs = bench.field_diffs(shap_e, renderer, latent, points, ref_sdf)
    out["max_abs_diff_sdf"], out["max_abs_diff_rgb_first_4096"] = diffs["sdf"], diffs["rgb"]
    log(f"field max|ours - diffusers| sdf {diffs['sdf']:.3g} rgb {diffs['rgb']:.3g}")
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny presets (a CPU smoke run)")
    parser.add_argument("--steps", type=int, help="Heun steps (default 64, --quick 3)")
    parser.add_argument("--batches", help="comma-separated batch sizes (default 1,4)")
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--resolution", type=int, help="field grid (default 128, --quick 32)")
    parser.add_argument("--torch_dtypes", default="float32,float16", help="diffusers runs")
    parser.add_argument("--our_dtypes", default="bfloat16,float32", help="our compute dtypes")
    parser.add_argument("--no_field", action="store_true", help="skip the field query")
    args = parser.parse_args(argv)
    torch_dtypes = args.torch_dtypes.split(",")
    steps = args.steps or (3 if args.quick else 64)
    batches = [int(b) for b in (args.batches or "1,4").split(",")]
    resolution = args.resolution or (32 if args.quick else 128)

    import diffusers
    import torch
    import transformers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if not args.quick and (device == "cpu" or jax.default_backend() == "cpu"):
        sys.exit(
            f"gpu_prior: the full sizes need a GPU for both (torch: {device}, jax: "
            f"{jax.default_backend()}); use --quick for a CPU smoke run"
        )
    summary = dict(
        sizes=bench.sizes(args.quick)["tag"], steps=steps, evaluations=2 * steps - 1,
        guidance=args.guidance, batches=batches, repeats=args.repeats,
        jax_device=f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}",
        torch_device=torch.cuda.get_device_name() if device == "cuda" else "cpu",
        versions=dict(jax=jax.__version__, torch=torch.__version__,
                      diffusers=diffusers.__version__, transformers=transformers.__version__),
        jax_default_matmul_precision=str(jax.config.jax_default_matmul_precision),
        torch_allow_tf32=bool(torch.backends.cuda.matmul.allow_tf32),
    )  # fmt: skip
    log(f"building the pipeline on {device}")
    pipe = bench.build_pipeline(args.quick, device)
    summary["parameters"] = bench.num_params(pipe)
    log(f"{summary['parameters']:,} parameters; saving and loading")
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "shap_e")
        t = time.perf_counter()
        pipe.save_pretrained(folder, safe_serialization=True)
        summary["save_s"] = time.perf_counter() - t
        t = time.perf_counter()
        ours = our_variants(folder)
        summary["load_s"] = time.perf_counter() - t
    log(f"saved in {summary['save_s']:.1f} s, loaded in {summary['load_s']:.1f} s")

    inputs = bench.sample_inputs(ours["float32"], max(batches))
    sigma = bench.init_noise_sigma(ours["float32"], steps)
    results, ref = [], None  # diffs against the first diffusers run (float32 by default)
    for i, dtype_name in enumerate(torch_dtypes):
        if dtype_name == "float16":
            pipe.to(torch.float16)
        runs, latents = torch_sampling(
            pipe, inputs, batches, steps, args.guidance, sigma, args.repeats, device, dtype_name
        )
        if ref is None:
            ref = latents
        for entry in runs:
            entry["max_abs_diff_vs_diffusers_first"] = max_diff(
                latents[entry["batch"]], ref[entry["batch"]]
            )
        results += runs
        if i == 0 and not args.no_field:  # decode_to_mesh's query in float32, as ours
            summary["field"] = field_query(
                ours["float32"], pipe, ref[batches[0]][0], resolution, args.repeats, device
            )
    del pipe
    if device == "cuda":
        torch.cuda.empty_cache()

    for name in args.our_dtypes.split(","):
        results += our_sampling(
            ours[name], inputs, batches, steps, args.guidance, args.repeats, name, ref
        )
    summary["sampling"] = results
    by = {(r["impl"], r["dtype"], r["batch"]): r["s_per_object"] for r in results}
    summary["ratios_ours_over_diffusers_s_per_object"] = {
        f"ours_{d}_vs_diffusers_{td}_batch{b}": by[("ours", d, b)] / by[("diffusers", td, b)]
        for d in args.our_dtypes.split(",") for td in torch_dtypes for b in batches
    }  # fmt: skip
    summary["total_s"] = time.perf_counter() - T0
    text = json.dumps(summary, indent=2)
    print(text)
    if os.environ.get("OUT"):
        path = os.path.join(os.environ["OUT"], "prior_gpu.json")
        with open(path, "w") as f:
            f.write(text)
        log(f"wrote {path}")
    return summary


if __name__ == "__main__":
    main()
