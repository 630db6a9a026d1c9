"""Random parameters drawn on the host from the model's own Flax initializers: nothing compiles.

A jitted `model.init` draws every parameter from its own threefry stream, and XLA compiles one
random-number kernel per leaf: the 1,586 leaves of `configs/neurodiff3d.py:random` took 9 min to
compile on 2 CPU cores and 6.8 min on an H100. Here:

1. `record_initializers` (around an abstract `model.init`): each parameter's path and the
   initializer Flax calls for it (`Scope.param(name, init_fn, shape, dtype)`).
2. `spec_of` reads the initializer as a distribution: `jax.nn.initializers`' variance_scaling
   (lecun / glorot / he: truncated normal, normal or uniform, scaled by the fans of the leaf's
   shape), normal, uniform, truncated_normal, constant, zeros and ones, behind Flax's
   `with_logical_partitioning` wrappers.
3. `draw_params` draws each leaf whole with numpy (PCG64 seeded by the seed and a hash of the
   leaf's path) and cuts it into the shards of this process's devices
   (`jax.make_array_from_callback`: no device holds more than its shard). The values depend on
   the seed and the path alone, so the same run on any mesh and process count starts equal.

Each leaf has the distribution its initializer defines (the same family, bounds and scale;
tests/test_host_init.py compares the moments with the initializers' own draws), not its values.
A leaf whose initializer is not one of these is left to the caller (`HostInit.other`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import inspect
import math
import os
from collections.abc import Callable, Iterator

import jax
import numpy as np
from flax.core import scope as flax_scope

Path = tuple[str, ...]
TRUNCATED_STD = 0.87962566103423978  # std of N(0, 1) truncated to (-2, 2), as jax divides by
_inits = jax.nn.initializers
_CODE = {  # the closures jax.nn.initializers returns, told apart by their code
    _inits.variance_scaling(1.0, "fan_in", "normal").__code__: "variance_scaling",
    _inits.normal().__code__: "normal",
    _inits.uniform().__code__: "uniform",
    _inits.truncated_normal().__code__: "truncated_normal",
    _inits.constant(0.0).__code__: "constant",
}


@dataclasses.dataclass(frozen=True)
class Spec:
    """One leaf's distribution: `scale * X + shift`, X ~ N(0, 1) ("normal"), N(0, 1) truncated
    to (low, high) ("truncated_normal"), U[low, high) ("uniform"); or `shift` ("constant")."""

    family: str
    scale: float = 0.0
    shift: float = 0.0
    low: float = -2.0
    high: float = 2.0

    def draw(self, rng: np.random.Generator, shape: tuple[int, ...], dtype) -> np.ndarray:
        if self.family == "constant":
            return np.full(shape, self.shift, dtype)
        n = math.prod(shape)
        if self.family == "uniform":
            x = rng.uniform(self.low, self.high, n).astype(np.float32)
        else:
            x = rng.standard_normal(n, dtype=np.float32)
        if self.family == "truncated_normal":  # rejection: exactly N(0, 1) given (low, high)
            bad = np.flatnonzero((x <= self.low) | (x >= self.high))
            while bad.size:
                x[bad] = rng.standard_normal(bad.size, dtype=np.float32)
                bad = bad[(x[bad] <= self.low) | (x[bad] >= self.high)]
        if self.scale != 1.0:
            x *= np.float32(self.scale)
        if self.shift:
            x += np.float32(self.shift)
        return x.reshape(shape).astype(dtype, copy=False)


def _fans(shape, in_axis, out_axis, batch_axis) -> tuple[float, float]:
    """jax.nn.initializers' fans: the in / out sizes times the receptive field."""

    def size(axes):
        return shape[axes] if isinstance(axes, int) else math.prod(shape[a] for a in axes)

    receptive = math.prod(shape) / size(in_axis) / size(out_axis) / size(batch_axis)
    return size(in_axis) * receptive, size(out_axis) * receptive


