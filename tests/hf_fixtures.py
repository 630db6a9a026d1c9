"""Tiny random Hugging Face checkpoints saved with `save_pretrained`, for the importer tests."""

from __future__ import annotations

import pytest

from configs import presets

# every width distinct (a transposed or swapped weight fails the parity tests) and one text
# layer more than the semantic encoder reuses
TINY_CLIP = presets.derive(
    presets.TINY_CLIP,
    text_config=dict(num_hidden_layers=5),
    vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=3),
    projection_dim=24,
)


def randomize_norms(model, seed: int = 0) -> None:
    """HF inits LayerNorm/BatchNorm to identity; perturb them so the comparison sees them."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "layrnorm" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=g))


def save_tiny_tokenizer(folder) -> None:
    """The tiny CLIP tokenizer (`nd3d_jax.weights.tiny_tokenizer`: its VOCAB_SIZE, BOS, EOS)."""
    from nd3d_jax.weights.tiny_tokenizer import write_tiny_tokenizer

    write_tiny_tokenizer(folder)


def make_clip_folder(folder, config: dict = TINY_CLIP, seed: int = 0, tokenizer: bool = True):
    """Saves a random transformers CLIPModel; returns the torch model (eval mode)."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(**config)).eval()
    randomize_norms(model, seed)
    model.save_pretrained(str(folder))
    if tokenizer:
        save_tiny_tokenizer(folder)
    return model


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """(folder, torch CLIPModel) of the tiny random CLIP with its tokenizer."""
    folder = tmp_path_factory.mktemp("tiny_clip")
    return folder, make_clip_folder(folder)


TINY_RESNET = presets.TINY_RESNET18


def make_resnet_folder(folder, config: dict = TINY_RESNET, seed: int = 0):
    """Saves a random transformers ResNetModel (BatchNorm made non-trivial); returns it."""
    import torch
    from transformers import ResNetConfig, ResNetModel

    torch.manual_seed(seed)
    model = ResNetModel(ResNetConfig(**config)).eval()
    randomize_norms(model, seed)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0.0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
    model.save_pretrained(str(folder))
    return model


@pytest.fixture(scope="session")
def tiny_resnet(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_resnet")
    return folder, make_resnet_folder(folder)


def make_diffusers_folder(folder, cls_name: str, config: dict, seed: int = 0):
    """Saves a random diffusers model (`UNet2DConditionModel`, `AutoencoderKL`, `T2IAdapter`)
    with every weight perturbed (diffusers zero-inits some convs); returns it (eval mode)."""
    import diffusers
    import torch

    torch.manual_seed(seed)
    model = getattr(diffusers, cls_name)(**config).eval()
    randomize_norms(model, seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model.save_pretrained(str(folder))
    return model
