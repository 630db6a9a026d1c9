"""Our AutoencoderKL against diffusers' on the same random weights (encode and decode)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL as TorchVAE
from hf_fixtures import randomize_norms

from configs import presets
from nd3d_jax.models.vae import sample_latent
from nd3d_jax.weights.diffusers import load_vae
from nd3d_jax.weights.io import WeightImportError

TINY = presets.TINY_VAE


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vae")
    torch.manual_seed(0)
    ref = TorchVAE(**TINY).eval()
    randomize_norms(ref)
    ref.save_pretrained(str(folder))
    return folder, ref


def test_encode_decode_match_diffusers(tiny_vae):
    folder, ref = tiny_vae
    module, params = load_vae(str(folder))
    x = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)
    mean, logvar = module.apply({"params": params}, jnp.asarray(x), method="encode")
    z = np.random.default_rng(1).normal(size=(2, 8, 8, 4)).astype(np.float32)
    image = module.apply({"params": params}, jnp.asarray(z), method="decode")
    with torch.no_grad():
        dist = ref.encode(torch.from_numpy(x.transpose(0, 3, 1, 2))).latent_dist
        dec = ref.decode(torch.from_numpy(z.transpose(0, 3, 1, 2))).sample
    assert mean.shape == (2, 8, 8, 4) and image.shape == (2, 16, 16, 3)
    np.testing.assert_allclose(mean, dist.mean.numpy().transpose(0, 2, 3, 1), atol=1e-4)
    np.testing.assert_allclose(logvar, dist.logvar.numpy().transpose(0, 2, 3, 1), atol=1e-4)
    np.testing.assert_allclose(image, dec.numpy().transpose(0, 2, 3, 1), atol=1e-4)
    s = sample_latent(jax.random.PRNGKey(0), mean, logvar)
    assert s.shape == mean.shape and not np.allclose(s, mean)


def test_sd_config_shapes_and_errors(tiny_vae, tmp_path):
    folder, _ = tiny_vae
    module, params = load_vae(str(folder))
    with pytest.raises(ValueError, match="divisible by 2"):
        module.apply({"params": params}, jnp.zeros((1, 15, 16, 3)), method="encode")
    with pytest.raises(ValueError, match="NHWC latents"):
        module.apply({"params": params}, jnp.zeros((1, 4, 8, 8)), method="decode")
    other = tmp_path / "unet"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    with pytest.raises(WeightImportError, match="expected a diffusers 'AutoencoderKL'"):
        load_vae(str(other))
