"""Geometry refinement demo: refine a noisy analytic shape (P2, eq 4-7).

    python -m nd3d_jax.refine_demo --config=configs/refine_demo.py --workdir=out/refine_demo
    python -m nd3d_jax.refine_demo --config=configs/refine_demo.py:tiny \\
        --config.shape.kind=torus --workdir=out/torus

Argument `variant`: paper (default) the paper's SDF MLP (1024/256 wide, 2048 key points,
50 AdamW steps) on a 64^3 tet grid; tiny a narrow MLP on a 32^3 grid for tests and quick looks.
"""

import dataclasses

import ml_collections

from nd3d_jax.config_cli import parse_arg
from nd3d_jax.geometry.refine import RefineSettings


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = parse_arg(arg, variant=("paper", "tiny")).variant
    config = ml_collections.ConfigDict()
    config.command = "refine_demo"  # the command this config is for (checked by cli.run)
    config.seed = 0
    config.compilation_cache = ""  # XLA cache: DIR, "off", "" (nd3d_jax.compile_cache)

    # The coarse prior stand-in: an analytic shape with smooth pseudo-random bumps.
    config.shape = ml_collections.ConfigDict()
    config.shape.kind = "sphere"  # sphere | torus | box
    config.shape.radius = 0.6  # sphere
    config.shape.major = 0.55  # torus
    config.shape.minor = 0.27
    config.shape.half_extents = (0.5, 0.4, 0.3)  # box
    config.shape.noise = 0.04  # bump amplitude, SDF units
    config.shape.noise_frequency = 9.0
    config.coarse_resolution = 64  # tet grid of the coarse mesh

    # the paper's printed recipe (the smoothing it shows is what generation must not do to thin
    # parts: configs/generate.py uses the faithful one)
    config.refine = ml_collections.ConfigDict(dataclasses.asdict(RefineSettings(recipe="paper")))
    config.eval_samples = 20000  # surface samples per mesh for the Chamfer distance
    config.preview_size = 256  # pixels per view of preview.png

    if variant == "tiny":
        config.coarse_resolution = 32
        config.refine.hidden_dim = 128
        config.refine.out_hidden_dim = 64
        config.refine.num_key_points = 1024
        config.refine.num_uniform_points = 1024
        config.refine.resolution = 32
        config.eval_samples = 5000
        config.preview_size = 96
    return config
