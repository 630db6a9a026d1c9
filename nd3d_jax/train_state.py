"""The train state, initialised sharded (the maxdiffusion / big_vision way).

    state = {"step", "params", "opt_state", "ema" (trainable leaves only), "rng", "skipped"}

1. Shapes: `jax.eval_shape` of the stage's `model.init` and of the optimizer's init on the
   boxed tree, so the optimizer moments carry their parameter's logical axis names.
2. Shardings: every leaf from the logical-axis rules (`sharding.tree_shardings`); nothing is
   guessed by shape.
3. Values: the random parameters drawn on the host from the model's own initializers
   (`nd3d_jax.host_init`: nothing compiles, the same values on any mesh; a leaf with another
   initializer comes from a jitted `init` restricted to it), the pretrained subtrees never
   drawn; host arrays go straight into their shardings (`jax.make_array_from_callback`: each
   device receives only its shard); the optimizer state and the EMA from jitted functions with
   explicit output shardings.
"""

from __future__ import annotations

import dataclasses
import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from nd3d_jax import host_init, optim, sharding

LOG = logging.getLogger(__name__)
Path = tuple[str, ...]


@dataclasses.dataclass
class TrainState:
    """The state and what was derived with it."""

    state: dict
    shardings: dict
    tx: optax.GradientTransformation
    mask: dict  # True where a parameter trains
    schedule: optax.Schedule


def _get(tree, path: Path):
    for p in path:
        tree = tree[p]
    return tree


def _without(tree: dict, paths: set[Path], prefix: Path = ()) -> dict:
    """`tree` without the subtrees at `paths`."""
    out = {}
    for k, v in tree.items():
        here = (*prefix, k)
        if here in paths:
            continue
        out[k] = _without(v, paths, here) if isinstance(v, dict) else v
    return out


def _with(tree: dict, path: Path, value) -> dict:
    """`tree` (nested dicts, copied along `path`) with `value` at `path`."""
    if not path:
        return value
    return {**tree, path[0]: _with(tree.get(path[0], {}), path[1:], value)}


def place(tree, shardings):
    """Host (numpy) or device leaves -> arrays with `shardings`; a host array is cut on the
    host, so no device ever holds more than its shard."""

    def one(x, s):
        if isinstance(x, jax.Array):
            return jax.device_put(x, s)
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, s, lambda index: x[index])

    return jax.tree.map(one, tree, shardings)


def _cast_like(host, abstract, path: Path):
    def one(x, a):
        x = np.asarray(x)
        if x.shape != a.shape:
            raise ValueError(f"pretrained {'/'.join(path)}: shape {x.shape} != model {a.shape}")
        return x.astype(a.dtype)

    return jax.tree.map(one, host, abstract)


def abstract_state(stage, config, mesh: Mesh, rules):
    """(abstract state, its shardings, tx, mask, lr schedule), from shapes alone."""
    boxed = stage.abstract_params()
    params = nn.unbox(boxed)
    mask = stage.trainable_mask(params)
    total = config.train.total_steps
    tx = optim.make_optimizer(config.optim, mask, total)
    boxed_opt = jax.eval_shape(tx.init, boxed)
    repl = sharding.replicated(mesh)
    shardings = {
        "step": repl,
        "params": sharding.tree_shardings(boxed, mesh, rules),
        "opt_state": sharding.tree_shardings(boxed_opt, mesh, rules),
        "rng": repl,
        "skipped": repl,
    }
    abstract = {
        "step": jax.ShapeDtypeStruct((), jnp.int32),
        "params": params,
        "opt_state": nn.unbox(boxed_opt),
        "rng": jax.eval_shape(lambda: jax.random.PRNGKey(0)),
        "skipped": jax.ShapeDtypeStruct((), jnp.int32),
    }
    if config.optim.ema_decay > 0:
        abstract["ema"] = optim.trainable(params, mask)
        shardings["ema"] = optim.trainable(shardings["params"], mask)
    schedule = optim.learning_rate(config.optim, optim.updates(config.optim, total))
    return abstract, shardings, tx, mask, schedule


def _nest(leaves: dict[Path, object]) -> dict:
    out: dict = {}
    for path, x in leaves.items():
        node = out
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = x
    return out


def _skipped(path: Path, skip: set[Path]) -> bool:
    return any(path[: len(s)] == s for s in skip)


