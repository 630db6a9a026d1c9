"""The structural prior f_struc: sampled mesh faces -> 1-layer MeshConv (kernel 3) -> 128-D.

Paper section "Preprocessing of multimodal prior information": "Face sampling is performed
(1 face per 10, totaling 512 sampled faces), and for each face, the normal vector (3D), area (1D),
and center coordinates (3D) are calculated ... fed into a 1-layer MeshConv (kernel size = 3) to
output a 128D structural feature vector."

docs/design.md: the kernel is a face and its three edge-adjacent neighbours (taken from the full
mesh), aggregated order-invariantly (sum and sum of absolute differences, as MeshCNN makes its
edge convolution symmetric); the conv output is pooled over the valid sampled faces.

    h_f = relu(W_self x_f + W_sum sum_j x_j + W_diff sum_j |x_j - x_f| + b),  f_struc = mean_f h_f
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nd3d_jax.models.layers import dense

NUM_SAMPLED_FACES = 512  # "totaling 512 sampled faces"
FACE_FEATURES = 7  # normal (3) + area (1) + centre (3)
KERNEL = 3  # "kernel size = 3": the three edge-adjacent neighbours
F_STRUC_DIM = 128


def face_features(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(F, 7) float32: unit normal (right-hand winding), area, centroid of every face."""
    tri = np.asarray(vertices, np.float64)[np.asarray(faces)]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    norm = np.linalg.norm(cross, axis=-1, keepdims=True)
    normal = np.divide(cross, norm, out=np.zeros_like(cross), where=norm > 0)
    return np.concatenate([normal, 0.5 * norm, tri.mean(axis=1)], -1).astype(np.float32)


def face_neighbours(faces: np.ndarray) -> np.ndarray:
    """(F, 3) int: faces sharing each face's edges (v0v1, v1v2, v2v0); -1 on a boundary edge."""
    faces = np.asarray(faces, np.int64)
    n = len(faces)
    edges = np.stack([faces, np.roll(faces, -1, axis=1)], -1).reshape(-1, 2)  # (3F, 2)
    key = np.sort(edges, axis=1)
    order = np.lexsort((key[:, 1], key[:, 0]))
    key, slot = key[order], order  # slot // 3 = face, slot % 3 = edge
    out = np.full((n, KERNEL), -1, np.int64)
    same = np.all(key[1:] == key[:-1], axis=1)  # consecutive equal keys: a shared edge
    a, b = slot[:-1][same], slot[1:][same]
    out[a // 3, a % 3] = b // 3
    out[b // 3, b % 3] = a // 3
    return out


def sample_faces(
    vertices: np.ndarray, faces: np.ndarray, num_faces: int = NUM_SAMPLED_FACES
) -> dict[str, np.ndarray]:
    """MeshConv inputs for one mesh: `num_faces` faces evenly spaced in face order (every 10th
    face of the paper's 5120-face meshes), padded with a mask when the mesh has fewer.

    Returns features (num_faces, 7), neighbours (num_faces, 3, 7), neighbour_mask
    (num_faces, 3) and face_mask (num_faces,), all float32.
    """
    faces = np.asarray(faces)
    if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0:
        raise ValueError(f"expected (F, 3) triangle indices with F > 0, got shape {faces.shape}")
    feats = face_features(vertices, faces)
    nbrs = face_neighbours(faces)
    n = len(faces)
    k = min(num_faces, n)
    idx = np.floor(np.arange(k) * (n / k)).astype(np.int64)
    out = {
        "features": np.zeros((num_faces, FACE_FEATURES), np.float32),
        "neighbours": np.zeros((num_faces, KERNEL, FACE_FEATURES), np.float32),
        "neighbour_mask": np.zeros((num_faces, KERNEL), np.float32),
        "face_mask": np.zeros((num_faces,), np.float32),
    }
    out["features"][:k] = feats[idx]
    valid = nbrs[idx] >= 0
    out["neighbours"][:k] = np.where(valid[..., None], feats[np.maximum(nbrs[idx], 0)], 0.0)
    out["neighbour_mask"][:k] = valid
    out["face_mask"][:k] = 1.0
    return out


class MeshConv(nn.Module):
    """(B, F, 7) sampled faces + (B, F, 3, 7) neighbours -> f_struc (B, 128)."""

    features: int = F_STRUC_DIM
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, features, neighbours, neighbour_mask, face_mask) -> jax.Array:
        if features.shape[-1] != FACE_FEATURES or neighbours.shape[-2:] != (KERNEL, FACE_FEATURES):
            raise ValueError(
                f"MeshConv wants faces (B, F, {FACE_FEATURES}) and neighbours (B, F, {KERNEL}, "
                f"{FACE_FEATURES}); got {features.shape} and {neighbours.shape}"
            )
        m = neighbour_mask[..., None].astype(features.dtype)
        x_sum = jnp.sum(m * neighbours, axis=-2)
        x_diff = jnp.sum(m * jnp.abs(neighbours - features[..., None, :]), axis=-2)
        h = (
            dense(self.features, ("prior_in", "prior"), name="w_self", dtype=self.dtype)(features)
            + dense(self.features, ("prior_in", "prior"), name="w_sum", use_bias=False)(x_sum)
            + dense(self.features, ("prior_in", "prior"), name="w_diff", use_bias=False)(x_diff)
        )
        h = nn.relu(h)
        w = face_mask[..., None].astype(h.dtype)
        return jnp.sum(w * h, axis=-2) / jnp.maximum(jnp.sum(w, axis=-2), 1.0)
