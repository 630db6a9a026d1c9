"""Tiny random Shap-E pipelines saved by diffusers' `save_pretrained` (the published layout)."""

from __future__ import annotations

import json
import os

import pytest
from hf_fixtures import randomize_norms

from configs import presets

SCHEDULER = dict(
    beta_schedule="exp",
    num_train_timesteps=1024,
    prediction_type="sample",
    use_karras_sigmas=True,
    clip_sample=True,
    clip_sample_range=1.0,
)


def perturb(model, seed: int, scale: float = 0.02) -> None:
    """Every weight non-trivial: diffusers zero-inits the positional embedding and HF sets
    LayerNorms to identity."""
    import torch

    randomize_norms(model, seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def make_shap_e_pipeline(kind: str, seed: int = 0):
    """A random diffusers `ShapEPipeline` (kind "text") or `ShapEImg2ImgPipeline` ("image")."""
    import torch
    from diffusers import (
        HeunDiscreteScheduler,
        PriorTransformer,
        ShapEImg2ImgPipeline,
        ShapEPipeline,
    )
    from diffusers.pipelines.shap_e import ShapERenderer

    torch.manual_seed(seed)
    prior_config = dict(presets.TINY_SHAP_E_PRIOR)
    if kind == "image":
        prior_config["embedding_proj_norm_type"] = "layer"
    prior = PriorTransformer(**prior_config).eval()
    renderer = ShapERenderer(**presets.TINY_SHAP_E_RENDERER).eval()
    perturb(prior, seed)
    perturb(renderer, seed + 10, scale=0.3)  # a field with a surface inside the unit cube
    scheduler = HeunDiscreteScheduler(**SCHEDULER)
    if kind == "text":
        from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

        from nd3d_jax.weights.tiny_tokenizer import write_tiny_tokenizer

        encoder = CLIPTextModelWithProjection(CLIPTextConfig(**presets.TINY_SHAP_E_TEXT)).eval()
        perturb(encoder, seed + 20)
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            write_tiny_tokenizer(tmp)
            tokenizer = CLIPTokenizer.from_pretrained(
                tmp, model_max_length=presets.TINY_SHAP_E_TEXT["max_position_embeddings"]
            )
        return ShapEPipeline(prior, encoder, tokenizer, scheduler, renderer)
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    encoder = CLIPVisionModel(CLIPVisionConfig(**presets.TINY_SHAP_E_VISION)).eval()
    perturb(encoder, seed + 20)
    processor = CLIPImageProcessor(**presets.TINY_SHAP_E_IMAGE_PROCESSOR)
    return ShapEImg2ImgPipeline(prior, encoder, processor, scheduler, renderer)


def save_shap_e(folder, kind: str, seed: int = 0):
    """Saves the tiny pipeline into `folder`; returns the torch pipeline."""
    pipe = make_shap_e_pipeline(kind, seed)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return pipe


@pytest.fixture(scope="session")
def tiny_shap_e(tmp_path_factory):
    """{"text": (folder, pipeline), "image": (folder, pipeline)}."""
    out = {}
    for kind in ("text", "image"):
        folder = tmp_path_factory.mktemp(f"shap_e_{kind}")
        out[kind] = (str(folder), save_shap_e(folder, kind))
        with open(os.path.join(folder, "model_index.json")) as f:
            assert json.load(f)["_class_name"] in ("ShapEPipeline", "ShapEImg2ImgPipeline")
    return out
