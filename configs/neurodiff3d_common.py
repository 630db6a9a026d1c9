"""Shared pieces of the `neurodiff3d` stage configs (imported by the config files beside it)."""

from __future__ import annotations

import os

import ml_collections


def sub_model(path: str = "", **config) -> ml_collections.ConfigDict:
    """A sub-model: a local Hugging Face / diffusers folder, or an inline config (random init)."""
    return ml_collections.ConfigDict({"path": path, "config": config})


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.stage = "neurodiff3d"
    c.seed = 0
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
    c.model.grid_rows = 2  # DESIGN.md: K = 4 views in a 2 x 2 grid
    c.model.grid_cols = 2
    c.model.tile_size = 256  # 2 x 256 = the paper's 512 x 512
    c.model.text_length = 77
    c.model.semantic_length = 64  # eq 9: maximum length 64
    c.model.texture_size = 256  # f_tex: "256x256x3 texture map"
    c.model.num_sampled_faces = 512  # f_struc: "totaling 512 sampled faces"
    c.model.texture_noise_scale = 0.1  # eq 8's eps scale (DESIGN: a config value)
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
            total_steps=50_000,
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
            total_steps=50_000,
            log_every=50,
            checkpoint_every=1000,
            keep_checkpoints=3,
            preview_every=2000,
            preview_examples=2,
            preview_steps=50,
            guidance=7.5,
            clip_sample=0.0,  # > 0: clip predicted x_0 to [-v, v] when sampling (pixel space)
        )
    )
    return c


def tiny_models(c: ml_collections.ConfigDict, pixel_space: bool = True) -> None:
    """Random tiny networks that train on a laptop CPU (tests and the demo)."""
    m = c.model
    m.clip = sub_model(
        text_config=dict(vocab_size=520, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=4, num_attention_heads=4, eos_token_id=519,
                         bos_token_id=518, pad_token_id=519),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, image_size=32, patch_size=8),
        projection_dim=32,
    )  # fmt: skip
    m.resnet = sub_model(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1],
                         layer_type="basic")  # fmt: skip
    channels = 3 if pixel_space else 4
    m.unet = sub_model(
        in_channels=channels, out_channels=channels, block_out_channels=[16, 32],
        down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], layers_per_block=1,
        attention_head_dim=2, cross_attention_dim=32, norm_num_groups=4,
    )  # fmt: skip
    m.adapter = sub_model(in_channels=6, channels=[16, 32], num_res_blocks=1, downscale_factor=2)
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


# Paper sizes: ViT-B/32 CLIP, ResNet-18, the SD 1.5 UNet and VAE, a full T2I-Adapter.
CLIP_B32 = dict(text_config={}, vision_config={}, projection_dim=512)  # transformers' defaults
RESNET_18 = dict(embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2],
                 layer_type="basic")  # fmt: skip
SD15_UNET = dict(cross_attention_dim=768)  # UNetConfig's defaults are SD 1.5
SD15_VAE = dict(block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=4,
                scaling_factor=0.18215)  # fmt: skip
ADAPTER = dict(in_channels=6, channels=[320, 640, 1280, 1280], num_res_blocks=2, downscale_factor=8)


def paper_models(c: ml_collections.ConfigDict, pretrained: bool = True) -> None:
    """The paper configuration (512 x 512 inputs, K = 4 views of 256 px, latent 64 x 64)."""
    c.weights_dir = "weights"
    w = c.weights_dir
    m = c.model
    if pretrained:
        m.clip = sub_model(os.path.join(w, "clip-vit-base-patch32"))
        m.resnet = sub_model(os.path.join(w, "resnet-18"))
        m.unet = sub_model(os.path.join(w, "stable-diffusion-v1-5", "unet"))
        m.vae = sub_model(os.path.join(w, "stable-diffusion-v1-5", "vae"))
    else:
        m.clip, m.resnet = sub_model(**CLIP_B32), sub_model(**RESNET_18)
        m.unet, m.vae = sub_model(**SD15_UNET), sub_model(**SD15_VAE)
    m.vae.use = True
    m.adapter = sub_model(**ADAPTER)
    m.dtype = "bfloat16"
    m.remat = True
    c.data.data_dir = "data/tfds"
