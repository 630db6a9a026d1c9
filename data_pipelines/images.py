"""Image reading and resizing for preparation: every failure is a `BadExample` naming the file."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, UnidentifiedImageError


class BadExample(Exception):
    """An example that cannot be prepared: `reason` is a short category (counted in the final
    report), `path` the offending file, `detail` the specifics."""

    def __init__(self, reason: str, path: str, detail: str = ""):
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))
        self.reason, self.path, self.detail = reason, path, detail


def read_image(path: str, *, what: str = "image") -> Image.Image:
    """Opens and fully decodes an image (truncated or corrupt files fail here, not later)."""
    if not os.path.isfile(path):
        raise BadExample(f"missing {what}", path)
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise BadExample(f"corrupt {what}", path, f"{type(e).__name__}: {e}") from e
    if image.width < 1 or image.height < 1:
        raise BadExample(f"corrupt {what}", path, f"size {image.size}")
    return image


def to_rgb(image: Image.Image, background=(255, 255, 255)) -> np.ndarray:
    """(H, W, 3) uint8: grayscale replicated, palette expanded, alpha composited on
    `background`."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = np.asarray(image.convert("RGBA"), np.float32)
        alpha = rgba[..., 3:] / 255.0
        rgb = rgba[..., :3] * alpha + np.asarray(background, np.float32) * (1.0 - alpha)
        return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)
    return np.asarray(image.convert("RGB"))


def has_alpha(image: Image.Image) -> bool:
    return "A" in image.getbands() or (image.mode == "P" and "transparency" in image.info)


def alpha_mask(image: Image.Image) -> np.ndarray:
    """(H, W) bool: alpha > 1/2, or all True for an opaque image."""
    if not has_alpha(image):
        return np.ones((image.height, image.width), bool)
    return np.asarray(image.convert("RGBA").getchannel("A")) > 127


BACKGROUND_TOLERANCE = 24  # of 255: JPEG-free renders keep the background colour exactly


def background_mask(rgb: np.ndarray, tolerance: int = BACKGROUND_TOLERANCE) -> np.ndarray:
    """(H, W) bool for an (H, W, 3) render without alpha: the pixels whose colour differs from
    the background's (the median colour of the one-pixel border) by more than `tolerance` in
    some channel. An object pixel of exactly the background colour is lost (no alpha to say)."""
    rgb = np.asarray(rgb, np.int16)
    border = np.concatenate([rgb[0], rgb[-1], rgb[1:-1, 0], rgb[1:-1, -1]])
    background = np.median(border, axis=0)
    return np.abs(rgb - background).max(-1) > tolerance


def square_image(array: np.ndarray, size: int, *, mask: bool = False) -> np.ndarray:
    """Pads (H, W[, C]) with zeros to a centred square, then resizes to `size` x `size`.

    Padding keeps the aspect ratio, so the camera stays a pinhole with one focal length
    (`cameras.square_pad_resize_intrinsics` gives its new intrinsics). Images resample with
    Lanczos; masks bilinearly, thresholded at 1/2.
    """
    h, w = array.shape[:2]
    side = max(h, w)
    oy, ox = (side - h) // 2, (side - w) // 2
    padded = np.zeros((side, side, *array.shape[2:]), array.dtype)
    padded[oy : oy + h, ox : ox + w] = array
    if mask:
        img = Image.fromarray(padded.astype(np.uint8) * 255, "L")
        return np.asarray(img.resize((size, size), Image.BILINEAR)) > 127
    return np.asarray(Image.fromarray(padded).resize((size, size), Image.LANCZOS))
