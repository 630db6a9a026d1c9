"""NeuroDiff3D at the paper's sizes, on OmniObject3D or Pix3D.

    python -m nd3d_jax.train --config=configs/neurodiff3d.py:dataset=pix3d --workdir=DIR \\
        --config.data.data_dir=TFDS_DIR --config.weights_dir=WEIGHTS

Arguments (`:key=value,...`):
  dataset  omniobject3d (default) | pix3d. Pix3D examples have one photo: it fills grid slot 0
           and the other three slots are masked out of the loss.
  variant  paper (default): the pretrained models from folders under `weights_dir`
           (Hugging Face / diffusers layout, nothing downloads): `clip-vit-base-patch32/`
           (CLIPModel + tokenizer), `resnet-18/` (ResNetModel), `stable-diffusion-v1-5/unet/`
           and `.../vae/`; the T2I-Adapter starts at random (its input is our 6-channel N + T
           stack, which no released adapter takes).
           random: the paper sizes without weight folders (parameter counts, benchmarks).
           tiny: tiny random networks and 20 steps, for tests (seconds on a CPU).
List every key with `--config=configs/neurodiff3d.py --print_config`.
"""

from __future__ import annotations

import ml_collections

from configs import presets
from nd3d_jax.config_cli import parse_arg


def sub_model(path: str = "", **config) -> ml_collections.ConfigDict:
    """A sub-model: a Hugging Face / diffusers folder (relative to `weights_dir`, or absolute;
    resolved when used; a pipeline folder stands for its sub-folder of this model) or an inline
    config (random init). `variant`: the folder's weight variant, e.g. "fp16" (empty: the plain
    weights, else the only variant there is)."""
    return ml_collections.ConfigDict({"path": path, "variant": "", "config": config})


def base_config() -> ml_collections.ConfigDict:
    """Every key of the `neurodiff3d` stage, at the paper's values where they are sizes."""
    c = ml_collections.ConfigDict()
    c.command = "train"  # the command this config is for (checked by cli.run)
    c.stage = "neurodiff3d"
    c.seed = 0
    c.compilation_cache = ""  # XLA cache: DIR, "off", "" (nd3d_jax.compile_cache)
    c.weights_dir = ""  # the folder the sub-models' relative paths are under
    # multi-process: jax.distributed.initialize() (auto-detected cluster, or the address given)
    c.distributed = ml_collections.ConfigDict(
        dict(enabled=False, coordinator_address="", num_processes=0, process_id=-1,
             cpu_collectives="gloo")
    )  # fmt: skip

    c.data = ml_collections.ConfigDict()
    c.data.dataset = "omniobject3d"  # or "pix3d"
    c.data.data_dir = ""  # the tfds folder written by `python -m data_pipelines.prepare`
    c.data.config_name = "default"
    c.data.split = "train"
    c.data.batch_size = 8  # global, over all processes
    c.data.num_threads = 8
    c.data.max_faces = 5120  # the prepared condition meshes' face budget
    c.data.synthetic_objects = 0  # > 0: generate a synthetic data set of this size on first use
    c.data.cache_dir = ""  # where synthetic data goes (default: WORKDIR/data)

    c.model = ml_collections.ConfigDict()
    c.model.clip = sub_model()
    c.model.resnet = sub_model()
    c.model.unet = sub_model()
    c.model.adapter = sub_model()
    c.model.vae = sub_model()
    c.model.vae.use = True
    c.model.tokenizer_path = ""  # default: the CLIP folder
    c.model.pixel_factor = 8  # latent factor when model.vae.use is False
    c.model.grid_rows = 2  # DESIGN: K = 4 views in a 2 x 2 grid
    c.model.grid_cols = 2
    c.model.tile_size = 256  # 2 x 256 = the paper's 512 x 512
    c.model.text_length = 77
    c.model.semantic_length = 64  # eq 9: maximum length 64
    c.model.texture_size = 256  # f_tex: "256x256x3 texture map"
    c.model.num_sampled_faces = 512  # f_struc: "totaling 512 sampled faces"
    c.model.texture_noise_scale = 0.1  # eq 8's eps scale (the one value of it)
    c.model.fusion_weights = (0.5, 0.3, 0.2)  # eq 12
    c.model.cond_dropout = 0.1  # classifier-free guidance
    c.model.dtype = "float32"
    c.model.remat = False
    # a trainable linear map f_fusion (512) -> the UNet's cross-attention width when they differ
    c.model.context_projection = True
    c.model.frozen = ()  # extra frozen groups, e.g. ("unet",) or ("conditioning.mesh_conv",)

    c.schedule = ml_collections.ConfigDict(
        dict(
            num_train_timesteps=1000,
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            prediction_type="epsilon",
        )
    )

    c.optim = ml_collections.ConfigDict(
        dict(
            lr=1e-4,
            warmup_steps=500,
            end_lr_fraction=0.01,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            weight_decay=0.01,
            clip_norm=1.0,
            grad_accum_steps=1,
            ema_decay=0.9999,
        )
    )

    # data x fsdp devices (-1: the rest); num_devices 0 = all; rules () = sharding.DEFAULT_RULES
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, num_devices=0, rules=()))

    c.train = ml_collections.ConfigDict(
        dict(
            total_steps=50_000,  # the one step count (the learning-rate schedule's too)
            log_every=50,
            checkpoint_every=1000,
            keep_checkpoints=3,
            preview_every=2000,
            preview_examples=2,
        )
    )
    # sampling for previews: DDIM (or "ddpm", eq 14); clip > 0 clips predicted x_0 to
    # [-clip, clip]; generation has its own block (configs/generate.py)
    c.sample = ml_collections.ConfigDict(
        dict(num_steps=50, guidance=7.5, eta=0.0, clip=0.0, sampler="ddim")
    )
    return c


