"""CLIP-score (text-image) and CLIP-I (image-image): cosines of CLIP embeddings.

The paper's CLIP-score measures "the consistency between the text description and the image"
(Table 2: 0.899 / 0.898), a cosine in [-1, 1]. We return the mean cosine over the pairs,
unclamped, on that scale:

    clip_score = mean_i cos(E_I(image_i), E_T(text_i))
    clip_i     = mean_i cos(E_I(generated_i), E_I(reference_i))

torchmetrics' `CLIPScore` reports 100 x cosine and clamps at 0 after averaging: its `compute()`
is max(100 * mean_i cos_i, 0) (`torch.max(score / n_samples, 0)`), so for a non-negative mean
clip_score = CLIPScore / 100 exactly, and per pair the unclamped 100 x cos_i is what its
`_clip_score_update` returns. `torchmetrics_scale` gives its number from ours.

Images are preprocessed as openai CLIP (and clean-fid, and Hugging Face's CLIPProcessor) do:
bicubic resize of the short side, center crop (`CLIPFeatures` preprocess "fid").
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nd3d_jax.errors import UserError
from nd3d_jax.metrics.clip_features import CLIPFeatures, l2_normalize


@jax.jit
def _pair_cosines(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.sum(l2_normalize(a) * l2_normalize(b), axis=-1)


def pair_cosines(a, b) -> np.ndarray:
    """Per-pair cosines (N,) of two (N, P) embedding arrays."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    if a.ndim != 2 or a.shape != b.shape or len(a) == 0:
        raise UserError(
            f"CLIP-score needs two (N, P) embedding arrays of one shape, N >= 1; got {a.shape} "
            f"and {b.shape} (one text or reference view per generated image)"
        )
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise UserError("CLIP-score: embeddings have non-finite values (NaN or inf)")
    return np.asarray(_pair_cosines(jnp.asarray(a), jnp.asarray(b)))


def clip_score_from_embeddings(image_embeds, text_embeds) -> float:
    """Mean text-image cosine (the paper's scale; no clamp)."""
    return float(np.mean(pair_cosines(image_embeds, text_embeds)))


def torchmetrics_scale(score: float) -> float:
    """Our mean cosine -> torchmetrics' `CLIPScore`: max(100 x mean cosine, 0)."""
    return max(100.0 * score, 0.0)


def clip_score(features: CLIPFeatures, images, texts: Sequence[str]) -> float:
    """Mean cosine of CLIP(image_i) and CLIP(text_i) over NHWC images and their texts."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    n = len(np.asarray(images)) if np.ndim(images) == 4 else 1
    if n != len(texts):
        raise UserError(f"CLIP-score: {n} image(s) but {len(texts)} text(s); give one each")
    img = features.image_embeddings(images, preprocess="fid")
    return clip_score_from_embeddings(img, features.text_embeddings(texts))


def clip_i(features: CLIPFeatures, generated, reference) -> float:
    """CLIP-I: mean cosine of CLIP(generated_i) and CLIP(reference_i) (the same views)."""
    g = features.image_embeddings(generated, preprocess="fid")
    r = features.image_embeddings(reference, preprocess="fid")
    if len(g) != len(r):
        raise UserError(f"CLIP-I: {len(g)} generated but {len(r)} reference views; pair them")
    return float(np.mean(pair_cosines(g, r)))
