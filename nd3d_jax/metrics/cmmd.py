"""CMMD (Jayasumana et al. 2024): the MMD between two sets of CLIP embeddings.

Gaussian RBF kernel k(x, y) = exp(-|x - y|^2 / (2 sigma^2)) with sigma = 10, the biased
(minimum-variance) MMD^2 estimator of Gretton et al. 2012 eq 5,

    MMD^2 = mean_ij k(x_i, x_j) + mean_ij k(y_i, y_j) - 2 mean_ij k(x_i, y_j),

scaled by 1000, computed as google-research `cmmd/distance.py` computes it (squared distances
from the Gram matrices). Embeddings come from `CLIPFeatures.image_embeddings(..., "cmmd")`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from nd3d_jax.errors import UserError


@functools.partial(jax.jit, static_argnames=("sigma", "scale"))
def _mmd(x: jax.Array, y: jax.Array, sigma: float, scale: float) -> jax.Array:
    gamma = 1.0 / (2.0 * sigma**2)
    x_sq, y_sq = jnp.sum(x * x, -1), jnp.sum(y * y, -1)

    def mean_kernel(a, b, a_sq, b_sq):
        d2 = -2.0 * a @ b.T + a_sq[:, None] + b_sq[None, :]
        return jnp.mean(jnp.exp(-gamma * d2))

    k_xx = mean_kernel(x, x, x_sq, x_sq)
    k_yy = mean_kernel(y, y, y_sq, y_sq)
    k_xy = mean_kernel(x, y, x_sq, y_sq)
    return scale * (k_xx + k_yy - 2.0 * k_xy)


def check_sets(x, y, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Two (n, d) float embedding sets with n >= 2, the same d, finite values."""
    x, y = np.asarray(x), np.asarray(y)
    for label, s in (("first", x), ("second", y)):
        if s.ndim != 2:
            raise UserError(f"{name}: the {label} set must be (n, dim) embeddings, got {s.shape}")
        if s.shape[0] < 2:
            raise UserError(
                f"{name}: the {label} set has {s.shape[0]} embedding(s); it needs at least 2 "
                "(evaluate more images)"
            )
        if not np.isfinite(s).all():
            raise UserError(f"{name}: the {label} set has non-finite values (NaN or inf)")
    if x.shape[1] != y.shape[1]:
        raise UserError(
            f"{name}: embedding sizes differ ({x.shape[1]} vs {y.shape[1]}); use the same model"
        )
    return x, y


def cmmd(x, y, sigma: float = 10.0, scale: float = 1000.0) -> float:
    """CMMD between embedding sets x (n, d) and y (m, d); 0 for identical sets."""
    x, y = check_sets(x, y, "CMMD")
    return float(_mmd(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), sigma, scale))
