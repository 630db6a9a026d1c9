"""Shap-E (P1) equals diffusers on the same weights: the prior transformer, the CLIP conditioning,
the image preprocessing, whole sampling runs of both pipelines, and the importer's checks."""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import load_file, save_file

from nd3d_jax.diffusion.heun import heun_schedule
from nd3d_jax.errors import UserError
from nd3d_jax.prior import load_shap_e
from nd3d_jax.weights.convert import main as convert_main
from nd3d_jax.weights.io import WeightImportError
from nd3d_jax.weights.shap_e import load_prior, pipeline_kind


@pytest.fixture(scope="module")
def shap_e(tiny_shap_e):
    return {kind: load_shap_e(folder) for kind, (folder, _) in tiny_shap_e.items()}


def _close(ours, ref, tol):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape
    err = np.abs(ours - ref).max()
    assert err <= tol * max(1.0, np.abs(ref).max()), err


@pytest.mark.parametrize("kind", ["text", "image"])
def test_prior_transformer_equals_diffusers(tiny_shap_e, shap_e, kind):
    pipe, se = tiny_shap_e[kind][1], shap_e[kind]
    c = se.prior.config
    rng = np.random.default_rng(1)
    latents = rng.normal(size=(3, c.num_embeddings, c.embedding_dim)).astype(np.float32)
    cond_shape = (3, c.embedding_proj_dim) if kind == "text" else (3, 5, c.embedding_proj_dim)
    cond = rng.normal(size=cond_shape).astype(np.float32)
    t = np.float32(517.31)  # Karras timesteps are fractional
    with torch.no_grad():
        ref = pipe.prior(
            torch.tensor(latents), timestep=torch.tensor(t), proj_embedding=torch.tensor(cond)
        ).predicted_image_embedding
    # the pipelines keep the first embedding_dim channels (the second half is Shap-E's variance)
    ref = ref[..., : c.embedding_dim].numpy()
    ours = se.prior.apply({"params": se.prior_params}, latents, jnp.full((3,), t), cond)
    _close(ours, ref, 1e-5)
    # bfloat16 compute stays close (parameters remain float32)
    low = se.prior.clone(dtype=jnp.bfloat16).apply(
        {"params": se.prior_params}, latents, jnp.full((3,), t), cond
    )
    assert low.dtype == jnp.float32 and np.abs(np.asarray(low) - ref).max() < 0.1


def test_conditioning_equals_the_pipelines(tiny_shap_e, shap_e):
    texts = ["a red chair", "a small wooden table with four legs"]
    pipe = tiny_shap_e["text"][1]
    with torch.no_grad():  # [zeros, embeds] * sqrt(dim); the long text is truncated by both
        ref = pipe._encode_prompt(texts, "cpu", 1, True).numpy()
    ours = shap_e["text"].condition(text=texts)
    _close(np.concatenate([np.zeros_like(ours), ours]), ref, 1e-5)

    rng = np.random.default_rng(2)
    images = (rng.random((2, 40, 52, 3)) * 255).astype(np.uint8)
    pipe = tiny_shap_e["image"][1]
    pixels = shap_e["image"].image_processor(images)
    with torch.no_grad():
        ref = pipe._encode_image(torch.tensor(pixels.transpose(0, 3, 1, 2)), "cpu", 1, False)
    _close(shap_e["image"].condition(image=images), ref.numpy(), 1e-5)


def test_image_preprocessing_equals_clip_image_processor(tiny_shap_e, shap_e):
    from transformers import CLIPImageProcessor

    folder = os.path.join(tiny_shap_e["image"][0], "image_processor")
    hf = CLIPImageProcessor.from_pretrained(folder)
    ours = shap_e["image"].image_processor
    rng = np.random.default_rng(3)
    for h, w in [(40, 50), (64, 33), (32, 32), (97, 71)]:
        image = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        ref = hf(Image.fromarray(image), return_tensors="np").pixel_values[0].transpose(1, 2, 0)
        _close(ours(image)[0], ref, 1e-6)
    # float input in [0, 1] is the same picture
    np.testing.assert_allclose(ours(image / 255.0), ours(image), atol=1e-6)
    with pytest.raises(UserError, match=r"\[0, 1\]"):
        ours(image * 2.0)


