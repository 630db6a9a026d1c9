"""The img2img pipeline's image preprocessing (transformers' `CLIPImageProcessor`), read from
the pipeline's `image_processor/preprocessor_config.json`.

Host-side, as the processor is: RGB, resize (shortest edge, PIL bicubic), centre crop, rescale
to [0, 1], normalise with the CLIP mean/std; NHWC float32 out. Float input in [0, 1] is rounded
to uint8 first (what a PIL image holds).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

from nd3d_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class ImageProcessor:
    size: dict = dataclasses.field(default_factory=lambda: {"shortest_edge": 224})
    crop_size: dict = dataclasses.field(default_factory=lambda: {"height": 224, "width": 224})
    resample: int = 3  # PIL bicubic
    do_resize: bool = True
    do_center_crop: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, ...] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, ...] = (0.26862954, 0.26130258, 0.27577711)

    @classmethod
    def from_folder(cls, folder: str) -> ImageProcessor:
        path = os.path.join(folder, "preprocessor_config.json")
        try:
            with open(path) as f:
                hf = json.load(f)
        except OSError as e:
            raise UserError(f"{path}: cannot read the image processor config ({e})") from e
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not valid JSON ({e})") from e
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in hf.items() if k in names}
        for key in ("size", "crop_size"):
            if isinstance(kw.get(key), int):  # old configs: a bare number
                n = kw[key]
                kw[key] = {"shortest_edge": n} if key == "size" else {"height": n, "width": n}
        for key in ("image_mean", "image_std"):
            if key in kw:
                kw[key] = tuple(kw[key])
        return cls(**kw)

    def _resize(self, image: Image.Image) -> Image.Image:
        w, h = image.size
        if "shortest_edge" in self.size:
            s = self.size["shortest_edge"]
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = s, int(s * long / short)
            new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        else:
            new_h, new_w = self.size["height"], self.size["width"]
        return image.resize((new_w, new_h), resample=self.resample)

    def __call__(self, images) -> np.ndarray:
        """Images (NHWC or HWC uint8, or float in [0, 1]; or a list of such / PIL images) ->
        (B, crop, crop, 3) float32 pixel values."""
        out = []
        for image in as_pil_list(images):
            if self.do_resize:
                image = self._resize(image)
            x = np.asarray(image, np.float32)
            if self.do_center_crop:
                ch, cw = self.crop_size["height"], self.crop_size["width"]
                h, w = x.shape[:2]
                if ch > h or cw > w:
                    raise UserError(f"image of {w}x{h} is smaller than the crop {cw}x{ch}")
                top, left = (h - ch) // 2, (w - cw) // 2
                x = x[top : top + ch, left : left + cw]
            if self.do_rescale:
                x = x * np.float32(self.rescale_factor)
            if self.do_normalize:
                x = (x - np.float32(self.image_mean)) / np.float32(self.image_std)
            out.append(x.astype(np.float32))
        return np.stack(out)


def as_pil_list(images) -> list[Image.Image]:
    """RGB PIL images from NHWC / HWC arrays (uint8 or float in [0, 1]) or PIL images."""
    if isinstance(images, Image.Image):
        return [images.convert("RGB")]
    if isinstance(images, np.ndarray) or hasattr(images, "__array__"):
        arr = np.asarray(images)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4) or arr.shape[0] == 0:
            raise UserError(
                f"image must be NHWC or HWC with 1, 3 or 4 channels; got shape {arr.shape}"
            )
        return [_to_pil(a) for a in arr]
    if isinstance(images, Sequence) and images:
        return [im for x in images for im in as_pil_list(x)]
    raise UserError(f"image must be an array or PIL image, got {type(images).__name__}")


def _to_pil(a: np.ndarray) -> Image.Image:
    if a.dtype != np.uint8:
        a = np.asarray(a, np.float32)
        if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            raise UserError("float images must hold finite values in [0, 1]")
        a = np.round(a * 255).astype(np.uint8)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, -1)
    return Image.fromarray(a[..., :3])


def read_image(path: str) -> np.ndarray:
    """An image file as HWC uint8 RGB (alpha composited over white); one-line errors."""
    if not os.path.isfile(path):
        raise UserError(f"image not found: {path!r}")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA") or "transparency" in im.info:
                rgba = im.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                im = Image.alpha_composite(white, rgba)
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"{path}: unreadable image ({e})") from e
