"""A tiny UNet + T2I-Adapter memorises a handful of synthetic latent grids (eq 3 loss)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from configs import presets
from nd3d_jax import diffusion as d
from nd3d_jax.models.t2i_adapter import T2IAdapter, T2IAdapterConfig
from nd3d_jax.models.unet import UNet, UNetConfig


def _grids(n=4, size=8):
    """Smooth per-object latent grids (2x2 tiles of a shared pattern) and their conditions."""
    yy, xx = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    latents, conds = [], []
    for k in range(n):
        base = np.stack(
            [np.sin(3 * xx + k), np.cos(2 * yy - k), xx * yy * k / 2, 0.3 * (xx + k)], -1
        )
        latents.append(base)
        up = np.kron(base[..., :3], np.ones((8, 8, 1)))  # condition maps at 8x the latent size
        conds.append(np.concatenate([up, -up], -1))
    return jnp.asarray(np.stack(latents), jnp.float32), jnp.asarray(np.stack(conds), jnp.float32)


def test_tiny_unet_with_adapter_overfits():
    unet = UNet(UNetConfig(**presets.derive(presets.TINY_UNET, cross_attention_dim=8)))
    adapter = T2IAdapter(
        T2IAdapterConfig(**presets.derive(presets.TINY_ADAPTER, downscale_factor=8))
    )
    x0, cond = _grids()
    ctx = jax.random.normal(jax.random.PRNGKey(1), (4, 5, 8))
    schedule = d.make_schedule(d.ScheduleConfig(num_train_timesteps=100))
    noise = jax.random.normal(jax.random.PRNGKey(2), x0.shape)
    t = jnp.array([5, 30, 60, 95])
    x_t = d.q_sample(schedule, x0, noise, t)

    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    params = jax.jit(
        lambda k1, k2: {
            "adapter": nn.unbox(adapter.init(k1, cond))["params"],
            "unet": nn.unbox(unet.init(k2, x_t, t, ctx))["params"],
        }
    )(k1, k2)  # one compiled init (op by op, the init alone took seconds)

    def loss_fn(p):
        feats = adapter.apply({"params": p["adapter"]}, cond)
        eps = unet.apply({"params": p["unet"]}, x_t, t, ctx, feats)
        return d.diffusion_loss(eps, d.training_target(schedule, x0, noise, t))

    tx = optax.adamw(2e-3, weight_decay=0.0)
    opt = tx.init(params)

    @jax.jit
    def step(p, o):
        loss, g = jax.value_and_grad(loss_fn)(p)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o, loss

    first = float(jax.jit(loss_fn)(params))
    losses = []
    for _ in range(300):
        params, opt, loss = step(params, opt)
        losses.append(float(loss))
    assert np.isfinite(losses).all()
    assert min(losses[-10:]) < first / 10, (first, losses[::30])
