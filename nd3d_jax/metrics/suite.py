"""Every metric of the paper's Table 2 (and the geometry ones) for one evaluation run.

Per object (averaged over its K views where they are images):
  lpips_alex, lpips_vgg  LPIPS between the ground-truth and generated views
  clip_score             cosine of the caption's and each generated view's CLIP embeddings
  clip_i                 cosine of each ground-truth view's and generated view's embeddings
  chamfer_l2, normal_consistency, f1@tau   the meshes (Mesh R-CNN's Pix3D protocol)
Per set (all views of all objects):
  cmmd                   CMMD of the generated against the ground-truth views
  fid_clip               FID on clean-fid's CLIP ViT-B/32 features, same sets

A metric whose weights folder is missing (or fails to import) is "unavailable", with the folder
it looked for; the others run.
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np
import trimesh

from nd3d_jax.errors import UserError
from nd3d_jax.weights.io import WeightImportError
from nd3d_jax.weights.paths import resolve

IMAGE_METRICS = ("lpips_alex", "lpips_vgg", "clip_score", "clip_i")
SET_METRICS = ("cmmd", "fid_clip")
# which weights each metric needs (config key under `metrics`)
NEEDS = {"lpips_alex": "lpips_alex", "lpips_vgg": "lpips_vgg", "clip_score": "clip",
         "clip_i": "clip", "fid_clip": "clip", "cmmd": "cmmd_clip"}  # fmt: skip
LOWER_IS_BETTER = {"lpips_alex", "lpips_vgg", "cmmd", "fid_clip", "chamfer_l2"}


class MetricSuite:
    """The metric models named in `config.metrics`, loaded once; `unavailable` says why not."""

    def __init__(self, config: ml_collections.ConfigDict, log=print):
        self.config, self.log = config, log
        m = config.metrics
        self.unavailable: dict[str, str] = {}
        self._models: dict[str, object] = {}
        for key in sorted(set(NEEDS.values())):
            folder = resolve(config.get("weights_dir", ""), m[key])
            if not folder or not os.path.isdir(folder):
                self._missing(key, f"no weights folder {folder!r} (set --config.metrics.{key})")
                continue
            try:
                self._models[key] = self._load(key, folder)
            except (WeightImportError, UserError, OSError) as e:
                self._missing(key, f"{folder}: {str(e).splitlines()[0]}")

    def _missing(self, key: str, reason: str) -> None:
        for metric, needs in NEEDS.items():
            if needs == key:
                self.unavailable[metric] = reason
        self.log(f"unavailable: {', '.join(k for k, v in NEEDS.items() if v == key)}: {reason}")

    def _load(self, key: str, folder: str):
        batch = int(self.config.metrics.batch_size)
        if key.startswith("lpips"):
            from nd3d_jax.metrics.lpips import LPIPSMetric

            return LPIPSMetric.from_folder(folder, batch_size=batch)
        from nd3d_jax.metrics.clip_features import CLIPFeatures

        return CLIPFeatures(folder, batch_size=batch)

    @property
    def names(self) -> list[str]:
        taus = [f"f1@{t:g}" for t in self.config.metrics.taus]
        return [*IMAGE_METRICS, *SET_METRICS, "chamfer_l2", "normal_consistency", *taus]

    def available(self, name: str) -> bool:
        return name not in self.unavailable

    # ------------------------------------------------------------------ per object
    def per_object(self, gt_views: np.ndarray, gen_views: np.ndarray, caption: str,
                   gt_mesh: trimesh.Trimesh, gen_mesh: trimesh.Trimesh) -> dict:  # fmt: skip
        """One object's metrics; views (K, H, W, 3) uint8 at the same cameras."""
        out: dict[str, float] = {}
        for net in ("alex", "vgg"):
            if self.available(f"lpips_{net}"):
                d = self._models[f"lpips_{net}"](gt_views, gen_views)
                out[f"lpips_{net}"] = float(np.mean(d))
        if self.available("clip_score"):
            from nd3d_jax.metrics.clip_score import clip_i, clip_score

            clip = self._models["clip"]
            out["clip_score"] = clip_score(clip, gen_views, [caption] * len(gen_views))
            out["clip_i"] = clip_i(clip, gen_views, gt_views)
        from nd3d_jax.metrics.geometry import mesh_metrics

        m = self.config.metrics
        geo = mesh_metrics(gen_mesh, gt_mesh, samples=int(m.geometry_samples),
                           taus=tuple(m.taus), scale=m.geometry_scale)  # fmt: skip
        keep = ("chamfer_l2", "normal_consistency", *(f"f1@{t:g}" for t in m.taus))
        out.update({k: float(geo[k]) for k in keep})
        return out

    # ------------------------------------------------------------------ per set
    def per_set(self, gt_views: np.ndarray, gen_views: np.ndarray) -> dict:
        """CMMD and FID_CLIP of the generated views against the ground-truth ones (N, H, W, 3)."""
        out: dict[str, float] = {}
        if len(gt_views) < 2:
            raise UserError(f"set metrics need >= 2 views per set, got {len(gt_views)}")
        if self.available("cmmd"):
            from nd3d_jax.metrics.cmmd import cmmd

            model = self._models["cmmd_clip"]
            x = model.image_embeddings(gt_views, preprocess="cmmd")
            y = model.image_embeddings(gen_views, preprocess="cmmd")
            out["cmmd"] = float(cmmd(x, y))
        if self.available("fid_clip"):
            from nd3d_jax.metrics.fid import fid_from_features

            model = self._models["clip"]
            x = model.image_embeddings(gt_views, preprocess="fid")
            y = model.image_embeddings(gen_views, preprocess="fid")
            out["fid_clip"] = float(fid_from_features(x, y))
        return out


def mean_of(rows: list[dict], names: list[str]) -> dict:
    """The mean over objects of each metric that every row has."""
    out = {}
    for name in names:
        values = [r[name] for r in rows if name in r]
        if values and len(values) == len(rows):
            out[name] = float(np.mean(values))
    return out
