"""What `generate` reads: the input image, the text and an optional coarse mesh, one object or a
JSON-lines file of many. Every problem is a one-line `UserError` naming the file or line.

Images (host side, PIL): RGB or RGBA of any size. RGBA (or LA, or a palette with transparency)
is cropped to its alpha's bounding box, composited on white and padded to a square where the
object's longer side fills `object_fraction` of it, as the training renders frame their objects
(the synthetic and OmniObject3D renders: distance 4, Blender's 50 mm lens, largest coordinate
0.99 -> about 0.7). An RGB image without alpha is used whole: padded to a square with white.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
from PIL import Image

from nd3d_jax.errors import UserError

# Pillow refuses images over 2 x this many pixels; we refuse anything over it, with a message.
MAX_PIXELS = 8192 * 8192
MESH_SUFFIXES = (".obj", ".ply", ".glb", ".gltf", ".off", ".stl")


@dataclasses.dataclass(frozen=True)
class ObjectInput:
    """One object to generate: at least an image or a text; `name` is its output folder."""

    name: str
    image: str | None = None
    text: str = ""
    coarse_mesh: str | None = None

    def check(self) -> None:
        if self.image is None and not self.text.strip():
            raise UserError(f"{self.name}: give an image, a text, or both")
        if self.image is not None and not os.path.isfile(self.image):
            raise UserError(f"{self.name}: image not found: {self.image}")
        if self.coarse_mesh is not None:
            if not os.path.isfile(self.coarse_mesh):
                raise UserError(f"{self.name}: coarse mesh not found: {self.coarse_mesh}")
            if os.path.splitext(self.coarse_mesh)[1].lower() not in MESH_SUFFIXES:
                raise UserError(
                    f"{self.name}: {self.coarse_mesh}: coarse meshes are one of {MESH_SUFFIXES}"
                )


def read_jsonl(path: str) -> list[ObjectInput | UserError]:
    """One `ObjectInput` per non-empty line of `{"image": ..., "text": ..., "coarse_mesh": ...,
    "name": ...}` (relative paths are relative to the file); a bad line becomes its error, so
    the other lines still run. Output folders default to `NNNN_<image or text>`."""
    if not os.path.isfile(path):
        raise UserError(f"inputs file not found: {path}")
    base = os.path.dirname(os.path.abspath(path))
    out: list[ObjectInput | UserError] = []
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f.read().splitlines() if line.strip()]
    if not lines:
        raise UserError(f"{path}: no inputs (one JSON object per line)")
    for i, line in enumerate(lines):
        where = f"{path} line {i + 1}"
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
            unknown = set(row) - {"image", "text", "coarse_mesh", "name"}
            if unknown:
                raise ValueError(f"unknown keys {sorted(unknown)}")
            resolve = lambda p: None if not p else os.path.join(base, os.fspath(p))  # noqa: E731
            image, text = resolve(row.get("image")), str(row.get("text") or "")
            stem = os.path.splitext(os.path.basename(image))[0] if image else text
            name = row.get("name") or f"{i:04d}_{slug(stem)}"
            obj = ObjectInput(slug(name), image, text, resolve(row.get("coarse_mesh")))
            obj.check()
            out.append(obj)
        except (ValueError, TypeError) as e:  # json errors are ValueErrors, so is UserError
            msg = str(e)
            out.append(UserError(msg if msg.startswith(where) else f"{where}: {msg}"))
    return out


def slug(text: str, length: int = 40) -> str:
    """A folder-safe name: letters, digits, '-' and '_' (others become '_')."""
    s = "".join(c if c.isalnum() or c in "-_" else "_" for c in text.strip())[:length]
    return s.strip("_") or "object"


def read_image(path: str) -> Image.Image:
    """A fully decoded PIL image, or a one-line error (missing, not an image, too large)."""
    if not os.path.isfile(path):
        raise UserError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                raise UserError(
                    f"{path}: image of {im.width} x {im.height} px is too large to decode "
                    f"(at most {MAX_PIXELS} pixels)"
                )
            im.load()
            return im.copy()
    except UserError:
        raise
    except Image.DecompressionBombError as e:  # PIL refuses > 2 x its limit before we look
        raise UserError(f"{path}: image is too large to decode ({e})") from e
    except (OSError, ValueError, SyntaxError) as e:
        raise UserError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e


def has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )


def prepare_image(image: Image.Image, size: int, object_fraction: float = 0.7) -> np.ndarray:
    """(size, size, 3) uint8: see the module docstring. An RGBA image whose alpha is empty is an
    error (nothing to crop to)."""
    if not 0.1 <= object_fraction <= 1.0:
        raise UserError(f"object_fraction must be in [0.1, 1], got {object_fraction}")
    if has_alpha(image):
        rgba = np.asarray(image.convert("RGBA"), np.float32)
        alpha = rgba[..., 3] / 255.0
        rows, cols = np.nonzero(alpha > 0.5)
        if len(rows) == 0:
            raise UserError("the image's alpha channel is empty: no object to crop to")
        rgba, alpha = (
            rgba[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1],
            alpha[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1],
        )
        rgb = rgba[..., :3] * alpha[..., None] + 255.0 * (1.0 - alpha[..., None])
        rgb = np.clip(rgb + 0.5, 0, 255).astype(np.uint8)
        side = int(np.ceil(max(rgb.shape[:2]) / object_fraction))
    else:
        rgb = np.asarray(image.convert("RGB"))
        side = max(rgb.shape[:2])
    canvas = np.full((side, side, 3), 255, np.uint8)
    h, w = rgb.shape[:2]
    oy, ox = (side - h) // 2, (side - w) // 2
    canvas[oy : oy + h, ox : ox + w] = rgb
    return np.asarray(Image.fromarray(canvas).resize((size, size), Image.LANCZOS))
