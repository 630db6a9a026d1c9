"""Mesh R-CNN geometry metrics: Chamfer-L2, normal consistency, F-score at tau (Pix3D protocol).

Conventions (as in facebookresearch/meshrcnn ``meshrcnn/utils/metrics.py::compare_meshes``):
- scale "mesh_rcnn" (Mesh R-CNN's "gt-10"): both meshes are multiplied by 10 / (longest edge of
  the GT axis-aligned bounding box), a pure scale (no translation), before sampling; "none" keeps
  our unit-cube frame.
- ``samples`` (10k) area-weighted surface points per mesh, each with its face normal.
- chamfer_l2 = mean_a min_b |a-b|^2 + mean_b min_a |b-a|^2 (sum of the two squared means).
- normal_consistency = 0.5 (mean_a |cos(n_a, n_nn(a))| + mean_b |cos(n_b, n_nn(b))|) (Mesh R-CNN's
  "AbsNormalConsistency"); normal_consistency_signed is the same without the absolute value.
- precision@tau = fraction of pred samples within tau of a GT sample, recall@tau the converse
  (strict <), f1@tau = 2 P R / (P + R + 1e-8); default taus 0.1, 0.3, 0.5 in the scaled frame.
  Values are fractions in [0, 1]; Mesh R-CNN prints them x100 (percent).
- Mesh R-CNN (pytorch3d knn_points) uses exact brute-force nearest neighbours; cKDTree is exact too.
"""

from __future__ import annotations

import numpy as np
import trimesh
from scipy.spatial import cKDTree

from nd3d_jax.errors import UserError

SCALES = ("mesh_rcnn", "none")
_EPS = 1e-8


def _check_points(
    points: np.ndarray, normals: np.ndarray, name: str
) -> tuple[np.ndarray, np.ndarray]:
    p, n = np.asarray(points, np.float64), np.asarray(normals, np.float64)
    if p.ndim != 2 or p.shape[1] != 3 or not len(p) or n.shape != p.shape:
        raise UserError(
            f"{name}: expected non-empty (N, 3) points and normals of the same shape, "
            f"got {p.shape} and {n.shape}"
        )
    if not (np.isfinite(p).all() and np.isfinite(n).all()):
        raise UserError(f"{name}: points or normals contain NaN/inf; clean the mesh first")
    return p, n


def point_metrics(
    points_a: np.ndarray,
    normals_a: np.ndarray,
    points_b: np.ndarray,
    normals_b: np.ndarray,
    taus: tuple[float, ...] = (0.1, 0.3, 0.5),
) -> dict[str, float]:
    """Metrics between a (prediction) and b (ground truth) point sets with normals."""
    pa, na = _check_points(points_a, normals_a, "points_a")
    pb, nb = _check_points(points_b, normals_b, "points_b")
    d_ab, i_ab = cKDTree(pb).query(pa)
    d_ba, i_ba = cKDTree(pa).query(pb)

    def cos(n1: np.ndarray, n2: np.ndarray) -> np.ndarray:
        # torch.nn.functional.cosine_similarity style: eps-clamped norms.
        den = np.maximum(np.linalg.norm(n1, axis=1) * np.linalg.norm(n2, axis=1), _EPS)
        return (n1 * n2).sum(1) / den

    cos_ab, cos_ba = cos(na, nb[i_ab]), cos(nb, na[i_ba])
    out = {
        "chamfer_l2": float((d_ab**2).mean() + (d_ba**2).mean()),
        "normal_consistency": float(0.5 * (np.abs(cos_ab).mean() + np.abs(cos_ba).mean())),
        "normal_consistency_signed": float(0.5 * (cos_ab.mean() + cos_ba.mean())),
    }
    for tau in taus:
        p, r = float((d_ab < tau).mean()), float((d_ba < tau).mean())
        out[f"precision@{tau:g}"] = p
        out[f"recall@{tau:g}"] = r
        out[f"f1@{tau:g}"] = 2 * p * r / (p + r + _EPS)
    return out


def _check_mesh(mesh: trimesh.Trimesh, name: str) -> None:
    if not isinstance(mesh, trimesh.Trimesh):
        raise UserError(f"{name}: expected a trimesh.Trimesh, got {type(mesh).__name__}")
    if len(mesh.vertices) == 0 or len(mesh.faces) == 0:
        raise UserError(f"{name}: mesh is empty (no vertices or no faces); nothing to sample")
    if not np.isfinite(np.asarray(mesh.vertices)).all():
        raise UserError(f"{name}: mesh vertices contain NaN/inf; clean the mesh first")
    if not mesh.area > 0:
        raise UserError(f"{name}: mesh has zero surface area; nothing to sample")


def sample_with_normals(
    mesh: trimesh.Trimesh, count: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """`count` area-weighted surface samples and their face normals."""
    points, face_idx = trimesh.sample.sample_surface(mesh, count, seed=seed)
    return np.asarray(points), np.asarray(mesh.face_normals)[face_idx]


def mesh_metrics(
    pred: trimesh.Trimesh,
    gt: trimesh.Trimesh,
    samples: int = 10000,
    taus: tuple[float, ...] = (0.1, 0.3, 0.5),
    scale: str = "mesh_rcnn",
    seed: int = 0,
) -> dict[str, float]:
    """Mesh R-CNN Pix3D metrics of `pred` against `gt` (see module docstring for conventions)."""
    _check_mesh(pred, "pred")
    _check_mesh(gt, "gt")
    if scale not in SCALES:
        raise UserError(f"scale must be one of {SCALES}, got {scale!r}")
    if samples < 1:
        raise UserError(f"samples must be >= 1, got {samples}")
    factor = 1.0
    if scale == "mesh_rcnn":
        long_edge = float(np.ptp(np.asarray(gt.vertices), axis=0).max())
        if long_edge <= 0:
            raise UserError("gt: bounding box has zero size; cannot rescale to longest edge 10")
        factor = 10.0 / long_edge
    pa, na = sample_with_normals(pred, samples, seed)
    pb, nb = sample_with_normals(gt, samples, seed + 1)
    return point_metrics(pa * factor, na, pb * factor, nb, taus)
