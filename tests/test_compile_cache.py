"""Where the commands' persistent compilation cache goes (`nd3d_jax.compile_cache.resolve`):
the environment, then the config key, then JAX's own variable (the tests'), then the XDG
default. (A second process compiling nothing: tests/test_generate.py.)"""

from __future__ import annotations

import os

import jax
import pytest

from nd3d_jax import compile_cache
from nd3d_jax.errors import UserError


def test_the_folder_by_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv(compile_cache.ENV, raising=False)
    tests_dir = jax.config.jax_compilation_cache_dir  # tests/conftest.py's
    assert tests_dir and compile_cache.resolve("") == (tests_dir, False)
    assert compile_cache.resolve(str(tmp_path / "c")) == (str(tmp_path / "c"), True)
    assert compile_cache.resolve("off") == (None, False)
    monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "e"))  # the environment wins
    assert compile_cache.resolve(str(tmp_path / "c")) == (str(tmp_path / "e"), True)
    monkeypatch.setenv(compile_cache.ENV, "OFF")
    assert compile_cache.resolve(str(tmp_path / "c")) == (None, False)
    monkeypatch.delenv(compile_cache.ENV)
    jax.config.update("jax_compilation_cache_dir", None)  # as without JAX's variable
    try:
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        assert compile_cache.resolve("") == (str(tmp_path / "xdg" / "nd3d_jax" / "xla"), True)
        monkeypatch.delenv("XDG_CACHE_HOME")
        home = os.path.join(os.path.expanduser("~"), ".cache", "nd3d_jax", "xla")
        assert compile_cache.resolve("") == (home, True)
    finally:
        jax.config.update("jax_compilation_cache_dir", tests_dir)


def test_a_folder_that_cannot_be_made_is_one_line(monkeypatch, tmp_path):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "file" / "xla"))
    with pytest.raises(UserError, match=r"compilation cache .*file/xla: .*ND3D_COMPILATION_CACHE"):
        compile_cache.setup()
