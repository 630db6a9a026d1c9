"""The shared entry point of every `python -m nd3d_jax.X` command.

    python -m nd3d_jax.X --config=configs/x.py[:variant] [--config.a.b=value ...] --workdir=DIR

Configs are Python files with `get_config(arg=None) -> ConfigDict` (ml_collections
`config_flags`). Overrides are checked against the loaded config before absl applies them, so an
unknown key is one short line naming it (with the keys valid at that level), not a traceback.
"""

from __future__ import annotations

import difflib
import importlib.util
import itertools
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence

import ml_collections
from absl import app, flags
from ml_collections import config_flags


class ConfigError(ValueError):
    """A bad --config file, variant or override."""


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Loads `path.py[:arg]` by calling its `get_config(arg)`."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path!r}")
    module_spec = importlib.util.spec_from_file_location("_nd3d_config", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        raise ConfigError(f"{path}: cannot import config ({type(e).__name__}: {e})") from e
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path}: no get_config(arg) function")
    try:
        return module.get_config(arg or None)
    except ValueError as e:
        raise ConfigError(f"{spec}: {e}") from e


def check_override_key(config: ml_collections.ConfigDict, dotted: str) -> None:
    """Raises ConfigError if `dotted` ('a.b.c') is not a key path of `config`."""
    node, walked = config, []
    for part in dotted.split("."):
        if not isinstance(node, ml_collections.ConfigDict):
            kind = type(node).__name__
            raise ConfigError(f"unknown config key {dotted!r}: {'.'.join(walked)!r} is a {kind}")
        keys = list(node.keys())
        if part not in keys:
            where = ".".join(walked) or "the top level"
            close = difflib.get_close_matches(part, keys, n=1)
            hint = f" (did you mean {'.'.join([*walked, close[0]])!r}?)" if close else ""
            raise ConfigError(
                f"unknown config key {dotted!r}{hint}; keys at {where}: {', '.join(sorted(keys))}"
            )
        node, walked = node[part], [*walked, part]


def scan_argv(argv: Sequence[str], flag: str = "config") -> tuple[str | None, list[str]]:
    """The config spec and the override keys in `argv`, read as ml_collections reads them.

    Covers `--config=spec` and `--config spec`, `-` or `--`, `--config.a.b=v`, `--config.a.b v`,
    `--noconfig.a.b` (booleans) and `--flagfile=...` expansion.
    """
    argv = flags.FLAGS.read_flags_from_files(list(argv), force_gnu=False)
    is_spec = re.compile(rf"^--?{re.escape(flag)}(=|$)")
    is_override = re.compile(rf"^--?(no)?{re.escape(flag)}\.")
    spec, overrides = None, []
    for arg, following in itertools.pairwise([*argv[1:], None]):
        if m := is_spec.match(arg):
            spec = arg[m.end() :] if m.group(1) else following
        elif is_override.match(arg):
            overrides.append(arg.partition("=")[0].split(".", 1)[1])
    return spec, overrides


def check_argv(argv: Sequence[str], flag: str = "config") -> None:
    """Validates `--config=...` and every `--config.<key>=...` override in `argv`."""
    spec, overrides = scan_argv(argv, flag)
    if spec is None:
        return  # absl reports the missing required flag
    config = load_config(spec)
    for key in overrides:
        check_override_key(config, key)


_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file: path.py[:variant]; override fields with --config.a.b=value."
)
flags.DEFINE_string("workdir", None, "Output folder (created if missing).")
flags.mark_flags_as_required(["config", "workdir"])


def _parse(argv: list[str]) -> list[str]:
    try:
        check_argv(argv)
        return flags.FLAGS(argv)
    except (ConfigError, flags.Error) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def run(main: Callable[[ml_collections.ConfigDict, str], None]) -> None:
    """Parses the flags and calls `main(config, workdir)` with the config locked."""

    def _main(argv: list[str]) -> None:
        # JAX logs a failed TPU probe at INFO on every start; absl shows INFO by default.
        logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
        config = _CONFIG.value
        config.lock()
        main(config, flags.FLAGS.workdir)

    app.run(_main, flags_parser=_parse)
