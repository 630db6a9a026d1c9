"""Evaluation: the paper's metrics on the test split (`python -m nd3d_jax.evaluate`) and the
paper's tables (`python -m nd3d_jax.reproduce`).

    python -m nd3d_jax.evaluate --config=configs/evaluate.py --params=WORKDIR \\
        --data_dir=TFDS_DIR --split=test --out=out/eval

Everything `configs/generate.py` holds (same variants: paper, demo, tiny) when objects are
generated here (`--params`), plus:
  data     the prepared data set read for ground truth (dataset, config_name, split, count)
  views    the K cameras both meshes are rendered at for the image metrics (a ring, +Y up)
  metrics  the metric models' folders (relative to `weights_dir`, or absolute) and settings;
           a missing folder makes that metric "unavailable" (the others still run)
  reproduce  the prepared folder of each data set for Table 2 (empty: not run)
  coarse   where generated objects get their coarse shape: "prior" (Shap-E, the paper) or
           "ground_truth" (the test mesh, as `make demo` does; geometry then measures only
           refinement)
"""

from __future__ import annotations

import ml_collections

from configs import generate
from nd3d_jax.config_cli import parse_arg

# Table 2 (Section 4.3): NeuroDiff3D and the best baseline of each column, as printed.
PAPER_TABLE2 = {
    "omniobject3d": {"cmmd": 2.985, "fid_clip": 27.354, "clip_score": 0.899},
    "pix3d": {"cmmd": 3.136, "fid_clip": 28.832, "clip_score": 0.898},
}
PAPER_BASELINES = {  # the rows: Shap-E (CMMD, CLIP-score), DreamFusion (FID_CLIP)
    "omniobject3d": {"Shap-E": {"cmmd": 4.115, "clip_score": 0.634},
                     "DreamFusion": {"fid_clip": 31.651}},
    "pix3d": {"Shap-E": {"cmmd": 4.252, "clip_score": 0.741},
              "DreamFusion": {"fid_clip": 32.702}},
}  # fmt: skip
# Table 3 (Section 4.4): parameters, FLOPs, frames per second, seconds per object.
PAPER_TABLE3 = {"params_m": 475.9, "gflops": 510.4, "fps": 32.5, "seconds": 7.0}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a = parse_arg(arg, variant=("paper", "demo", "tiny"))
    c = generate.get_config(f"variant={a.variant}")
    c.command = "evaluate"
    c.weights_dir = ""  # the folder the metric models' relative paths are under
    c.coarse = "prior" if a.variant == "paper" else "ground_truth"
    c.data = ml_collections.ConfigDict(
        dict(data_dir="", dataset="omniobject3d", config_name="default", split="test", count=0)
    )  # count 0: every shape of the split
    # both meshes at the same K cameras, unlit over white (the generation ring's lens)
    c.views = ml_collections.ConfigDict(
        dict(count=8, size=256, distance=c.cameras.distance, fov=c.cameras.fov,
             elevation_deg=20.0, azimuth_deg=0.0)
    )  # fmt: skip
    c.metrics = ml_collections.ConfigDict(
        dict(
            # CMMD (Jayasumana et al. 2024): CLIP ViT-L/14 at 336 px, sigma 10, x1000
            cmmd_clip="weights/clip-vit-large-patch14-336",
            # FID_CLIP (clean-fid's clip_vit_b_32) and CLIP-score / CLIP-I
            clip="weights/clip-vit-base-patch32",
            lpips_alex="weights/lpips-alex",
            lpips_vgg="weights/lpips-vgg",
            # Mesh R-CNN's Pix3D protocol: 10k samples, longest GT box edge 10
            geometry_samples=10000,
            taus=(0.1, 0.3, 0.5),
            geometry_scale="mesh_rcnn",
            batch_size=16,  # images per jitted metric call
        )
    )
    # `reproduce`: Table 2 for each data set given a prepared folder; Table 3's timings
    c.reproduce = ml_collections.ConfigDict(
        dict(omniobject3d="", pix3d="", repeats=5)  # repeats: timed runs (median)
    )
    if a.variant == "demo":
        c.data.update(data_dir="out/demo/data/tfds", config_name="tiny", count=4)
        c.reproduce.omniobject3d = "out/demo/data/tfds"
        c.views.update(count=4, size=128)
    if a.variant == "tiny":
        c.data.update(config_name="tiny", count=2)
        c.views.update(count=4, size=64)
        c.metrics.update(geometry_samples=2000, batch_size=8)
        c.reproduce.repeats = 1
    return c
