"""LPIPS between two sets of images (pairs at the same index), for `python -m nd3d_jax.evaluate`.

    metric = LPIPSMetric.from_folder("weights/lpips_alex")   # see nd3d_jax.weights.lpips
    d = metric(gt_views, gen_views)                          # (B,) float64, lower is closer

Images are NHWC RGB, uint8 or float in [0, 1] (the `lpips` package's `normalize=True`); both
sets have the same shape. They run in fixed-size batches (the last one padded), so each image
size compiles once.
"""

from __future__ import annotations

import jax
import numpy as np

from nd3d_jax.errors import UserError
from nd3d_jax.models.lpips import LPIPS, min_size
from nd3d_jax.weights.lpips import load_lpips

_RANGE_TOL = 1e-3  # float images may overshoot [0, 1] by rounding


class LPIPSMetric:
    """LPIPS (AlexNet or VGG-16) with imported weights; `__call__` gives per-pair distances."""

    def __init__(self, module: LPIPS, params, batch_size: int = 32):
        if batch_size < 1:
            raise UserError(f"LPIPS batch_size must be >= 1, got {batch_size}")
        self.module, self.params, self.batch_size = module, params, int(batch_size)
        self.net = module.net
        self._apply = jax.jit(
            lambda p, a, b: module.apply({"params": p}, a, b, normalize_input=True)
        )

    @classmethod
    def from_folder(cls, folder: str, batch_size: int = 32) -> LPIPSMetric:
        """From an LPIPS weights folder or its converted form (`load_lpips`)."""
        module, params = load_lpips(folder)
        return cls(module, params, batch_size)

    def _prepare(self, images, name: str) -> np.ndarray:
        x = np.asarray(images)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[-1] != 3:
            raise UserError(f"LPIPS {name}: expected (B, H, W, 3) RGB images, got {x.shape}")
        if x.dtype == np.uint8:
            return x.astype(np.float32) / 255.0
        if not np.issubdtype(x.dtype, np.floating):
            raise UserError(f"LPIPS {name}: expected uint8 or float images, got {x.dtype}")
        x = x.astype(np.float32)
        if x.size and (x.min() < -_RANGE_TOL or x.max() > 1 + _RANGE_TOL):
            raise UserError(
                f"LPIPS {name}: float images must lie in [0, 1], got [{x.min():.3g}, "
                f"{x.max():.3g}] (map [-1, 1] images with (x + 1) / 2)"
            )
        return x

    def __call__(self, images_a, images_b) -> np.ndarray:
        """(B,) LPIPS distances between images_a[i] and images_b[i]."""
        a, b = self._prepare(images_a, "images_a"), self._prepare(images_b, "images_b")
        if a.shape != b.shape:
            raise UserError(f"LPIPS: image sets differ in shape: {a.shape} vs {b.shape}")
        n, h, w, _ = a.shape
        need = min_size(self.net)
        if min(h, w) < need:
            raise UserError(
                f"LPIPS ({self.net}): images of {h}x{w} are too small; every side must be >= "
                f"{need} px (the backbone's last pooling leaves no pixel); render larger views"
            )
        if n == 0:
            return np.zeros((0,), np.float64)
        bs = min(self.batch_size, n)
        out = []
        for start in range(0, n, bs):
            xa, xb = a[start : start + bs], b[start : start + bs]
            pad = bs - len(xa)
            if pad:  # a fixed batch shape: one compile per image size
                xa = np.concatenate([xa, np.zeros((pad, h, w, 3), np.float32)])
                xb = np.concatenate([xb, np.zeros((pad, h, w, 3), np.float32)])
            out.append(np.asarray(self._apply(self.params, xa, xb))[: bs - pad])
        return np.concatenate(out).astype(np.float64)
