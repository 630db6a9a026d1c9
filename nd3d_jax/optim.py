"""The optimizer from config: AdamW, warm-up + cosine decay, clipping, accumulation, masks, EMA.

    optim.lr, optim.warmup_steps, optim.end_lr_fraction (decay ends at train.total_steps)
    optim.b1, optim.b2, optim.eps, optim.weight_decay, optim.clip_norm
    optim.grad_accum_steps (optax.MultiSteps), optim.ema_decay (0 disables the EMA)

Frozen leaves (False in the trainable mask) get `set_to_zero` and keep no optimizer state.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax


def updates(c: ml_collections.ConfigDict, total_steps: int) -> int:
    """Optimizer updates in `total_steps` micro-steps (gradient accumulation)."""
    return max(1, total_steps // max(1, c.grad_accum_steps))


def learning_rate(c: ml_collections.ConfigDict, total_updates: int) -> optax.Schedule:
    """Linear warm-up to `lr` over `warmup_steps` updates, then cosine decay to
    `lr * end_lr_fraction` at `total_updates` (a function of the update count)."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=c.lr,
        warmup_steps=c.warmup_steps,
        decay_steps=max(total_updates, c.warmup_steps + 1),
        end_value=c.lr * c.end_lr_fraction,
    )


def make_optimizer(
    c: ml_collections.ConfigDict, trainable_mask, total_steps: int
) -> optax.GradientTransformation:
    """AdamW (+ clipping) on the trainable leaves; with `grad_accum_steps` = k > 1 the updates
    are k micro-steps apart, so the schedule runs over `total_steps // k` updates."""
    adamw = optax.adamw(
        learning_rate(c, updates(c, total_steps)),
        b1=c.b1,
        b2=c.b2,
        eps=c.eps,
        weight_decay=c.weight_decay,
    )
    inner = optax.chain(optax.clip_by_global_norm(c.clip_norm), adamw) if c.clip_norm else adamw
    labels = jax.tree.map(lambda m: "train" if m else "freeze", trainable_mask)
    tx = optax.multi_transform({"train": inner, "freeze": optax.set_to_zero()}, labels)
    if c.grad_accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=c.grad_accum_steps)
    return tx


def trainable(tree, mask):
    """The subtree of `tree` where `mask` is True (frozen leaves and empty groups dropped)."""
    if isinstance(mask, dict):
        out = {k: trainable(tree[k], m) for k, m in mask.items()}
        return {
            k: v for k, v in out.items() if v is not None and not (isinstance(v, dict) and not v)
        }
    return tree if mask else None


def merge(tree, sub):
    """`tree` with the leaves of `sub` (a `trainable` subtree) put in."""
    if not isinstance(sub, dict):
        return sub
    return {k: merge(v, sub[k]) if k in sub else v for k, v in tree.items()}


def ema_decay(decay: float, update) -> jax.Array:
    """The EMA's decay after `update` optimizer updates, warmed up as diffusers' EMAModel does,
    min(decay, (1 + n) / (10 + n)), so early averages are not dominated by the init."""
    n = jnp.asarray(update, jnp.float32)
    return jnp.minimum(decay, (1.0 + n) / (10.0 + n))


def ema_update(ema, params, trainable_mask, decay: float, update=None):
    """EMA over the trainable leaves only (`ema` is `trainable(params, mask)`); with `update`
    (the number of updates so far) the decay is warmed up (`ema_decay`)."""
    d = decay if update is None else ema_decay(decay, update)
    return jax.tree.map(
        lambda e, p: (d * e + (1.0 - d) * p).astype(p.dtype),
        ema,
        trainable(params, trainable_mask),
    )


def global_norm(tree) -> jax.Array:
    leaves = [jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)]
    return jnp.sqrt(sum(leaves)) if leaves else jnp.zeros(())


def count(tree, mask=None) -> int:
    """Number of parameters (where `mask` is True, if given)."""
    sizes = jax.tree.map(lambda x: int(x.size), tree)
    if mask is not None:
        sizes = jax.tree.map(lambda s, m: s if m else 0, sizes, mask)
    return int(sum(jax.tree.leaves(sizes)))
