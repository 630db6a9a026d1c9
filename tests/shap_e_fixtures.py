"""Tiny random Shap-E pipelines saved by diffusers' `save_pretrained` (the published layout)."""

from __future__ import annotations

import json
import os

import pytest
from hf_fixtures import randomize_norms

from configs import presets


def perturb(model, seed: int, scale: float = 0.02) -> None:
    """Every weight non-trivial: diffusers zero-inits the positional embedding and HF sets
    LayerNorms to identity."""
    import torch

    randomize_norms(model, seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def _hidden(renderer, points):
    """The STF MLP's last hidden activation at `points` (N, 3) for the all-zero latent (the
    projected weights are then the LayerNorm and projection biases)."""
    import torch
    from diffusers.pipelines.shap_e.renderer import encode_position

    c = renderer.config
    projected = renderer.params_proj(torch.zeros(1, sum(s[0] for s in c.param_shapes), c.d_latent))
    h = encode_position(points)
    for i, layer in enumerate(renderer.mlp.mlp[:-1]):
        weight = projected.get(f"nerstf.mlp.{i}.weight", layer.weight[None])[0]
        h = torch.nn.functional.silu(h @ weight[:, : h.shape[-1]].T + layer.bias)
    return h


def smooth_field(renderer, radius: float = 0.5, seed: int = 0) -> None:
    """Turns the random renderer's SDF into a smooth closed blob of about `radius` around the
    origin, with latent-dependent bumps and colours that vary over it (a few thousand faces at
    resolution 32); no weight is zeroed.

    Random weights on NeRF encodings up to 2^14 x make a noise field whose surface fills the
    cube. Here the hidden units split in two: "shape" units 0..w-2 carry a radial term and
    unit w-1 a linear ramp in x. (1) The latent-made first layer reads frequency 2^k at 0.25^k,
    all its rows get 3 sum_d cos(2 x_d) (LayerNorm bias of its cos(2 x) columns) and its last row
    the ramp (projection bias, which ChannelsProj adds after the LayerNorm). (2) The latent-made
    layers 1-3 (projection bias) and the renderer's layers 4-5 average the shape units into
    each shape unit and pass the ramp unit on, their random parts scaled down. (3) The SDF head
    (Shap-E: tanh, positive inside) reads the shape units, 1 at the centre and 0 at `radius` for
    the zero latent; (4) the colour head reads the ramp, its logits centred on that sphere.
    """
    import torch

    k = torch.arange(15, dtype=torch.float32)
    column = torch.ones(93)  # layout [x (3), sin(2^k x_d) at 3 + 3k + d, cos at 48 + 3k + d]
    column[3:48] = column[48:] = (0.25**k).repeat_interleave(3)
    state, width = renderer.state_dict(), renderer.config.d_hidden
    mix = torch.zeros(width, width)  # shape units <- their mean, ramp unit <- itself
    mix[:-1, :-1], mix[-1, -1] = 1.0 / (width - 1), 1.0
    proj = "params_proj.projections.nerstf__mlp__{}__weight.{}"
    with torch.no_grad():
        for what in ("norm.weight", "norm.bias", "proj.bias"):
            state[proj.format(0, what)].view(-1, 93).mul_(0.5 * column)
        state[proj.format(0, "norm.bias")][51:54] += 3.0
        state[proj.format(0, "proj.bias")].view(width, 93)[-1, :3] += torch.tensor([2.0, 1.0, -1.0])
        for i in (1, 2, 3):
            for what in ("norm.weight", "norm.bias", "proj.bias"):
                state[proj.format(i, what)].mul_(0.02)
            state[proj.format(i, "proj.bias")].view(width, width).add_(mix)
        for i in (4, 5):
            state[f"mlp.mlp.{i}.weight"][:, :width].mul_(0.02).add_(mix)
        weight, bias = state["mlp.mlp.6.weight"], state["mlp.mlp.6.bias"]
        weight[0].abs_()
        weight[0, -1] *= 0.01
        axes = torch.cat([torch.eye(3), -torch.eye(3)])
        centre = (_hidden(renderer, torch.zeros(1, 3)) @ weight[0]).item()
        edge = (_hidden(renderer, radius * axes) @ weight[0]).mean().item()
        assert centre > edge, "the radial term must survive the hidden layers"
        weight[0] /= centre - edge
        bias[0] = -edge / (centre - edge)
        g = torch.Generator().manual_seed(seed)
        on_sphere = torch.nn.functional.normalize(torch.randn(256, 3, generator=g), dim=1)
        ramp = _hidden(renderer, radius * on_sphere)[:, -1]
        weight[3:6, -1] = torch.tensor([1.5, -1.0, 0.5]) / ramp.std()
        bias[3:6] = -(_hidden(renderer, radius * on_sphere) @ weight[3:6].T).mean(0)


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
    perturb(renderer, seed + 10, scale=0.3)
    smooth_field(renderer, seed=seed)  # a closed blob inside the unit cube
    scheduler = HeunDiscreteScheduler(**presets.SHAP_E_SCHEDULER)
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