def tiny_models(c: ml_collections.ConfigDict) -> None:
    """Random tiny networks in pixel space (no VAE) that train on a laptop CPU."""
    m = c.model
    m.clip = sub_model(**presets.TINY_CLIP)
    m.resnet = sub_model(**presets.TINY_RESNET)
    m.unet = sub_model(**presets.derive(presets.TINY_UNET, in_channels=3, out_channels=3))
    m.adapter = sub_model(**presets.TINY_ADAPTER)
    m.vae = sub_model()
    m.vae.use = False
    m.pixel_factor = 2
    m.tile_size = 32
    m.text_length = 16
    m.semantic_length = 16
    m.texture_size = 32
    m.num_sampled_faces = 128
    c.data.config_name = "tiny"
    c.data.max_faces = 512
    c.data.num_threads = 2


def paper_models(c: ml_collections.ConfigDict, pretrained: bool = True) -> None:
    """The paper configuration (512 x 512 inputs, K = 4 views of 256 px, latent 64 x 64)."""
    m = c.model
    if pretrained:
        c.weights_dir = "weights"
        for name, folder in presets.PAPER_WEIGHTS.items():
            m[name] = sub_model(folder)  # relative to weights_dir, resolved when used
    else:
        m.clip, m.resnet = sub_model(**presets.CLIP_B32), sub_model(**presets.RESNET_18)
        m.unet, m.vae = sub_model(**presets.SD15_UNET), sub_model(**presets.SD15_VAE)
    m.vae.use = True
    m.adapter = sub_model(**presets.ADAPTER)
    m.dtype = "bfloat16"
    m.remat = True
    c.data.data_dir = "data/tfds"


def tiny_run(c: ml_collections.ConfigDict) -> None:
    """A run of seconds: a few steps, batch 8 (one example per simulated test device)."""
    c.data.batch_size = 8
    c.optim.warmup_steps = 2
    c.train.total_steps = 20
    c.train.log_every = 5
    c.train.checkpoint_every = 10
    c.train.preview_every = 0
    c.train.preview_examples = 2
    c.sample.num_steps = 2


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a = parse_arg(arg, dataset=("omniobject3d", "pix3d"), variant=("paper", "random", "tiny"))
    c = base_config()
    c.data.dataset = a.dataset
    if a.variant == "tiny":
        tiny_models(c)
        tiny_run(c)
    else:
        paper_models(c, pretrained=a.variant == "paper")
    return c
