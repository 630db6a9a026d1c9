"""`python -m nd3d_jax.benchmark diffusion`: the UNet forward and forward+backward, ours beside
diffusers' PyTorch UNet with the same weights, at Stable-Diffusion-1.5 size and the tiny size.

Weights are random (diffusers' init), copied in memory into our tree by the importer's rename.
FLOPs: XLA's `cost_analysis()` of the compiled forward beside `unet_forward_flops` (matmuls and
convolutions only). The backward is d/dparams of mean(out^2), as a training step needs.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from nd3d_jax.benchmark import BenchOptions, Record, device_name, measure
from nd3d_jax.models.unet import UNet, UNetConfig
from nd3d_jax.models.unet_flops import unet_forward_flops

TINY = dict(
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=1,
    attention_head_dim=4,
    cross_attention_dim=64,
    norm_num_groups=8,
)
SD15 = {}  # UNetConfig's defaults are SD 1.5 (cross-attention 768)


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


def _bench(name: str, config: dict, batch: int, size: int, opts: BenchOptions) -> list[Record]:
    import torch

    ours, params, ref = _pair(config)
    c = ours.config
    ctx_len = 77
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, size, size, 4)).astype(np.float32)
    ctx = rng.normal(size=(batch, ctx_len, c.cross_attention_dim)).astype(np.float32)
    t = np.full((batch,), 500)
    jx, jt, jc = jnp.asarray(x), jnp.asarray(t), jnp.asarray(ctx)
    tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    tt, tc = torch.from_numpy(t), torch.from_numpy(ctx)

    forward = jax.jit(lambda p, x, t, c: ours.apply({"params": p}, x, t, c))
    cost = forward.lower(params, jx, jt, jc).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    xla_flops = float(cost.get("flops", 0.0)) if cost else None
    analytic = float(unet_forward_flops(c, batch, size, size, ctx_len))

    def loss(p):
        return jnp.mean(jnp.square(ours.apply({"params": p}, jx, jt, jc)))

    grad = jax.jit(jax.grad(loss))
    m = dict(warmup=opts.warmup, repeats=opts.repeats)
    ours_fwd = measure(lambda: forward(params, jx, jt, jc), **m)
    ours_bwd = measure(lambda: grad(params), **m)
    with torch.inference_mode():
        ref_fwd = measure(lambda: ref(tx, tt, tc).sample, **m)

    def torch_step():
        ref.zero_grad(set_to_none=True)
        out = ref(tx, tt, tc).sample
        out.pow(2).mean().backward()

    ref_bwd = measure(torch_step, **m)
    shape = f"batch {batch}, latent {size}x{size}x4, context {ctx_len}x{c.cross_attention_dim}"
    common = dict(device=device_name(), shape=shape, repeats=opts.repeats)
    return [
        Record(
            name=f"unet_forward_{name}",
            median_s=ours_fwd,
            throughput=analytic / ours_fwd / 1e12,
            throughput_unit="TFLOP/s (analytic)",
            reference="diffusers UNet2DConditionModel (torch CPU)",
            reference_median_s=ref_fwd,
            xla_flops=xla_flops,
            analytic_flops=analytic,
            **common,
        ),
        Record(
            name=f"unet_forward_backward_{name}",
            median_s=ours_bwd,
            throughput=3 * analytic / ours_bwd / 1e12,
            throughput_unit="TFLOP/s (3x forward)",
            reference="diffusers UNet2DConditionModel (torch CPU)",
            reference_median_s=ref_bwd,
            analytic_flops=3 * analytic,
            **common,
        ),
    ]


def suite(opts: BenchOptions) -> list[Record]:
    records = _bench("tiny", TINY, 2, 32, opts)
    if not opts.quick:
        big = dataclasses.replace(opts, repeats=min(opts.repeats, 3))
        records += _bench("sd15", SD15, 1, 64, big)
    return records
