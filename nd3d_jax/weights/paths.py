"""Weight folders named in a config, resolved when they are used.

A config names each pretrained folder relative to `config.weights_dir` (or absolute), so an
override such as `--config.weights_dir=/elsewhere` moves all of them at once.
"""

from __future__ import annotations

import os

from nd3d_jax.errors import UserError


def resolve(weights_dir: str, path: str) -> str:
    """`path` as given when absolute (or `~`), else under `weights_dir` (when set)."""
    path = os.path.expanduser(path)
    if not path or os.path.isabs(path) or not weights_dir:
        return path
    return os.path.join(os.path.expanduser(weights_dir), path)


def require_folder(weights_dir: str, path: str, key: str) -> str:
    """The resolved folder; a `UserError` naming the overrides to set when it is missing."""
    folder = resolve(weights_dir, path)
    if not os.path.isdir(folder):
        where = f" (weights_dir={weights_dir!r})" if weights_dir and not os.path.isabs(path) else ""
        raise UserError(
            f"weights folder {folder!r} for {key}={path!r}{where} not found; "
            f"set --config.weights_dir=DIR or --config.{key}=FOLDER"
        )
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise UserError(f"weights folder {folder!r} ({key}) has no config.json")
    return folder
