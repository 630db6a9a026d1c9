"""The one place for model sizes: tiny and paper CLIP, ResNet, UNet, T2I-Adapter and VAE.

Each preset is a Hugging Face / diffusers config dict: `CLIPConfig(**TINY_CLIP)`,
`UNet2DConditionModel(**TINY_UNET)`, our `UNetConfig.from_hf(TINY_UNET)`, or a config's
`model.unet.config`. Configs, tests (`tests/hf_fixtures.py`) and benchmarks use these; a test that
needs another size derives it with `derive(PRESET, key=value)` and says why.
"""

from __future__ import annotations

import copy

from nd3d_jax.weights import tiny_tokenizer


def derive(preset: dict, **changes) -> dict:
    """A deep copy of `preset` with `changes`; a dict value updates the nested dict."""
    out = copy.deepcopy(preset)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = derive(out[key], **value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# ---------------------------------------------------------------------------------- tiny
# Random tiny networks that train on a laptop CPU in seconds (tests, the demo, `variant=tiny`).
# The tokenizer is `nd3d_jax.weights.tiny_tokenizer` (its vocabulary size and special ids).
TINY_CLIP = dict(
    text_config=dict(vocab_size=tiny_tokenizer.VOCAB_SIZE, hidden_size=32, intermediate_size=64,
                     num_hidden_layers=4, num_attention_heads=4, max_position_embeddings=77,
                     eos_token_id=tiny_tokenizer.EOS, bos_token_id=tiny_tokenizer.BOS,
                     pad_token_id=tiny_tokenizer.EOS),
    vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, image_size=32, patch_size=8),
    projection_dim=32,
)  # fmt: skip
TINY_RESNET = dict(
    embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1], layer_type="basic"
)
# ResNet-18's layer structure (2 blocks a stage, so "the first 10 layers" are the stem and the
# first two stages) at tiny widths
TINY_RESNET18 = derive(TINY_RESNET, depths=[2, 2, 2, 2])
TINY_UNET = dict(
    in_channels=4, out_channels=4, block_out_channels=(16, 32),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
    attention_head_dim=2, cross_attention_dim=32, norm_num_groups=4,
)  # fmt: skip
# condition input: the 6-channel N + T stack (eq 13); one level per UNet level
TINY_ADAPTER = dict(in_channels=6, channels=(16, 32), num_res_blocks=1, downscale_factor=2)
TINY_VAE = dict(
    block_out_channels=(16, 32), layers_per_block=1, latent_channels=4, norm_num_groups=8,
    down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
)  # fmt: skip

# ---------------------------------------------------------------------------------- paper
# ViT-B/32 CLIP, ResNet-18, the Stable Diffusion 1.5 UNet and VAE, a full T2I-Adapter.
CLIP_B32 = dict(text_config={}, vision_config={}, projection_dim=512)  # transformers' defaults
RESNET_18 = dict(embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2],
                 layer_type="basic")  # fmt: skip
SD15_UNET = dict(cross_attention_dim=768)  # otherwise diffusers' (and UNetConfig's) defaults
SD15_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                scaling_factor=0.18215)  # fmt: skip
ADAPTER = dict(in_channels=6, channels=(320, 640, 1280, 1280), num_res_blocks=2,
               downscale_factor=8)  # fmt: skip

# Folders under `config.weights_dir` holding the pretrained paper models (Hugging Face layout).
PAPER_WEIGHTS = dict(
    clip="clip-vit-base-patch32",
    resnet="resnet-18",
    unet="stable-diffusion-v1-5/unet",
    vae="stable-diffusion-v1-5/vae",
)

# ------------------------------------------------------------------------------- Shap-E (P1)
# Tiny pipelines in diffusers' layout (sizes like diffusers' own shap_e test components), every
# width distinct so a transposed weight fails the parity tests. 4 projected layers of 8 rows:
# 32 latent tokens of width 16.
TINY_SHAP_E_PRIOR = dict(
    num_attention_heads=2, attention_head_dim=16, embedding_dim=16, num_embeddings=32,
    embedding_proj_dim=24, time_embed_dim=64, num_layers=2, clip_embed_dim=32,
    additional_embeddings=0, time_embed_act_fn="gelu", norm_in_type="layer",
    encoder_hid_proj_type=None, added_emb_type=None,
)  # fmt: skip
TINY_SHAP_E_RENDERER = dict(
    param_names=tuple(f"nerstf.mlp.{i}.weight" for i in range(4)),
    param_shapes=((8, 93), (8, 8), (8, 8), (8, 8)), d_latent=16, d_hidden=8, n_output=12,
    background=(255.0, 255.0, 255.0),
)  # fmt: skip
TINY_SHAP_E_TEXT = dict(
    vocab_size=tiny_tokenizer.VOCAB_SIZE, hidden_size=20, intermediate_size=36,
    num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=16, projection_dim=24,
    eos_token_id=tiny_tokenizer.EOS, bos_token_id=tiny_tokenizer.BOS, pad_token_id=1,
)  # fmt: skip
TINY_SHAP_E_VISION = dict(
    hidden_size=24, intermediate_size=36, num_hidden_layers=2, num_attention_heads=4,
    image_size=32, patch_size=8, projection_dim=20,
)  # fmt: skip
TINY_SHAP_E_IMAGE_PROCESSOR = dict(
    crop_size=32, size=32, resample=3, do_center_crop=True, do_normalize=True,
    image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
)  # fmt: skip
# `openai/shap-e` and `openai/shap-e-img2img`, for random-weight runs at the real sizes.
SHAP_E_PRIOR = dict(
    num_attention_heads=16, attention_head_dim=64, embedding_dim=1024, num_embeddings=1024,
    embedding_proj_dim=768, time_embed_dim=4096, num_layers=24, clip_embed_dim=2048,
    additional_embeddings=0, time_embed_act_fn="gelu", norm_in_type="layer",
    encoder_hid_proj_type=None, added_emb_type=None,
)  # fmt: skip
SHAP_E_IMG2IMG_PRIOR = derive(
    SHAP_E_PRIOR, embedding_proj_dim=1024, embedding_proj_norm_type="layer"
)
SHAP_E_RENDERER = dict()  # diffusers' defaults: d_latent 1024, MLP 93 -> 256 x 6 -> 12
SHAP_E_VISION = dict(  # the image tower of openai/shap-e-img2img: CLIP ViT-L/14 at 224 px
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
    image_size=224, patch_size=14,
)  # fmt: skip
SHAP_E_IMAGE_PROCESSOR = derive(TINY_SHAP_E_IMAGE_PROCESSOR, crop_size=224, size=224)
# the HeunDiscreteScheduler config both published pipelines ship
SHAP_E_SCHEDULER = dict(
    beta_schedule="exp", num_train_timesteps=1024, prediction_type="sample",
    use_karras_sigmas=True, clip_sample=True, clip_sample_range=1.0,
)  # fmt: skip
