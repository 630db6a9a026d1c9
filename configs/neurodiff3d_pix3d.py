"""NeuroDiff3D on Pix3D at the paper's sizes.

    python -m nd3d_jax.train --config=configs/neurodiff3d_pix3d.py --workdir=DIR \\
        --config.data.data_dir=TFDS_DIR --config.weights_dir=WEIGHTS

Pretrained folders under `weights_dir` (Hugging Face / diffusers layout, nothing downloads):
`clip-vit-base-patch32/` (CLIPModel + tokenizer), `resnet-18/` (ResNetModel),
`stable-diffusion-v1-5/unet/` and `stable-diffusion-v1-5/vae/`. The T2I-Adapter starts at random:
its input is our 6-channel N + T stack, which no released adapter takes.
Pix3D examples have one photo: it fills grid slot 0 and the other three slots are masked out of
the loss (their conditions are still rendered from the photo's camera).
Variants: `tiny` (random tiny networks, for tests), `random` (paper sizes, no weight folders:
parameter counts and benchmarks).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from neurodiff3d_common import base_config, paper_models, tiny_models  # noqa: E402


def get_config(arg: str | None = None):
    c = base_config()
    c.data.dataset = "pix3d"
    if arg == "tiny":
        tiny_models(c)
    elif arg in (None, "random"):
        paper_models(c, pretrained=arg is None)
    else:
        raise ValueError(f"unknown variant {arg!r} (known: tiny, random)")
    return c
