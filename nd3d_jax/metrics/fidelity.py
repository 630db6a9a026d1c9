"""How faithful a refined mesh is to its coarse input (P2 must keep what the prior has).

Reported for every generated object (summary.json, `evaluate`, the web demo's status line):
- pieces: connected components of each mesh after welding vertices by position (a part that
  came loose is one more piece, a lost part one fewer);
- chamfer_l2 and f1@tau in the unit frame (the pipeline's, longest side 1), between `samples`
  area-weighted points of one mesh and the *surface* of the other (closest points, libigl's
  AABB tree): precision = share of refined samples within tau of the coarse surface, recall the
  converse, chamfer_l2 the sum of the two mean squared distances.

Point-to-surface rather than Mesh R-CNN's point-to-point (`metrics.geometry`): at tau = 0.01
the spacing of 10k samples on a table-sized surface (~0.013) exceeds tau, so two samplings of
the *same* mesh would score F1@0.01 ~ 0.8 point-to-point; point-to-surface they score 1.
"""

from __future__ import annotations

import igl
import numpy as np
import scipy.sparse
import scipy.sparse.csgraph
import trimesh

from nd3d_jax.errors import UserError

TAUS = (0.005, 0.01, 0.02)


def count_pieces(mesh: trimesh.Trimesh) -> int:
    """Connected components of the surface: faces joined through shared vertices, vertices
    welded by position first (UV seams and triangle soups split them)."""
    faces = np.asarray(mesh.faces)
    if len(faces) == 0:
        return 0
    _, weld = np.unique(np.asarray(mesh.vertices, np.float64).round(9), axis=0, return_inverse=True)
    f = weld.reshape(-1)[faces]
    edges = np.concatenate([f[:, [0, 1]], f[:, [1, 2]]])
    n = int(weld.max()) + 1
    graph = scipy.sparse.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), (n, n))
    _, labels = scipy.sparse.csgraph.connected_components(graph, directed=False)
    return len(np.unique(labels[f[:, 0]]))


def _surface_distance(points: np.ndarray, mesh: trimesh.Trimesh) -> np.ndarray:
    sq, _, _ = igl.point_mesh_squared_distance(
        np.asarray(points, np.float64),
        np.asarray(mesh.vertices, np.float64),
        np.asarray(mesh.faces, np.int64),
    )
    return np.sqrt(np.maximum(sq, 0.0))


def surface_fidelity(
    pred: trimesh.Trimesh,
    ref: trimesh.Trimesh,
    samples: int = 20000,
    taus: tuple[float, ...] = TAUS,
    seed: int = 0,
) -> dict[str, float]:
    """Chamfer-L2 and precision / recall / F1 at each tau between two meshes' surfaces."""
    for name, m in (("pred", pred), ("ref", ref)):
        if len(m.faces) == 0 or not m.area > 0:
            raise UserError(f"fidelity: the {name} mesh has no surface")
    a, _ = trimesh.sample.sample_surface(pred, samples, seed=seed)
    b, _ = trimesh.sample.sample_surface(ref, samples, seed=seed + 1)
    d_ab, d_ba = _surface_distance(a, ref), _surface_distance(b, pred)
    out = {"chamfer_l2": float(np.mean(d_ab**2) + np.mean(d_ba**2))}
    for tau in taus:
        p, r = float(np.mean(d_ab < tau)), float(np.mean(d_ba < tau))
        out[f"precision@{tau:g}"] = p
        out[f"recall@{tau:g}"] = r
        out[f"f1@{tau:g}"] = 2 * p * r / (p + r + 1e-8)
    return out


def refinement_fidelity(
    refined: trimesh.Trimesh, coarse: trimesh.Trimesh, samples: int = 20000, seed: int = 0
) -> dict[str, float | int]:
    """What `summary.json` reports: pieces of both meshes, Chamfer-L2 and F1 at TAUS."""
    out = surface_fidelity(refined, coarse, samples, TAUS, seed)
    keep = {k: v for k, v in out.items() if k == "chamfer_l2" or k.startswith("f1@")}
    return {"pieces_coarse": count_pieces(coarse), "pieces_refined": count_pieces(refined), **keep}
