"""Configs, overrides, flags, logging and run files of the config-driven commands (their entry
point, `nd3d_jax.cli.run`, puts these together with the config schema).

    python -m nd3d_jax.X --config=configs/x.py[:key=value,...] [--config.a.b=v ...] --workdir=DIR

Configs are Python files with `get_config(arg=None) -> ConfigDict`, `arg` being the text after
`:` (read with `parse_arg`, big_vision style), or a `config.json` saved in a run's workdir.
Overrides are checked against the loaded config before they are applied, so an unknown key is
one short line naming it (with the keys valid at that level). Every expected mistake
(`nd3d_jax.errors.UserError`, raised here or anywhere in the command's `main`) is one line on
stderr and exit code 2; `--debug` shows the traceback. `-h` lists the flags, `--print_config`
the resolved config. A run writes `config.json` (the resolved config, loadable with
`--config=WORKDIR/config.json`) and `run.json` (command line, versions, devices) into its
workdir, and refuses a workdir whose checkpoints belong to another model (`check_workdir`).
"""

from __future__ import annotations

import argparse
import datetime
import difflib
import importlib.metadata
import importlib.util
import itertools
import json
import logging
import os
import platform
import re
import shlex
import sys
from collections.abc import Sequence
from typing import NoReturn

import ml_collections
from absl import flags
from ml_collections import config_flags

from nd3d_jax import config_check
from nd3d_jax.errors import UserError


class ConfigError(UserError):
    """A bad --config file, argument or override."""


