"""CLIP image and text embeddings for CMMD, FID_CLIP and the CLIP-score.

Two image preprocessings, each the reference's own, run on the host with PIL (the references
read uint8 PNG/JPEG files, so float images are quantised to uint8 first, as writing a PNG would):

- "cmmd" (google-research `cmmd/io_util.py` `_center_crop_and_resize`): center crop to a square
  (box `((w - l) // 2, (h - l) // 2)`), PIL bicubic (antialiased) resize to the model's size (336
  for ViT-L/14-336), values / 255 in [0, 1]. The reference's `embedding.py` then resizes with
  `jax.image.resize(..., "bicubic")` to the same size (an identity) and CLIP-normalises; its
  embeddings are L2-normalised (scenic's CLIP `normalize=True`).
- "fid" (clean-fid `clip_features.img_preprocess_clip`, which is openai CLIP's own transform and
  the one Hugging Face's CLIPProcessor applies): torchvision `Resize(size, BICUBIC)` of the short
  side on a PIL image, `CenterCrop(size)` (offsets `int(round((h - size) / 2))`), uint8, then
  / 255 and CLIP-normalised; `encode_image` features are not normalised (clean-fid's FID_CLIP).

The CLIP forward is jitted on fixed chunks of `batch_size` (the last chunk padded), so sets of
any size compile once per tower.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from nd3d_jax.errors import UserError
from nd3d_jax.weights.clip import CLIPTokenizer, load_clip

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
PREPROCESS = ("cmmd", "fid")


def to_uint8(images) -> np.ndarray:
    """NHWC (or one HWC) images, uint8 or float in [0, 1], 1 or 3 channels -> uint8 (N, H, W, 3).

    Floats are rounded to the nearest of 256 levels (what saving a PNG does); grayscale channels
    are tiled to RGB as the CMMD reference does."""
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or min(x.shape[:3]) < 1:
        raise UserError(f"images must be NHWC with 1 or 3 channels, got shape {x.shape}")
    if x.dtype != np.uint8:
        if not np.issubdtype(x.dtype, np.floating):
            raise UserError(f"images must be uint8 or float in [0, 1], got dtype {x.dtype}")
        if not np.isfinite(x).all() or x.min() < 0.0 or x.max() > 1.0:
            raise UserError(
                "float images must be finite and in [0, 1]; scale uint8 images by 1/255 or pass "
                "them as uint8"
            )
        x = np.rint(x.astype(np.float64) * 255.0).astype(np.uint8)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return x


def cmmd_resize(image: np.ndarray, size: int) -> np.ndarray:
    """One uint8 HWC image -> float32 (size, size, 3) in [0, 1]: the CMMD reference's
    `_center_crop_and_resize` (PIL) and `/ 255`."""
    im = Image.fromarray(image)
    w, h = im.size
    side = min(w, h)
    top, left = (h - side) // 2, (w - side) // 2
    im = im.crop((left, top, left + side, top + side))
    im = im.resize((size, size), resample=Image.BICUBIC)
    return np.asarray(im).astype(np.float32) / 255.0


def fid_resize(image: np.ndarray, size: int) -> np.ndarray:
    """One uint8 HWC image -> uint8 (size, size, 3): clean-fid's `img_preprocess_clip`
    (torchvision `Resize(size, BICUBIC)` of the short side, then `CenterCrop(size)`, on PIL)."""
    im = Image.fromarray(image).convert("RGB")
    w, h = im.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        im = im.resize((new_w, new_h), Image.BICUBIC)
    top = int(round((new_h - size) / 2.0))  # Python's round, as torchvision's center_crop
    left = int(round((new_w - size) / 2.0))
    im = im.crop((left, top, left + size, top + size))
    return np.asarray(im).clip(0, 255).astype(np.uint8)


def preprocess_images(images, size: int, mode: str = "cmmd") -> np.ndarray:
    """NHWC images -> CLIP-normalised float32 (N, size, size, 3) by `mode` ("cmmd" | "fid")."""
    if mode not in PREPROCESS:
        raise UserError(f"preprocess must be one of {PREPROCESS}, got {mode!r}")
    x = to_uint8(images)
    if mode == "cmmd":
        out = np.stack([cmmd_resize(im, size) for im in x])
    else:
        out = np.stack([fid_resize(im, size) for im in x]).astype(np.float32) / 255.0
    return (out - CLIP_MEAN) / CLIP_STD


def l2_normalize(x: jax.Array) -> jax.Array:
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


class CLIPFeatures:
    """CLIP embeddings from a weight folder (`CLIPModel.save_pretrained` layout or converted).

    `image_embeddings(images, preprocess)` and `text_embeddings(texts)` return float32 numpy
    arrays (N, projection_dim). "cmmd" image embeddings are L2-normalised (the CMMD reference's);
    "fid" ones are the raw `encode_image` features (clean-fid's); text embeddings are the raw
    `encode_text` features (normalise with `l2_normalize` for cosines).
    """

    def __init__(self, folder: str, batch_size: int = 32):
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        self.folder = str(folder)
        self.module, self.params = load_clip(self.folder)
        self.batch_size = batch_size
        self.image_size = self.module.config.vision.image_size
        self._tokenizer = None  # loaded on the first texts: image metrics need no tokenizer files
        module = self.module

        def image_fn(params, pixels, normalize):
            feats = module.apply({"params": params}, pixels, method="encode_image")
            return l2_normalize(feats) if normalize else feats

        def text_fn(params, ids, mask):
            return module.apply({"params": params}, ids, mask, method="encode_text")

        self._image_fn = jax.jit(image_fn, static_argnums=2)
        self._text_fn = jax.jit(text_fn)

    def _chunked(self, fn, *arrays: np.ndarray) -> np.ndarray:
        """fn over fixed chunks of `batch_size` rows (the last padded by repeating row 0)."""
        n, b = len(arrays[0]), self.batch_size
        outs = []
        for start in range(0, n, b):
            chunk = [a[start : start + b] for a in arrays]
            k = len(chunk[0])
            if k < b:
                chunk = [np.concatenate([c, np.repeat(c[:1], b - k, 0)]) for c in chunk]
            outs.append(np.asarray(fn(*[jnp.asarray(c) for c in chunk]))[:k])
        return np.concatenate(outs).astype(np.float32)

    def image_embeddings(self, images, preprocess: str = "cmmd") -> np.ndarray:
        """NHWC images (uint8 or float in [0, 1], any size) -> (N, P) embeddings."""
        pixels = preprocess_images(images, self.image_size, preprocess)
        normalize = preprocess == "cmmd"
        return self._chunked(lambda x: self._image_fn(self.params, x, normalize), pixels)

    def text_embeddings(self, texts: str | Sequence[str]) -> np.ndarray:
        """Texts -> (N, P) `encode_text` features (not normalised)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise UserError("text_embeddings needs at least one text")
        if self._tokenizer is None:
            max_len = self.module.config.text.max_position_embeddings
            self._tokenizer = CLIPTokenizer(self.folder, max_length=max_len)
        tok = self._tokenizer(texts)
        fn = lambda ids, mask: self._text_fn(self.params, ids, mask)  # noqa: E731
        return self._chunked(fn, tok["input_ids"], tok["attention_mask"])