def _diffusers_latents(kind, pipe, se, inputs, noise, steps, guidance):
    """The pipeline's `output_type="latent"` run from the same unit noise."""
    sigma = heun_schedule(se.scheduler, steps).init_noise_sigma
    if kind == "text":  # scales given latents by init_noise_sigma itself
        out = pipe(
            inputs,
            num_inference_steps=steps,
            guidance_scale=guidance,
            latents=torch.tensor(noise).reshape(len(noise), -1),
            output_type="latent",
        )
    else:  # uses given latents as they are; a pixel tensor skips its processor (verified above)
        pixels = torch.tensor(se.image_processor(inputs).transpose(0, 3, 1, 2))
        out = pipe(
            pixels,
            num_inference_steps=steps,
            guidance_scale=guidance,
            latents=torch.tensor(noise) * sigma,
            output_type="latent",
        )
    return out.images.numpy()


@pytest.mark.parametrize("kind", ["text", "image"])
@pytest.mark.parametrize("steps,guidance", [(1, 1.0), (1, 3.0), (4, 1.0), (4, 3.0)])
def test_sample_latents_equal_the_pipeline(tiny_shap_e, shap_e, kind, steps, guidance):
    pipe, se = tiny_shap_e[kind][1], shap_e[kind]
    rng = np.random.default_rng(steps)
    noise = rng.normal(size=(2, *se.latent_shape)).astype(np.float32)
    if kind == "text":
        inputs = ["a red chair", "a lamp"]
        ours = se.sample_latents(
            text=inputs, num_steps=steps, guidance=guidance, initial_noise=noise
        )
    else:
        inputs = (rng.random((2, 36, 44, 3)) * 255).astype(np.uint8)
        ours = se.sample_latents(
            image=inputs, num_steps=steps, guidance=guidance, initial_noise=noise
        )
    ref = _diffusers_latents(kind, pipe, se, inputs, noise, steps, guidance)
    assert ours.shape == (2, *se.latent_shape)
    _close(ours, ref, 1e-4)


def test_sampling_shards_the_batch_and_matches_one_by_one(shap_e):
    se = shap_e["image"]
    rng = np.random.default_rng(5)
    images = (rng.random((4, 32, 32, 3)) * 255).astype(np.uint8)
    noise = rng.normal(size=(4, *se.latent_shape)).astype(np.float32)
    together = se.sample_latents(image=images, num_steps=1, guidance=3.0, initial_noise=noise)
    assert len(together.sharding.device_set) == 4  # gcd(4, 8 devices)
    one = se.sample_latents(image=images[2:3], num_steps=1, guidance=3.0, initial_noise=noise[2:3])
    _close(together[2:3], one, 1e-5)
    # a key instead of given noise: same key, same latents; another key, others
    a = se.sample_latents(jax.random.key(0), image=images[:1], num_steps=1)
    b = se.sample_latents(jax.random.key(0), image=images[:1], num_steps=1)
    c = se.sample_latents(jax.random.key(1), image=images[:1], num_steps=1)
    np.testing.assert_array_equal(a, b)
    assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-3


def test_wrong_inputs_are_one_line_errors(tiny_shap_e, shap_e):
    image = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(UserError, match="text-to-3D.*cannot take an image"):
        shap_e["text"].sample_latents(jax.random.key(0), image=image)
    with pytest.raises(UserError, match="image-to-3D.*cannot take a text"):
        shap_e["image"].sample_latents(jax.random.key(0), text="a chair")
    with pytest.raises(UserError, match="exactly one"):
        shap_e["image"].sample_latents(jax.random.key(0))
    with pytest.raises(UserError, match="non-empty"):
        shap_e["text"].sample_latents(jax.random.key(0), text="  ")
    with pytest.raises(UserError, match="initial_noise has shape"):
        shap_e["image"].sample_latents(image=image, initial_noise=np.zeros((1, 3)))
    with pytest.raises(UserError, match="num_inference_steps"):
        shap_e["image"].sample_latents(jax.random.key(0), image=image, num_steps=0)
    with pytest.raises(WeightImportError, match="no model_index.json"):
        pipeline_kind(os.path.join(tiny_shap_e["text"][0], "prior"))
    with pytest.raises(WeightImportError, match="not found"):
        load_shap_e("/nonexistent/shap-e")


