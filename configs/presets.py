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
