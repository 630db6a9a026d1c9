"""`python -m nd3d_jax.benchmark diffusion`: the UNet forward and forward+backward, ours beside
diffusers' PyTorch UNet with the same weights, at Stable-Diffusion-1.5 size and the tiny size.

Weights are random (diffusers' init), copied in memory into our tree by the importer's rename.
FLOPs: XLA's `cost_analysis()` of the compiled forward beside `unet_forward_flops` (matmuls and
convolutions only). The backward is d/dparams of mean(out^2), as a training step needs.
"""

from __future__ import annotations

import dataclasses
import gc
import sys

import jax
import jax.numpy as jnp
import numpy as np

from configs import presets
from nd3d_jax.benchmark import BenchOptions, Record, device_name, measure
from nd3d_jax.models.unet import UNet, UNetConfig
from nd3d_jax.models.unet_flops import unet_forward_flops


def _pair(config: dict):
    """(our module, params, diffusers model) with identical random weights."""
    import torch
    from diffusers import UNet2DConditionModel

    from nd3d_jax.weights.diffusers import diffusers_rename
    from nd3d_jax.weights.io import build_tree, expected_shapes

    torch.manual_seed(0)
    ref = UNet2DConditionModel(**config).eval()
    ours = UNet(UNetConfig(**config))
    c = ours.config
    f = 2 ** (len(c.block_out_channels) - 1)
    dummy = (
        jnp.zeros((1, f, f, 4)),
        jnp.zeros((1,), jnp.int32),
        jnp.zeros((1, 1, c.cross_attention_dim)),
    )
    state = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    params = build_tree(state, diffusers_rename, expected_shapes(ours, *dummy), source="diffusers")
    return ours, jax.tree.map(jnp.asarray, params), ref


def _inputs(c: UNetConfig, batch: int, size: int, ctx_len: int = 77):
    import torch

    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, size, size, 4)).astype(np.float32)
    ctx = rng.normal(size=(batch, ctx_len, c.cross_attention_dim)).astype(np.float32)
    t = np.full((batch,), 500)
    ours = (jnp.asarray(x), jnp.asarray(t), jnp.asarray(ctx))
    ref = (
        torch.from_numpy(x.transpose(0, 3, 1, 2).copy()),
        torch.from_numpy(t),
        torch.from_numpy(ctx),
    )
    return ours, ref


def _torch_times(ref, fwd_args, bwd_args, m) -> tuple[float, float]:
    """Median forward and forward+backward (d mean(out^2) / d params) times, diffusers."""
    import torch

    with torch.inference_mode():
        fwd = measure(lambda: ref(*fwd_args).sample, **m)

    def step():
        ref.zero_grad(set_to_none=True)
        ref(*bwd_args).sample.pow(2).mean().backward()

    bwd = measure(step, **m)
    ref.zero_grad(set_to_none=True)
    return fwd, bwd


def _log(msg: str) -> None:
    print(f"[benchmark] diffusion: {msg}", file=sys.stderr, flush=True)


def _bench(name, config, batch, size, backward_size, opts) -> list[Record]:
    """Forward at `size`, forward+backward at `backward_size` (latent pixels per side)."""
    ours, params, ref = _pair(config)
    c = ours.config
    fwd_in, fwd_ref_in = _inputs(c, batch, size)
    bwd_in, bwd_ref_in = _inputs(c, batch, backward_size)
    m = dict(warmup=opts.warmup, repeats=opts.repeats)
    # PyTorch first, then free it: at SD size both frameworks' activations do not fit in 24 GB.
    _log(f"{name}: torch")
    ref_fwd, ref_bwd = _torch_times(ref, fwd_ref_in, bwd_ref_in, m)
    del ref
    gc.collect()

    _log(f"{name}: jax forward")
    forward = jax.jit(lambda p, x, t, c: ours.apply({"params": p}, x, t, c))
    cost = forward.lower(params, *fwd_in).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    xla_flops = float(cost.get("flops", 0.0)) if cost else None
    analytic = float(unet_forward_flops(c, batch, size, size, 77))
    ours_fwd = measure(lambda: forward(params, *fwd_in), **m)

    _log(f"{name}: jax forward+backward")

    def loss(p):
        return jnp.mean(jnp.square(ours.apply({"params": p}, *bwd_in)))

    grad = jax.jit(jax.grad(loss))
    ours_bwd = measure(lambda: grad(params), **m)
    analytic_bwd = 3.0 * unet_forward_flops(c, batch, backward_size, backward_size, 77)
    ctx = f"context 77x{c.cross_attention_dim}"
    ref_name = "diffusers UNet2DConditionModel (torch CPU)"
    return [
        Record(
            name=f"unet_forward_{name}",
            device=device_name(),
            shape=f"batch {batch}, latent {size}x{size}x4, {ctx}",
            median_s=ours_fwd,
            repeats=opts.repeats,
            throughput=analytic / ours_fwd / 1e12,
            throughput_unit="TFLOP/s (analytic)",
            reference=ref_name,
            reference_median_s=ref_fwd,
            xla_flops=xla_flops,
            analytic_flops=analytic,
        ),
        Record(
            name=f"unet_forward_backward_{name}",
            device=device_name(),
            shape=f"batch {batch}, latent {backward_size}x{backward_size}x4, {ctx}",
            median_s=ours_bwd,
            repeats=opts.repeats,
            throughput=analytic_bwd / ours_bwd / 1e12,
            throughput_unit="TFLOP/s (3x forward)",
            reference=ref_name,
            reference_median_s=ref_bwd,
            analytic_flops=analytic_bwd,
        ),
    ]


def suite(opts: BenchOptions) -> list[Record]:
    records = _bench("tiny", presets.TINY_UNET, 2, 32, 32, opts)
    if not opts.quick:
        # SD 1.5 at 512 px (latent 64) forward; forward+backward at latent 32: at 64 the
        # activations of both frameworks together exceed this machine's 24 GB.
        big = dataclasses.replace(opts, repeats=min(opts.repeats, 3))
        records += _bench("sd15", presets.SD15_UNET, 1, 64, 32, big)
    return records