def random_init(stage, abstract, shardings, skip: set[Path], seed: int) -> dict:
    """Every parameter outside the `skip` subtrees, drawn at random into `shardings`: on the
    host from its initializer (`host_init`), or, for an initializer `host_init` does not read,
    by a jitted `init` whose outputs are only those leaves (XLA partitions the RNG: each device
    computes only its shards)."""
    found = host_init.plan(stage.initializers(), abstract)
    found.specs = {p: s for p, s in found.specs.items() if not _skipped(p, skip)}
    other = [p for p in found.other if not _skipped(p, skip)]
    leaves = host_init.draw_params(seed, found, abstract, shardings)
    if other:
        LOG.info("%d parameters with other initializers: compiling their init", len(other))

        def other_part(k):
            params = nn.unbox(stage.init(k))
            return [_get(params, p) for p in other]

        out = [_get(shardings, p) for p in other]
        values = jax.jit(other_part, out_shardings=out)(jax.random.PRNGKey(seed))
        leaves.update(zip(other, values, strict=True))
    return _nest(leaves)


def init_params(stage, seed: int, shardings, abstract, pretrained: dict[Path, dict]):
    """Random parameters for everything not pretrained, then the pretrained host subtrees
    placed into their shardings."""
    params = random_init(stage, abstract, shardings, set(pretrained), seed)
    for path, host in pretrained.items():
        host = _cast_like(host, _get(abstract, path), path)
        params = _with(params, path, place(host, _get(shardings, path)))
    if ("conditioning", "clip") in pretrained:  # SemanticEncoder layers from CLIP (docs/design.md)
        sem_path = ("conditioning", "semantic_encoder")
        sem = stage.semantic_from_clip(_get(params, sem_path), pretrained[("conditioning", "clip")])
        # the leaves taken from CLIP are host arrays; the others stay the sharded random ones
        sem = jax.tree.map(
            lambda x, a: x if isinstance(x, jax.Array) else np.asarray(x).astype(a.dtype),
            sem,
            _get(abstract, sem_path),
        )
        params = _with(params, sem_path, place(sem, _get(shardings, sem_path)))
    return params


def init_rest(config, tx, mask, shardings):
    """The jitted init of everything but the parameters: step, optimizer state, EMA of the
    trainable leaves, RNG, with explicit output shardings."""

    def rest(p):
        out = {
            "step": jnp.zeros((), jnp.int32),
            "opt_state": tx.init(p),
            "rng": jax.random.PRNGKey(config.seed + 1),
            "skipped": jnp.zeros((), jnp.int32),
        }
        if "ema" in shardings:
            out["ema"] = jax.tree.map(jnp.copy, optim.trainable(p, mask))
        return out

    return jax.jit(rest, out_shardings={k: v for k, v in shardings.items() if k != "params"})


def restore(stage, config, mesh: Mesh, rules, checkpointer, step: int, data_iterator):
    """The state of checkpoint `step` restored straight into this mesh's shardings (no value
    init, no pretrained folders read: nothing is held twice)."""
    from nd3d_jax.checkpoint import abstract_like

    abstract, shardings, tx, mask, schedule = abstract_state(stage, config, mesh, rules)
    state = checkpointer.restore(step, abstract_like(abstract, shardings), data_iterator)
    return TrainState(state, shardings, tx, mask, schedule)


def create(stage, config, mesh: Mesh, rules, log=LOG.info) -> TrainState:
    """The initialised, sharded train state (pretrained folders loaded)."""
    abstract, shardings, tx, mask, schedule = abstract_state(stage, config, mesh, rules)
    pretrained = stage.pretrained()
    for path in pretrained:
        log("pretrained %s", "/".join(path))
    params = init_params(stage, config.seed, shardings["params"], abstract["params"], pretrained)
    for name, (n_train, n_frozen) in stage.parameter_groups(params, mask).items():
        log("params %-34s trainable %12s frozen %12s", name, f"{n_train:,}", f"{n_frozen:,}")
    log(
        "params total %s (trainable %s)",
        f"{optim.count(params):,}",
        f"{optim.count(params, mask):,}",
    )

    state = {"params": params, **init_rest(config, tx, mask, shardings)(params)}
    return TrainState(state, shardings, tx, mask, schedule)
