"""The Fréchet distance of two feature sets, and FID_CLIP (clean-fid's `clip_vit_b_32`).

    d^2 = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))

Means and covariances (`np.cov(rowvar=False)`, unbiased) in float64 on the host, and the matrix
square root with scipy's `sqrtm`, handled as clean-fid's `frechet_distance`: a non-finite root is
retried with eps on the covariance diagonals; an imaginary part is dropped when the diagonal's is
within 1e-3 of zero, otherwise it is an error. Features come from
`CLIPFeatures.image_embeddings(..., "fid")` (raw `encode_image`, clean-fid's preprocessing).
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import linalg

from nd3d_jax.errors import UserError
from nd3d_jax.metrics.cmmd import check_sets


def feature_stats(feats) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) of (n, d) features in float64, as clean-fid."""
    f = np.asarray(feats)
    return np.mean(f, axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Fréchet distance of two Gaussians (clean-fid's `frechet_distance`)."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1 = np.atleast_2d(sigma1).astype(np.float64)
    sigma2 = np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise UserError(
            f"Fréchet distance: feature sizes differ ({mu1.shape[0]} vs {mu2.shape[0]}); "
            "use the same feature model for both sets"
        )
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        logging.warning("Fréchet distance: singular product; adding %s to the diagonals", eps)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(
                f"Fréchet distance: imaginary component {np.max(np.abs(covmean.imag))}"
            )
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid_from_features(feats1, feats2) -> float:
    """Fréchet distance of two (n, d) feature sets (n >= 2 each, the same d)."""
    f1, f2 = check_sets(feats1, feats2, "FID")
    return frechet_distance(*feature_stats(f1), *feature_stats(f2))


def fid_clip(generated_feats, reference_feats) -> float:
    """FID_CLIP from CLIP ViT-B/32 `encode_image` features of the generated and reference images
    (`CLIPFeatures(folder).image_embeddings(images, "fid")`)."""
    return fid_from_features(generated_feats, reference_feats)
