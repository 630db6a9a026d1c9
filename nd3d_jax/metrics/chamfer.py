"""Chamfer distance and F-score between point sets or meshes (KD-tree nearest neighbours)."""

from __future__ import annotations

import numpy as np
import trimesh
from scipy.spatial import cKDTree


def nearest_distances(points_a: np.ndarray, points_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distance from each point of a to b, and from each point of b to a."""
    a, b = np.asarray(points_a, np.float64), np.asarray(points_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != 3 or b.shape[1] != 3 or not len(a) or not len(b):
        raise ValueError(f"expected two non-empty (N, 3) point sets, got {a.shape} and {b.shape}")
    return cKDTree(b).query(a)[0], cKDTree(a).query(b)[0]


def chamfer_distance(points_a: np.ndarray, points_b: np.ndarray) -> float:
    """Symmetric Chamfer distance: mean a->b plus mean b->a nearest-neighbour distance."""
    d_ab, d_ba = nearest_distances(points_a, points_b)
    return float(d_ab.mean() + d_ba.mean())


def f_score(points_a: np.ndarray, points_b: np.ndarray, threshold: float) -> float:
    """F-score at `threshold`: harmonic mean of precision (a near b) and recall (b near a)."""
    d_ab, d_ba = nearest_distances(points_a, points_b)
    precision, recall = (d_ab < threshold).mean(), (d_ba < threshold).mean()
    return float(0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))


def mesh_chamfer(
    mesh_a: trimesh.Trimesh, mesh_b: trimesh.Trimesh, count: int = 20000, seed: int = 0
) -> float:
    """Chamfer distance between `count` area-weighted surface samples of each mesh."""
    pa, _ = trimesh.sample.sample_surface(mesh_a, count, seed=seed)
    pb, _ = trimesh.sample.sample_surface(mesh_b, count, seed=seed + 1)
    return chamfer_distance(pa, pb)