def test_importer_lists_every_bad_key(tiny_shap_e, tmp_path):
    src = os.path.join(tiny_shap_e["image"][0], "prior")
    folder = tmp_path / "prior"
    shutil.copytree(src, folder)
    path = folder / "diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    del state["transformer_blocks.0.attn1.to_k.weight"]
    state["transformer_blocks.0.attn1.extra.weight"] = np.zeros((2, 2), np.float32)
    state["proj_in.weight"] = state["proj_in.weight"][:, :-1].copy()
    save_file(state, str(path))
    with pytest.raises(WeightImportError) as e:
        load_prior(str(folder))
    msg = str(e.value)
    assert "2 missing: blocks_0/to_k/kernel, proj_in/kernel" in msg  # mis-shaped: not loaded
    assert "1 unexpected: transformer_blocks.0.attn1.extra.weight" in msg
    assert "1 mis-shaped: proj_in.weight" in msg
    # a folder of another model type
    with open(folder / "config.json") as f:
        config = json.load(f)
    config["_class_name"] = "UNet2DConditionModel"
    with open(folder / "config.json", "w") as f:
        json.dump(config, f)
    with pytest.raises(WeightImportError, match="expected 'PriorTransformer'"):
        load_prior(str(folder))


def test_convert_writes_a_folder_that_loads_the_same(tiny_shap_e, shap_e, tmp_path, capsys):
    out = tmp_path / "converted"
    convert_main([tiny_shap_e["text"][0], str(out)])
    assert "converted shap_e (text)" in capsys.readouterr().out
    converted = load_shap_e(str(out))
    se = shap_e["text"]
    for a, b in [
        (converted.prior_params, se.prior_params),
        (converted.renderer_params, se.renderer_params),
        (converted.encoder_params, se.encoder_params),
    ]:
        jax.tree.map(np.testing.assert_array_equal, a, b)
    with pytest.raises(SystemExit) as e:
        convert_main([tiny_shap_e["text"][0], str(out)])
    assert e.value.code == 2


def test_remat_changes_nothing_and_the_field_vmaps_over_objects(tiny_shap_e, shap_e):
    import dataclasses

    se = shap_e["image"]
    c = se.prior.config
    rng = np.random.default_rng(7)
    latents = rng.normal(size=(2, c.num_embeddings, c.embedding_dim)).astype(np.float32)
    cond = rng.normal(size=(2, 3, c.embedding_proj_dim)).astype(np.float32)
    t = jnp.full((2,), 301.5)
    remat = se.prior.clone(config=dataclasses.replace(c, remat=True))

    def loss(module, params):
        return jnp.sum(module.apply({"params": params}, latents, t, cond) ** 2)

    a, ga = jax.value_and_grad(lambda p: loss(se.prior, p))(se.prior_params)
    b, gb = jax.value_and_grad(lambda p: loss(remat, p))(se.prior_params)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6), ga, gb)

    # the field of each object, vmapped, equals the batched query
    points = rng.uniform(-1, 1, size=(2, 50, 3)).astype(np.float32)
    field_latents = rng.normal(size=(2, *se.latent_shape)).astype(np.float32)
    sdf, rgb = se.field(field_latents, points)
    one = jax.vmap(lambda lat, p: tuple(x[0] for x in se.field(lat[None], p)))
    vsdf, vrgb = one(field_latents, points)
    np.testing.assert_allclose(vsdf, sdf, atol=1e-6)
    np.testing.assert_allclose(vrgb, rgb, atol=1e-6)