def spec_of(init_fn: Callable, shape: tuple[int, ...], dtype) -> Spec | None:
    """The distribution `init_fn(key, shape, dtype)` draws from, or None when `init_fn` is not
    one of jax.nn.initializers' real-valued initializers (behind any functools.wraps wrapper,
    such as Flax's `with_logical_partitioning`)."""
    fn = inspect.unwrap(init_fn)
    if not np.issubdtype(np.dtype(dtype), np.floating):
        return None
    if fn is _inits.zeros:
        return Spec("constant", shift=0.0)
    if fn is _inits.ones:
        return Spec("constant", shift=1.0)
    kind = _CODE.get(getattr(fn, "__code__", None))
    if kind is None:
        return None
    v = inspect.getclosurevars(fn).nonlocals
    if kind == "constant":
        value = np.asarray(v["value"])
        return Spec("constant", shift=float(value)) if value.ndim == 0 else None
    if kind == "normal":
        return Spec("normal", scale=float(v["stddev"]))
    if kind == "uniform":
        return Spec("uniform", scale=1.0, low=0.0, high=float(v["scale"]))
    if kind == "truncated_normal":
        return Spec("truncated_normal", float(v["stddev"]), low=v["lower"], high=v["upper"])
    if len(shape) < 2 and v["in_axis"] == -2:
        return None  # jax raises for this shape
    fan_in, fan_out = _fans(shape, v["in_axis"], v["out_axis"], v["batch_axis"])
    denominator = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2,
                   "fan_geo_avg": (fan_in * fan_out) ** 0.5}.get(v["mode"])  # fmt: skip
    if denominator is None:
        return None
    std = math.sqrt(v["scale"] / denominator)
    if v["distribution"] == "truncated_normal":
        return Spec("truncated_normal", std / TRUNCATED_STD)
    if v["distribution"] == "normal":
        return Spec("normal", std)
    if v["distribution"] == "uniform":
        s = math.sqrt(3.0) * std
        return Spec("uniform", 1.0, low=-s, high=s)
    return None


# ------------------------------------------------------------------------------ recording
@dataclasses.dataclass
class Record:
    path: Path
    init_fn: Callable
    args: tuple
    kwargs: dict


@contextlib.contextmanager
def record_initializers() -> Iterator[list[Record]]:
    """Records every parameter Flax initialises inside the block (in any thread: run only the
    model's abstract init in it, e.g. `jax.eval_shape(model.init, ...)`)."""
    records: list[Record] = []
    original = flax_scope.Scope.param

    def param(self, name, init_fn, *args, unbox=True, **kwargs):
        if not self.has_variable("params", name):
            records.append(Record((*self.path, name), init_fn, args, kwargs))
        return original(self, name, init_fn, *args, unbox=unbox, **kwargs)

    flax_scope.Scope.param = param
    try:
        yield records
    finally:
        flax_scope.Scope.param = original


# ------------------------------------------------------------------------------ drawing
@dataclasses.dataclass
class HostInit:
    """What `plan` found: {path: Spec} for the leaves drawn here, and the paths left to the
    caller (an initializer not read as a distribution, or a leaf not recorded as called)."""

    specs: dict[Path, Spec]
    other: list[Path]


def _leaves(tree) -> dict[Path, object]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {tuple(str(getattr(k, "key", k)) for k in p): x for p, x in flat}


def plan(records: list[Record], abstract_params) -> HostInit:
    """Each leaf of `abstract_params` (unboxed shapes) with its recorded initializer's Spec."""
    by_path = {r.path: r for r in records}
    specs, other = {}, []
    for path, leaf in _leaves(abstract_params).items():
        r = by_path.get(path)
        shape = tuple(r.args[0]) if r is not None and r.args else None
        spec = None
        if shape == tuple(leaf.shape):  # a lifted transform (vmap, scan) would add axes
            spec = spec_of(r.init_fn, shape, leaf.dtype)
        if spec is None:
            other.append(path)
        else:
            specs[path] = spec
    return HostInit(specs, other)


def leaf_rng(seed: int, path: Path) -> np.random.Generator:
    """The leaf's own stream: PCG64 seeded by (seed, a 128-bit hash of its path)."""
    digest = hashlib.blake2b("/".join(path).encode(), digest_size=16).digest()
    return np.random.default_rng(np.random.SeedSequence([seed, int.from_bytes(digest, "little")]))


def draw_leaf(seed: int, path: Path, spec: Spec, abstract, sharding) -> jax.Array:
    """The leaf drawn whole on the host, placed shard by shard."""
    host = spec.draw(leaf_rng(seed, path), tuple(abstract.shape), abstract.dtype)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def draw_params(seed: int, found: HostInit, abstract_params, shardings,
                threads: int | None = None) -> dict[Path, jax.Array]:  # fmt: skip
    """{path: placed array} for every leaf in `found.specs`, drawn by `threads` host threads
    (default: up to 8; numpy draws without the GIL), the largest leaves first."""
    abstract, placed = _leaves(abstract_params), _leaves(shardings)
    order = sorted(found.specs, key=lambda p: -math.prod(abstract[p].shape))
    threads = threads or min(8, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        arrays = pool.map(
            lambda p: draw_leaf(seed, p, found.specs[p], abstract[p], placed[p]), order
        )
        return dict(zip(order, arrays, strict=True))
