"""setup.py's requirements and accelerator extras (resolution needs the CUDA / TPU plugin wheels,
which this machine's package index lacks, so the strings are parsed and bounded here), and the
APIs jax 0.11 removed (its changelog) appear nowhere in our code."""

from __future__ import annotations

import importlib.metadata
import os
import re
import runpy
from unittest import mock

import pytest
import setuptools
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTED_JAX = ("0.10.2", "0.11.2")  # CPU here and in CI; the GPU host


@pytest.fixture(scope="module")
def setup_kwargs():
    """The keyword arguments setup.py gives `setuptools.setup` (nothing is built)."""
    seen = {}
    with mock.patch.object(setuptools, "setup", lambda **kw: seen.update(kw)):
        runpy.run_path(os.path.join(ROOT, "setup.py"))
    return seen


def test_every_requirement_parses_and_the_extras_bound_jax(setup_kwargs):
    base = {Requirement(r).name: Requirement(r) for r in setup_kwargs["install_requires"]}
    extras = {k: [Requirement(r) for r in v] for k, v in setup_kwargs["extras_require"].items()}
    jax = base["jax"]
    for version in TESTED_JAX:
        assert jax.specifier.contains(version)
    assert not jax.specifier.contains("0.12.0") and not jax.specifier.contains("0.10.1")
    for extra in ("cuda12", "cuda13", "tpu"):
        (req,) = extras[extra]
        assert req.name == "jax" and req.extras == {extra}
        assert req.specifier == jax.specifier  # the accelerator build of the same jax range
    # the installed jax is inside the range, and so is every version tested
    assert jax.specifier.contains(importlib.metadata.version("jax"))


@pytest.mark.parametrize("package", ["flax", "optax", "orbax-checkpoint"])
def test_our_jax_libraries_allow_the_tested_jax(setup_kwargs, package):
    pinned = [Requirement(r) for r in setup_kwargs["install_requires"]]
    (ours,) = [r for r in pinned if r.name == package]
    assert ours.specifier.contains(importlib.metadata.version(package))
    needs = [Requirement(r) for r in importlib.metadata.requires(package) or []]
    for req in needs:
        if req.name == "jax" and req.marker is None:
            for version in TESTED_JAX:
                assert req.specifier.contains(Version(version)), (package, str(req))


# jax 0.11.0's changelog: removed modules and names (jax.core's and pxla's internals)
REMOVED_IN_0_11 = re.compile(
    r"jax\.cloud_tpu_init|jax\.interpreters\.pxla|jax\.core\.(CallPrimitive|DebugInfo|DropVar|"
    r"Effects?|check_jaxpr|concrete_or_error|find_top_trace|gensym|is_concrete|new_jaxpr_eqn|"
    r"valid_jaxtype|call|trace_ctx)\b|jnp\.empty(_like)?\("  # empty: now uninitialised
)


def test_no_api_that_jax_0_11_removed():
    hits = []
    for top in ("nd3d_jax", "data_pipelines", "benchmarks", "configs"):
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    for i, line in enumerate(open(path), 1):
                        if REMOVED_IN_0_11.search(line):
                            hits.append(f"{os.path.relpath(path, ROOT)}:{i}: {line.strip()}")
    assert not hits, hits
