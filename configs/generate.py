"""Generation: image + text -> textured 3D object (`python -m nd3d_jax.generate`).

    python -m nd3d_jax.generate --config=configs/generate.py --params=WORKDIR \\
        --image=chair.png --text="a wooden chair" --out=out/chair

The model (sizes, schedule, tokenizer, parameters) comes from the trainer WORKDIR; this config
holds everything else: the Shap-E prior (P1), the refinement (P2), the K view cameras, the
sampler, texture baking (M4) and the outputs.

Arguments (`:variant=...`):
  paper (default)  the paper's numbers: Shap-E from `weights/shap-e-img2img` (image) and
                   `weights/shap-e` (text), the faithful refinement (eq 6 on the tet grid,
                   docs/design.md), 50 DDIM steps, 1024-texel textures.
  demo             the `make demo` model on CPU: the faithful refinement in half the steps
                   (100), its training sampler (25 steps,
                   guidance 2), 512-texel textures. Shapes come from --coarse_mesh.
  tiny             seconds on a CPU, for tests.

Every variant refines with the faithful recipe; `--config.refine.recipe=paper` runs the
printed one (2048 key points, 50 AdamW steps at lr 1e-4, a 1024-wide MLP from a sphere), which
loses thin parts (docs/design.md has the measurements).
"""

from __future__ import annotations

import dataclasses
import math

import ml_collections

from nd3d_jax.config_cli import parse_arg
from nd3d_jax.geometry.refine import RefineSettings
from nd3d_jax.texture import TextureSettings

# The training renders' camera (OmniObject3D's Blender script, synthetic data alike): a 50 mm
# lens on a 36 mm sensor at distance ~4 from an object whose largest coordinate is 0.99, i.e.
# ~2.0 in the unit-cube frame (longest side 1) for an object centred on its origin (more for
# one standing on it: the demo variant).
TRAIN_FOV = 2 * math.atan(18.0 / 50.0)
TRAIN_DISTANCE = 2.0


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a = parse_arg(arg, variant=("paper", "demo", "tiny"))
    c = ml_collections.ConfigDict()
    c.command = "generate"
    c.seed = 0  # each object's key: fold_in(key(seed), its line number)
    c.compilation_cache = ""  # XLA cache: DIR, "off", "" (nd3d_jax.compile_cache)
    c.params = ""  # the trainer WORKDIR (params_final/ or checkpoints/, config.json); --params
    c.batch_size = 8  # objects per multi-view sampling program (rounded up to the devices)
    # threads that bake and write one batch while the device samples the next (0: none)
    c.host_workers = 2
    c.mesh = ml_collections.ConfigDict(dict(num_devices=0))  # 0: every local device

    # the input photo: RGBA is cropped to its alpha and framed like the training renders
    c.image = ml_collections.ConfigDict(dict(size=512, object_fraction=0.7))  # paper: 512 x 512

    # P1: Shap-E (diffusers folders); an object with a coarse mesh skips it
    c.prior = ml_collections.ConfigDict(
        dict(
            image_weights="weights/shap-e-img2img",
            text_weights="weights/shap-e",
            num_steps=64,  # Shap-E's Karras/Heun steps
            guidance=0.0,  # 0: Shap-E's own (image 3, text 15)
            resolution=128,  # coarse field grid
            grid="exact",
            dtype="float32",
            f_tex="hidden",
            variant="",  # the folders' weight variant, e.g. "fp16" (empty: plain, else the only)
        )
    )

    # P2: the faithful recipe (refine.faithful) by default, `refine.recipe=paper` the printed
    # one (the top-level numbers); the tet grid covers the unit-cube frame with a margin
    c.refine = ml_collections.ConfigDict(dataclasses.asdict(RefineSettings()))
    c.refine.bound = 0.7

    # the K view cameras (a ring, +Y up, the first facing the front, +Z), as in training
    c.cameras = ml_collections.ConfigDict(
        dict(distance=TRAIN_DISTANCE, fov=TRAIN_FOV, elevation_deg=20.0, azimuth_deg=0.0)
    )

    # M3 sampling: DDIM (or "ddpm", eq 14), classifier-free guidance
    c.sample = ml_collections.ConfigDict(
        dict(num_steps=50, guidance=7.5, eta=0.0, clip=0.0, sampler="ddim")
    )

    # M4: texture baking
    c.texture = ml_collections.ConfigDict(dataclasses.asdict(TextureSettings()))

    # the preview sheet (on/off, cells in px); turntable frames: 0 (no GIF) or a multiple of 8;
    # mesh.glb, mesh.obj, views.png and summary.json are always written
    c.output = ml_collections.ConfigDict(dict(preview=True, preview_size=256, turntable_frames=24))

    if a.variant in ("demo", "tiny"):
        c.params = "out/demo"
        c.prior.image_weights = c.prior.text_weights = ""
        c.refine.faithful.steps = 100
        c.sample.update(num_steps=25, guidance=2.0, clip=1.0)  # configs/demo.py's sampler
        # the synthetic objects stand on their base, so the renders' cameras sit farther from
        # the box centre: median 3.57 over the demo data's view cameras (10-90%: 2.0-4.4)
        c.cameras.distance = 3.5
        c.texture.size = 512
        c.output.update(preview_size=160, turntable_frames=24)
    if a.variant == "tiny":
        c.params = ""
        c.refine.hidden_dim, c.refine.out_hidden_dim = 64, 32
        c.refine.num_key_points, c.refine.num_uniform_points = 512, 512
        c.refine.steps = 30
        c.refine.faithful.update(hidden_dim=32, out_hidden_dim=16, steps=20, pool_points=4096)
        c.refine.resolution = 24
        c.sample.num_steps = 2
        c.prior.num_steps, c.prior.resolution = 4, 32
        c.texture.size = 128
        c.texture.max_faces = 2000
        c.output.update(preview_size=64, turntable_frames=8)
    return c
