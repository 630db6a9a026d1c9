"""Table 3's columns for our model: parameters, FLOPs and speed of the multi-view diffusion.

The paper does not define its FLOPs and FPS. We report
  FLOPs per step   one guided denoising step of one object: the UNet (with the adapter's
                   features) on the K-view grid twice, unconditional and conditional (XLA's
                   `cost_analysis()` of the compiled step, and the analytic UNet count)
  FLOPs per object the conditions (context: encoders, fusion, adapter), `num_steps` steps and
                   the VAE decode; XLA counts a loop body once, so the three programs are
                   compiled and counted separately and the step multiplied by the step count
  FPS              guided denoising steps per second for one object (batch 1, warm, median):
                   each step produces one K-view grid "frame"
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from nd3d_jax.models.unet_flops import unet_forward_flops
from nd3d_jax.stages.neurodiff3d import render_conditions


def parameter_counts(params, expand: tuple[str, ...] = ("conditioning",)) -> dict[str, int]:
    """{top-level module (one level deeper for those in `expand`): parameter count}, and
    "total"."""
    flat = traverse_util.flatten_dict(jax.tree.map(np.shape, params, is_leaf=_is_array))
    out: dict[str, int] = {}
    for path, shape in flat.items():
        depth = 2 if path[0] in expand and len(path) > 2 else 1
        key = "/".join(str(p) for p in path[:depth])
        out[key] = out.get(key, 0) + int(np.prod(shape))
    out["total"] = sum(out.values())
    return out


def _is_array(x) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype")


def xla_flops(compiled) -> float:
    """FLOPs of a compiled program (`jax.jit(f).lower(*args).compile()`) by XLA's cost
    analysis."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float((cost or {}).get("flops", 0.0))


def median_seconds(fn, *args, repeats: int = 5) -> float:
    """The median wall time of `fn(*args)` (results blocked on), after one warm-up call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return statistics.median(times)


class DiffusionCost:
    """The multi-view diffusion of `pipeline.multiview.MultiView` split into its three programs
    (context, one guided step, decode) at batch 1, for counting and timing."""

    def __init__(self, model, example: dict, guidance: float):
        self.model, self.guidance = model, guidance
        stage, c = model.stage, model.model_config
        self.batch = jax.tree.map(lambda a: jnp.asarray(a)[None], example)
        self.latent_shape = (1, c.latent_size, c.latent_size, c.latent_channels)
        apply = stage.model.apply

        @jax.jit
        def context(params, batch):
            normals, t_hat = render_conditions(batch, c)
            f_fusion, features, _ = apply({"params": params}, batch, normals, t_hat, False,
                                          method="context")  # fmt: skip
            return f_fusion, features

        @jax.jit
        def step(params, x, t, f_fusion, features):
            return stage.guided_denoiser(params, f_fusion, features, guidance)(x, t)

        @jax.jit
        def decode(params, x):
            return apply({"params": params}, x, method="decode")

        self.params = model.params
        self.context = context.lower(self.params, self.batch).compile()
        self.f_fusion, self.features = self.context(self.params, self.batch)
        self.x = jnp.zeros(self.latent_shape, jnp.float32)
        self.t = jnp.full((1,), 500, jnp.int32)
        self.step_args = (self.params, self.x, self.t, self.f_fusion, self.features)
        self.step = step.lower(*self.step_args).compile()
        self.decode = decode.lower(self.params, self.x).compile()

    def flops(self, num_steps: int) -> dict[str, float]:
        """XLA and analytic FLOPs per step and per object."""
        c = self.model.model_config
        ctx, step, dec = xla_flops(self.context), xla_flops(self.step), xla_flops(self.decode)
        unet = unet_forward_flops(c.unet, 2, c.latent_size, c.latent_size, c.text_length)
        return {
            "xla_step": step, "analytic_step_unet": float(unet),
            "xla_context": ctx, "xla_decode": dec,
            "xla_object": ctx + num_steps * step + dec,
            "analytic_object_unet": float(num_steps * unet),
        }  # fmt: skip

    def steps_per_second(self, repeats: int = 5) -> float:
        return 1.0 / median_seconds(self.step, *self.step_args, repeats=repeats)