# ------------------------------------------------------------------------ config files
def parse_arg(arg: str | None, **spec) -> ml_collections.ConfigDict:
    """A config file's argument `key=value,key=value` (big_vision style) as a ConfigDict.

    `spec` gives each key's default: a tuple lists the allowed values (the first is the
    default); any other default fixes the type (bool, int, float or str). A bare word such as
    `tiny` means `variant=tiny`. Unknown keys or values raise `ConfigError`.
    """
    out = {k: (v[0] if isinstance(v, tuple) else v) for k, v in spec.items()}
    for item in filter(None, (s.strip() for s in (arg or "").split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            key, value = "variant", item
        key, value = key.strip(), value.strip()
        if key not in spec:
            known = ", ".join(f"{k}=" for k in spec) or "none"
            raise ConfigError(f"unknown config argument {key!r} (known: {known})")
        allowed = spec[key]
        if isinstance(allowed, tuple):
            if value not in allowed:
                raise ConfigError(
                    f"unknown {key} {value!r}; use one of: {', '.join(map(str, allowed))}"
                )
        elif isinstance(allowed, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ConfigError(f"{key}={value!r}: use true or false")
            value = value.lower() in ("true", "1")
        elif isinstance(allowed, int | float):
            try:
                value = type(allowed)(value)
            except ValueError:
                raise ConfigError(f"{key}={value!r}: not a {type(allowed).__name__}") from None
        out[key] = value
    return ml_collections.ConfigDict(out)


def _tuples(x):
    """JSON lists back to tuples (hashable, like the Python configs' sequences)."""
    if isinstance(x, dict):
        return {k: _tuples(v) for k, v in x.items()}
    if isinstance(x, list):
        return tuple(_tuples(v) for v in x)
    return x


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Loads `path.py[:arg]` by calling its `get_config(arg)`, or a saved `config.json`."""
    path, _, arg = spec.partition(":")
    if not os.path.exists(path):
        raise ConfigError(f"config file not found: {path!r}")
    if os.path.isdir(path):
        hint = " (a workdir: use DIR/config.json)" if os.path.isfile(f"{path}/config.json") else ""
        raise ConfigError(f"config {path!r} is a directory{hint}")
    if path.endswith(".json"):
        if arg:
            raise ConfigError(f"{spec}: a JSON config takes no ':' argument")
        try:
            with open(path) as f:
                return ml_collections.ConfigDict(_tuples(json.load(f)))
        except (OSError, ValueError) as e:
            raise ConfigError(f"{path}: cannot read the JSON config ({e})") from e
    name = "_nd3d_config_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None:
        raise ConfigError(f"{path}: not a Python config file (.py) or a config.json")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        raise ConfigError(f"{path}: cannot import config ({type(e).__name__}: {e})") from e
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path}: no get_config(arg) function")
    try:
        return module.get_config(arg or None)
    except ValueError as e:  # UserError and ConfigError included
        raise ConfigError(f"{spec}: {e}") from e


def config_to_json(config: ml_collections.ConfigDict) -> str:
    return json.dumps(config.to_dict(), indent=2)


# ------------------------------------------------------------------------ overrides
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


def _expand(argv: Sequence[str]) -> list[str]:
    return flags.FLAGS.read_flags_from_files(list(argv), force_gnu=False)


def split_argv(argv: Sequence[str], flag: str = "config") -> tuple[str | None, list[str]]:
    """(the config spec, argv without it): `--config=spec` and `--config spec`, `-` or `--`."""
    is_spec = re.compile(rf"^--?{re.escape(flag)}(=|$)")
    spec, rest, skip = None, [argv[0]], False
    for arg, following in itertools.pairwise([*argv[1:], None]):
        if skip:
            skip = False
        elif m := is_spec.match(arg):
            spec = arg[m.end() :] if m.group(1) else following
            skip = not m.group(1)
        else:
            rest.append(arg)
    return spec, rest


def scan_argv(argv: Sequence[str], flag: str = "config") -> tuple[str | None, list[str]]:
    """The config spec and the override keys in `argv`, read as ml_collections reads them.

    Covers `--config=spec` and `--config spec`, `-` or `--`, `--config.a.b=v`, `--config.a.b v`,
    `--noconfig.a.b` (booleans) and `--flagfile=...` expansion.
    """
    spec, rest = split_argv(_expand(argv), flag)
    is_override = re.compile(rf"^--?(no)?{re.escape(flag)}\.")
    keys = [a.partition("=")[0].split(".", 1)[1] for a in rest[1:] if is_override.match(a)]
    return spec, keys


def check_argv(argv: Sequence[str], flag: str = "config") -> None:
    """Validates `--config=...` and every `--config.<key>=...` override in `argv`."""
    spec, overrides = scan_argv(argv, flag)
    if spec is None:
        return
    config = load_config(spec)
    for key in overrides:
        check_override_key(config, key)


# ------------------------------------------------------------------------ validation
def _get(config, dotted: str):
    node = config
    for part in dotted.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return None
        node = node[part]
    return node


def validate_choices(config: ml_collections.ConfigDict, choices: dict) -> None:
    """Enumerated config values (`choices`: dotted key -> allowed values), checked up front."""
    for key, allowed in choices.items():
        value = _get(config, key)
        if value is not None and value not in allowed:
            raise ConfigError(
                f"unknown {key.rpartition('.')[2]} {value!r} (--config.{key}); "
                f"use one of: {', '.join(allowed)}"
            )


def check_command(config: ml_collections.ConfigDict, command: str | None) -> None:
    """A config that names its command (`config.command`) runs only with that command."""
    wanted = config.get("command")
    if command and wanted and isinstance(wanted, str) and wanted != command:
        raise ConfigError(
            f"this config is for `python -m nd3d_jax.{wanted}` (--config.command={wanted!r}), "
            f"not for this command (it takes {command} configs)"
        )


# ------------------------------------------------------------------------ workdir
# Keys that change the model or its parameter shapes: a workdir's checkpoints only fit these.
MODEL_KEYS = ("stage", "model", "schedule", "data.dataset")
# keys under MODEL_KEYS that change neither parameters nor the checkpointed state (and every
# `model.<sub-model>.variant`: the dtype a folder's weights are stored in)
STATE_NEUTRAL = ("model.remat", "model.dtype")
# optimizer settings that change the state's structure, compared as these predicates
STATE_SHAPING = {
    "optim.ema_decay": ("> 0", lambda v: v > 0),
    "optim.clip_norm": ("> 0", lambda v: v > 0),
    "optim.grad_accum_steps": ("> 1", lambda v: v > 1),
}


def _flat(x, prefix: str = "") -> dict:
    if isinstance(x, dict):
        out = {}
        for k, v in x.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: x}


def _plain(config) -> dict:
    """JSON-normal form (tuples as lists) of a ConfigDict or dict."""
    d = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config
    return json.loads(json.dumps(d))


def _has_run(workdir: str) -> bool:
    ckpt = os.path.join(workdir, "checkpoints")
    return (os.path.isdir(ckpt) and bool(os.listdir(ckpt))) or os.path.exists(
        os.path.join(workdir, "params_final")
    )


def check_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
    """A `UserError` when `workdir` holds checkpoints of a run whose saved config.json
    differs from `config` in a key that changes the model (`MODEL_KEYS`)."""
    saved_path = os.path.join(workdir, "config.json")
    if not (os.path.isfile(saved_path) and _has_run(workdir)):
        return
    try:
        with open(saved_path) as f:
            saved = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{saved_path} is unreadable ({e}); use a new --workdir") from e
    new = _plain(config)
    diffs = []
    for key in MODEL_KEYS:
        old_v, new_v = (_flat(_get_dict(d, key), key + ".") for d in (saved, new))
        for k in sorted(set(old_v) | set(new_v)):
            a, b = old_v.get(k, "<absent>"), new_v.get(k, "<absent>")
            if a != b and k not in STATE_NEUTRAL and not k.endswith(".variant"):
                diffs.append(f"{k}: {json.dumps(a)} -> {json.dumps(b)}")
    for key, (what, shapes_state) in STATE_SHAPING.items():
        a, b = _get_dict(saved, key), _get_dict(new, key)
        if a is not None and b is not None and shapes_state(a) != shapes_state(b):
            diffs.append(f"{key}: {json.dumps(a)} -> {json.dumps(b)} ({what} changes the state)")
    if diffs:
        shown = "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")
        raise UserError(
            f"{workdir} holds checkpoints of another model ({shown}); use a new --workdir, "
            f"or resume with the same config (--config={saved_path})"
        )


def _get_dict(d: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def _write(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def save_run_files(config: ml_collections.ConfigDict, workdir: str, argv=None) -> None:
    """Writes `config.json` (the resolved config) and `run.json` (command line, versions,
    devices, time) into `workdir`, on process 0. Initialises the JAX backend: in a multi-process
    run call it after `jax.distributed.initialize()`."""
    import jax

    if jax.process_index() != 0:
        return
    argv, module = list(sys.argv if argv is None else argv), command_module()
    os.makedirs(workdir, exist_ok=True)
    _write(os.path.join(workdir, "config.json"), config_to_json(config) + "\n")
    devices = jax.devices()
    packages = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "ml-collections", "grain")
    info = {
        "command_line": shlex.join([f"python -m {module}" if module else argv[0], *argv[1:]]),
        "argv": argv,
        "cwd": os.getcwd(),
        "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": platform.python_version(),
        "versions": {p: _version(p) for p in packages},
        "devices": {
            "platform": devices[0].platform,
            "kind": devices[0].device_kind,
            "count": len(devices),
            "processes": jax.process_count(),
        },
    }
    _write(os.path.join(workdir, "run.json"), json.dumps(info, indent=2) + "\n")


# ------------------------------------------------------------------------ logging
THIRD_PARTY = ("absl", "jax", "orbax", "grain", "tensorflow", "tensorflow_datasets", "tfds",
               "etils", "fsspec", "PIL", "urllib3", "transformers", "h5py")  # fmt: skip
OURS = ("nd3d_jax", "data_pipelines", "configs", "benchmarks", "__main__")
VERBOSITY = {  # name -> (our level, third-party level)
    "quiet": (logging.INFO, logging.WARNING),
    "info": (logging.INFO, logging.INFO),
    "debug": (logging.DEBUG, logging.DEBUG),
    "warning": (logging.WARNING, logging.WARNING),
    "error": (logging.ERROR, logging.ERROR),
    "fatal": (logging.CRITICAL, logging.CRITICAL),
}
_ABSL_LEVELS = {"-3": "fatal", "-2": "error", "-1": "warning", "0": "info", "1": "debug"}


class _Once(logging.Filter):
    """Drops a warning already shown (same logger, same text)."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.getMessage())
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def verbosity_levels(verbosity: str) -> tuple[int, int]:
    """(our level, third-party level) of a `--verbosity` value."""
    name = _ABSL_LEVELS.get(verbosity.strip(), verbosity.strip().lower())
    if name not in VERBOSITY:
        try:  # absl's finer levels: 2, 3, ... are debug
            name = "debug" if int(name) > 1 else "fatal"
        except ValueError:
            raise UserError(
                f"unknown --verbosity {verbosity!r}; use one of: {', '.join(VERBOSITY)} "
                "(or absl's -3 .. 1)"
            ) from None
    return VERBOSITY[name]


def setup_logging(verbosity: str = "quiet") -> None:
    """One stderr handler: our loggers at INFO, third-party ones at WARNING by default, each
    warning shown once."""
    ours, others = verbosity_levels(verbosity)
    if others >= logging.WARNING:  # before TensorFlow loads (lazily, for tfds and TensorBoard)
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # its C++ INFO lines
        # its oneDNN banner ignores the level; TF only reads records and writes summaries here
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(levelname).1s%(asctime)s %(name)s] %(message)s", "%H:%M:%S")
    )
    handler.addFilter(_Once())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(others)
    for name in THIRD_PARTY:
        logging.getLogger(name).setLevel(others)
    for name in OURS:
        logging.getLogger(name).setLevel(ours)
    logging.captureWarnings(True)
    from absl import logging as absl_logging

    absl_logging.set_verbosity(
        {logging.DEBUG: "debug", logging.INFO: "info"}.get(others, "warning")
    )
    if not flags.FLAGS.is_parsed():  # libraries that read absl flags see their defaults
        flags.FLAGS([sys.argv[0]], known_only=True)


# ------------------------------------------------------------------------ the command
def fail(message: str) -> NoReturn:
    """An expected mistake in a command: one line on stderr, exit code 2."""
    print(f"error: {' '.join(str(message).splitlines())}", file=sys.stderr)
    sys.exit(2)


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the commands without a config: a bad flag is one line on stderr, exit 2
    (argparse's own prints the usage first)."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see {self.prog} --help)")


def command_module() -> str | None:
    """`nd3d_jax.train` when run as `python -m nd3d_jax.train`, else None."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec.name if spec else None


HELP = """\
usage: {prog} --config=FILE.py[:key=value,...] [--config.KEY=VALUE ...]{workdir}

{doc}
flags:
  --config=FILE.py[:key=value,...]
                      the config file and its arguments (a bare word means variant=WORD);
                      or a run's WORKDIR/config.json, which reproduces that run
  --config.KEY=VALUE  override one config key, e.g. --config.train.total_steps=100
{workdir_help}  --print_config      print the resolved config (every key, after overrides) and exit
  --verbosity=LEVEL   quiet (default: our logs at INFO, other libraries' at WARNING), info,
                      debug, warning, error (or absl's -3 .. 1)
  --debug             show the traceback of any error
  -h, --help          this help

List a config's keys and values: {prog} --config=FILE.py --print_config
"""


def usage(doc: str | None, prog: str, needs_workdir: bool) -> str:
    return HELP.format(
        prog=prog,
        doc=(doc or "").strip() + "\n",
        workdir=" --workdir=DIR" if needs_workdir else "",
        workdir_help="  --workdir=DIR       output folder (created if missing)\n"
        if needs_workdir
        else "",
    )


def parse(
    argv: Sequence[str],
    needs_workdir: bool = True,
    extra_flags: dict | None = None,
    schema: dict | None = None,
):
    """(config with overrides applied, parsed flag values) from `argv`; raises ConfigError.
    `extra_flags`: the command's own string flags, {name: help}; `schema` words the error of
    an override that does not parse (what the key allows)."""
    argv = _expand(argv)
    spec, rest = split_argv(argv)
    if spec is None:
        raise ConfigError("--config=FILE.py[:args] is required (see --help)")
    config = load_config(spec)
    _, keys = scan_argv(argv)
    for key in keys:
        check_override_key(config, key)
    fv = flags.FlagValues()
    if keys:  # the override flags (defining them serialises the config: ~0.1 s, so only then)
        config_flags.DEFINE_config_dict(
            "config", config, "the config", flag_values=fv, sys_argv=rest
        )
    flags.DEFINE_string("workdir", None, "output folder", flag_values=fv)
    flags.DEFINE_boolean("print_config", False, "print the config", flag_values=fv)
    flags.DEFINE_string("verbosity", "quiet", "logging", flag_values=fv)
    flags.DEFINE_boolean("debug", False, "tracebacks", flag_values=fv)
    for name, help_ in (extra_flags or {}).items():
        flags.DEFINE_string(name, None, help_, flag_values=fv)
    try:
        extra = fv(rest)
    except flags.Error as e:
        m = re.search(r"--config\.([\w.]+)=(\S*)", str(e))
        spec = config_check.spec_at(schema, m.group(1)) if m else None
        if spec is not None:
            raise ConfigError(
                f"--config.{m.group(1)}={m.group(2).rstrip(':')!r}: does not parse; use "
                f"{spec.allowed()}"
            ) from e
        raise ConfigError(str(e).replace("\n", " ")) from e
    verbosity_levels(fv.verbosity)  # a bad value fails here, before anything runs
    if len(extra) > 1:
        raise ConfigError(f"unexpected arguments: {' '.join(extra[1:])} (see --help)")
    if needs_workdir and not fv.workdir and not fv.print_config:
        raise ConfigError("--workdir=DIR is required (the run's output folder)")
    return (fv.config if keys else config), fv


def distributed_run(config) -> bool:
    return bool(_get(config, "distributed.enabled")) or bool(
        os.environ.get("JAX_COORDINATOR_ADDRESS")
    )


def apply_flag_keys(config: ml_collections.ConfigDict, fv, flag_keys: dict[str, str]) -> dict:
    """Copies each given `--flag` into its config key ({flag: dotted key}); returns {dotted
    key: "--flag"} for the messages."""
    sources = {}
    for name, dotted in flag_keys.items():
        value = fv[name].value
        if value is None or value == "":
            continue
        *parents, leaf = dotted.split(".")
        node = config
        for p in parents:
            node = node[p]
        node[leaf] = value
        sources[dotted] = f"--{name}"
    return sources
