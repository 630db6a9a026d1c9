"""Tiny random Hugging Face checkpoints saved with `save_pretrained`, for the importer tests."""

from __future__ import annotations

import pytest

TINY_CLIP = dict(
    text_config=dict(
        vocab_size=520,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=5,
        num_attention_heads=4,
        max_position_embeddings=77,
        eos_token_id=519,
        bos_token_id=518,
        pad_token_id=519,
    ),
    vision_config=dict(
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
    ),
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
    """A byte-level BPE CLIP tokenizer with 520 tokens (518 = start, 519 = end of text)."""
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


TINY_RESNET = dict(
    embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[2, 2, 2, 2], layer_type="basic"
)


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
