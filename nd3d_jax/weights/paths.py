"""Weight folders named in a config, resolved when they are used.

A config names each pretrained folder relative to `config.weights_dir` (or absolute), so an
override such as `--config.weights_dir=/elsewhere` moves all of them at once. A diffusers
pipeline folder (`model_index.json`, e.g. a downloaded Stable Diffusion) stands for its
sub-folder of the wanted model (`unet/`, `vae/`, ...; `nd3d_jax.weights.io.model_folder`).
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


def require_folder(weights_dir: str, path: str, key: str, kind: str | None = None) -> str:
    """The resolved folder (for a pipeline folder, its `kind` sub-folder: a key of
    `nd3d_jax.weights.io.CLASSES`); a `UserError` naming the overrides to set when it is
    missing."""
    from nd3d_jax.weights.io import model_folder

    folder = resolve(weights_dir, path)
    if not os.path.isdir(folder):
        where = f" (weights_dir={weights_dir!r})" if weights_dir and not os.path.isabs(path) else ""
        raise UserError(
            f"weights folder {folder!r} for {key}={path!r}{where} not found; "
            f"set --config.weights_dir=DIR or --config.{key}=FOLDER"
        )
    if kind is not None:
        try:
            folder = model_folder(folder, kind)
        except UserError as e:
            raise UserError(f"{key}={path!r}: {e}") from e
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise UserError(f"weights folder {folder!r} ({key}) has no config.json")
    return folder
