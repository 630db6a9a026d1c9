"""Sharded initialisation at the paper's sizes (`configs/neurodiff3d.py:variant=random`,
1.2B parameters) on 8 simulated devices with fsdp = 8, from shapes and compiled programs only
(nothing is allocated at that size):

- every sharded parameter's per-device buffer is 1/8 of it, and the state's per-device bytes
  are what the shardings say (no leaf replicated by accident);
- the optimizer moments have exactly their parameter's sharding;
- every random parameter is drawn on the host from its initializer (`host_init`: no program
  compiles for it), and the compiled init of the optimizer state and EMA outputs only shards
  per device and never forms a value of a sharded parameter's whole (global) shape.
"""

from __future__ import annotations

import os
import re

import jax
import numpy as np
import pytest

from nd3d_jax import host_init, sharding, train_state
from nd3d_jax.config_cli import load_config
from nd3d_jax.stages import get_stage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FSDP = 8


def assert_optimizer_follows_params(shardings: dict, mask) -> None:
    """Every Adam moment has exactly its parameter's sharding (matched by tree path)."""
    params = {
        tuple(str(getattr(k, "key", k)) for k in path): s
        for path, s in jax.tree_util.tree_flatten_with_path(shardings["params"])[0]
    }
    moments = 0
    for path, s in jax.tree_util.tree_flatten_with_path(shardings["opt_state"])[0]:
        names = [getattr(k, "name", getattr(k, "key", None)) for k in path]
        if "mu" in names or "nu" in names:
            i = max(i for i, n in enumerate(names) if n in ("mu", "nu"))
            key = tuple(str(n) for n in names[i + 1 :])
            assert s == params[key], key
            moments += 1
    assert moments == 2 * sum(jax.tree.leaves(mask))


def _nbytes(shape, dtype) -> int:
    return int(np.prod(shape)) * np.dtype(dtype).itemsize


def _leaves(abstract, shardings) -> list[tuple[tuple, tuple, np.dtype]]:
    """(global shape, per-device shape, dtype) of every parameter."""
    pairs = zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings), strict=True)
    return [(tuple(a.shape), tuple(s.shard_shape(a.shape)), a.dtype) for a, s in pairs]


def _hlo_shapes(text: str) -> set[tuple[int, ...]]:
    return {
        tuple(int(d) for d in dims.split(",") if d)
        for dims in re.findall(r"(?:f32|bf16|u32|s32|f16)\[([\d,]*)\]", text)
    }


@pytest.fixture(scope="module")
def paper():
    c = load_config(os.path.join(ROOT, "configs/neurodiff3d.py:variant=random"))
    c.mesh.data, c.mesh.fsdp = 1, FSDP
    c.optim.ema_decay = 0.9999
    stage = get_stage(c)
    mesh = sharding.make_mesh(1, FSDP)
    abstract, shardings, tx, mask, _ = train_state.abstract_state(
        stage, c, mesh, sharding.DEFAULT_RULES
    )
    return c, stage, mesh, abstract, shardings, tx, mask


def test_state_is_sharded_by_the_rules(paper):
    _, _, _, abstract, shardings, _, mask = paper
    assert_optimizer_follows_params(shardings, mask)
    leaves = _leaves(abstract["params"], shardings["params"])
    total = sum(_nbytes(g, d) for g, _, d in leaves)
    per_device = sum(_nbytes(local, d) for _, local, d in leaves)
    sharded = [(g, local) for g, local, _ in leaves if local != g]
    for g, local in sharded:  # split 8 ways
        assert int(np.prod(g)) == FSDP * int(np.prod(local)), (g, local)
    assert total > 4.5e9  # 1.2B float32 parameters
    # what stays whole on every device is small (biases, norms, odd widths): < 2% of the model
    assert per_device < total / FSDP + 0.02 * total
    assert len(sharded) > 0.4 * len(leaves)
    # the EMA holds the trainable leaves only, with their parameters' shardings
    assert "clip" not in abstract["ema"]["conditioning"] and "vae" not in abstract["ema"]
    assert len(jax.tree.leaves(shardings["ema"])) == sum(jax.tree.leaves(mask))


def test_init_programs_never_form_a_whole_sharded_parameter(paper):
    c, stage, mesh, abstract, shardings, tx, mask = paper
    leaves = _leaves(abstract["params"], shardings["params"])
    whole = {g for g, local, _ in leaves if local != g}
    allowed = {g for g, local, _ in leaves if local == g} | {local for _, local, _ in leaves}
    forbidden = whole - allowed
    assert len(forbidden) > 50

    # the random parameters: every leaf read as its initializer's distribution, none compiled
    found = host_init.plan(stage.initializers(), abstract["params"])
    assert not found.other and len(found.specs) == len(leaves)

    abstract_params = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract["params"],
        shardings["params"],
    )
    rest = train_state.init_rest(c, tx, mask, shardings).lower(abstract_params).compile()
    assert not _hlo_shapes(rest.as_text()) & forbidden
