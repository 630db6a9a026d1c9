"""Which of an object's N renders fill the K-view grid (NumPy/SciPy only).

Generation samples the grid through a fixed ring of K cameras (`configs/generate.py`
`cameras`, `nd3d_jax.pipeline.multiview.view_cameras`): in the unit-cube frame (+Y up), at
`elevation_deg` above the horizon, azimuths 360 k / K apart, the first looking at the front
(+Z), each looking at the origin. OmniObject3D's renders come from random cameras on the upper
hemisphere, so the grid takes, for each ring camera, a distinct render whose viewing direction
(camera position seen from the shape's centre) is nearest it: the assignment that minimises the
summed angles (`scipy.optimize.linear_sum_assignment`), so no unused render is nearer a ring
camera than the one it got. Each object's ring is turned by its own seeded azimuth offset, an
augmentation over the ring's rotation. `frame_views` keeps the old choice by frame number.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
from scipy.optimize import linear_sum_assignment


def ring_directions(count: int, elevation_deg: float, azimuth_deg: float = 0.0) -> np.ndarray:
    """(count, 3) unit vectors from the origin to the ring cameras (+Y up, the first at
    azimuth `azimuth_deg` from +Z towards +X), as `nd3d_jax.render.camera.ring_poses`."""
    az = np.radians(azimuth_deg) + 2 * np.pi * np.arange(count) / count
    el = math.radians(elevation_deg)
    return np.stack([np.sin(az) * np.cos(el), np.full(count, np.sin(el)), np.cos(az) * np.cos(el)],
                    axis=-1)  # fmt: skip


def view_directions(c2w: np.ndarray) -> np.ndarray:
    """(N, 3) unit vectors from the origin to each camera of (N, 4, 4) camera-to-world poses."""
    pos = np.asarray(c2w, np.float64)[:, :3, 3]
    return pos / np.maximum(np.linalg.norm(pos, axis=-1, keepdims=True), 1e-12)


def azimuth_offset(key: str, seed: int, jitter_deg: float) -> float:
    """The object's ring rotation in degrees: uniform in [-jitter, jitter), fixed by (seed, key)."""
    if jitter_deg <= 0:
        return 0.0
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    return float(rng.uniform(-jitter_deg, jitter_deg))


def nearest_to_ring(c2w: np.ndarray, count: int, elevation_deg: float, azimuth_deg: float = 0.0,
                    exclude: tuple[int, ...] = ()) -> list[int]:  # fmt: skip
    """Indices of `count` distinct poses, the k-th nearest (in angle) the k-th ring camera,
    with the least summed angle; poses in `exclude` (the input view) are never taken."""
    candidates = np.array([i for i in range(len(c2w)) if i not in set(exclude)])
    if len(candidates) < count:
        raise ValueError(f"{len(candidates)} candidate views for {count} ring cameras")
    cos = ring_directions(count, elevation_deg, azimuth_deg) @ view_directions(c2w[candidates]).T
    rows, cols = linear_sum_assignment(np.arccos(np.clip(cos, -1.0, 1.0)))
    return [int(candidates[c]) for c in cols[np.argsort(rows)]]


def frame_views(num_frames: int, input_view: int, count: int) -> list[int]:
    """The old choice: `count` renders spread evenly by frame number over the non-input ones."""
    others = [i for i in range(num_frames) if i != input_view]
    pick = np.linspace(0, len(others), count, endpoint=False).astype(int)
    return [others[i] for i in pick]
