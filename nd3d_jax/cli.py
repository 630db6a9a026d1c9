"""`run`: the entry point of every config-driven `python -m nd3d_jax.X` command, on top of
`config_cli` (config files, overrides, flags, logging, workdir files) and `config_schema` (the
values each command accepts).

    python -m nd3d_jax.X --config=configs/x.py[:key=value,...] [--config.a.b=v ...] --workdir=DIR

Every expected mistake (`nd3d_jax.errors.UserError`, raised here or anywhere in the command's
`main`) is one line on stderr and exit code 2; `--debug` shows the traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

import ml_collections

from nd3d_jax import config_check, config_cli
from nd3d_jax.config_schema import schema_for
from nd3d_jax.errors import UserError


def run(
    main: Callable[[ml_collections.ConfigDict, str | None], object],
    *,
    command: str | None = None,
    needs_workdir: bool = True,
    choices: Callable[[], dict[str, Sequence[str]]] | None = None,
    argv: Sequence[str] | None = None,
    extra_flags: dict[str, str] | None = None,
    flag_keys: dict[str, str] | None = None,
    flag_specs: dict[str, config_check.Spec] | None = None,
    path_kinds: Sequence[str] | None = None,
) -> None:
    """Parses the command line and calls `main(config, workdir)` with the config locked.

    `command` (default: the module run with `python -m`, e.g. `train`) must match the config's
    `command` key when it has one, and names its schema (`nd3d_jax.config_schema`). Before
    `main`, in this order: `flag_keys` ({flag: dotted config key}) copy the command's flags into
    the config; every value is checked against the schema (types, ranges, choices; and
    `choices()`, the command's own {dotted key: allowed values}); `--print_config` prints and
    returns; the workdir must be a writable folder (or creatable) whose checkpoints, if any, fit
    the config (`check_workdir`); the schema's paths and the command's `flag_specs` ({flag:
    Spec}) are checked; logging is set up; with a workdir `save_run_files` writes config.json
    and run.json (in a multi-process run, after `main`, once JAX is initialised). So no data,
    weight or compile step starts on a bad value. A `UserError` anywhere is one line on stderr
    and exit code 2 (`--debug`: the traceback). `extra_flags` ({name: help}) are the command's
    own string flags: `main` then gets a third argument, {name: value or None}. `path_kinds`:
    only the schema's paths of these kinds are checked (a command that reads no data; default
    all). The persistent compilation cache is turned on just before `main`
    (`compile_cache.setup`: the config's `compilation_cache` key, `ND3D_COMPILATION_CACHE`).
    """
    argv = list(sys.argv if argv is None else argv)
    module = config_cli.command_module()
    prog = f"python -m {module}" if module else os.path.basename(argv[0])
    if command is None and module:
        command = module.rpartition(".")[2]
    if any(a in ("-h", "--help", "-help", "--helpfull", "--helpshort") for a in argv[1:]):
        doc = getattr(sys.modules.get("__main__"), "__doc__", None) or getattr(main, "__doc__", "")
        print(config_cli.usage(doc, prog, needs_workdir))
        sys.exit(0)
    debug = "--debug" in argv[1:]
    try:
        schema = schema_for(command)
        config, fv = config_cli.parse(argv, needs_workdir, extra_flags, schema)
        sources = config_cli.apply_flag_keys(config, fv, flag_keys or {})
        config_cli.check_command(config, command)
        if schema is not None:
            config_check.check(config, schema, paths=False, sources=sources)
        if choices is not None:
            config_cli.validate_choices(config, choices())
        if fv.print_config:
            print(config_cli.config_to_json(config))
            return
        workdir = fv.workdir
        if workdir and needs_workdir:
            if (why := config_check.PATHS["out"](workdir, {})) is not None:
                raise UserError(f"--workdir={workdir}: {why}; give a folder (created if missing)")
            config_cli.check_workdir(config, workdir)
        if schema is not None:
            paths = True if path_kinds is None else path_kinds
            config_check.check(config, schema, values=False, paths=paths, sources=sources)
        if flag_specs:
            config_check.check_flags(flag_specs, {n: fv[n].value for n in extra_flags or {}})
        config_cli.setup_logging(fv.verbosity)
        from nd3d_jax import compile_cache

        compile_cache.setup(config.get("compilation_cache", ""))
        deferred = False
        if workdir and needs_workdir:
            deferred = config_cli.distributed_run(config)
            if not deferred:
                config_cli.save_run_files(config, workdir, argv)
        config.lock()
        if extra_flags:
            main(config, workdir, {name: fv[name].value for name in extra_flags})
        else:
            main(config, workdir)
        if workdir and needs_workdir and deferred:
            config_cli.save_run_files(config, workdir, argv)
    except UserError as e:
        if debug:
            raise
        config_cli.fail(str(e))
