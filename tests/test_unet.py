"""UNet and T2I-Adapter against diffusers (PyTorch CPU) on the same random weights."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import T2IAdapter as TorchAdapter
from diffusers import UNet2DConditionModel
from hf_fixtures import randomize_norms

from configs import presets
from nd3d_jax.models.t2i_adapter import avg_pool_ceil, pixel_unshuffle
from nd3d_jax.weights.diffusers import load_t2i_adapter, load_unet
from nd3d_jax.weights.io import WeightImportError

TOL = 1e-4
# two resnets a level (the second takes the first's output, not the skip)
TINY_UNET = presets.derive(presets.TINY_UNET, sample_size=16, layers_per_block=2)
CTX = TINY_UNET["cross_attention_dim"]
LINEAR_UNET = dict(
    TINY_UNET,
    block_out_channels=(16, 32, 32),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=1,
    use_linear_projection=True,
    attention_head_dim=(2, 4, 4),
    transformer_layers_per_block=2,
)
TINY_ADAPTER = presets.derive(presets.TINY_ADAPTER, num_res_blocks=2, downscale_factor=8)


def _save(cls, config, folder, seed=0):
    torch.manual_seed(seed)
    model = cls(**config).eval()
    randomize_norms(model, seed)
    with torch.no_grad():  # diffusers zero-inits some convs; make every weight count
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model.save_pretrained(str(folder))
    return model


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def _nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def unet_and_adapter(tmp_path_factory):
    root = tmp_path_factory.mktemp("diffusers")
    unet = _save(UNet2DConditionModel, TINY_UNET, root / "unet")
    adapter = _save(TorchAdapter, dict(TINY_ADAPTER, adapter_type="full_adapter"), root / "adapter")
    return root, unet, adapter


def _inputs(b=2, hw=16, ctx_dim=CTX, seed=0):
    rng = np.random.default_rng(seed)
    sample = rng.normal(size=(b, hw, hw, 4)).astype(np.float32)
    ctx = rng.normal(size=(b, 7, ctx_dim)).astype(np.float32)
    return sample, np.array([10, 900][:b]), ctx


def test_unet_matches_diffusers_without_and_with_adapter(unet_and_adapter):
    root, ref_unet, ref_adapter = unet_and_adapter
    unet, up = load_unet(str(root / "unet"))
    adapter, ap = load_t2i_adapter(str(root / "adapter"))
    sample, t, ctx = _inputs()
    cond = np.random.default_rng(5).random((2, 128, 128, 6)).astype(np.float32)

    feats = adapter.apply({"params": ap}, jnp.asarray(cond))
    with torch.no_grad():
        ref_feats = ref_adapter(_nchw(cond))
    c0, c1 = TINY_ADAPTER["channels"]
    assert [f.shape for f in feats] == [(2, 16, 16, c0), (2, 8, 8, c1)]
    for ours, theirs in zip(feats, ref_feats, strict=True):
        np.testing.assert_allclose(ours, _nhwc(theirs), atol=TOL)

    apply = jax.jit(lambda p, s, t, c, r: unet.apply({"params": p}, s, t, c, r))
    plain = apply(up, jnp.asarray(sample), jnp.asarray(t), jnp.asarray(ctx), None)
    guided = apply(up, jnp.asarray(sample), jnp.asarray(t), jnp.asarray(ctx), feats)
    with torch.no_grad():
        args = (_nchw(sample), torch.from_numpy(t), torch.from_numpy(ctx))
        want_plain = ref_unet(*args).sample
        want_guided = ref_unet(
            *args, down_intrablock_additional_residuals=[f.clone() for f in ref_feats]
        ).sample
    np.testing.assert_allclose(plain, _nhwc(want_plain), atol=TOL)
    np.testing.assert_allclose(guided, _nhwc(want_guided), atol=TOL)
    assert not np.allclose(plain, guided, atol=1e-3)  # the adapter changes the prediction


def test_linear_projection_heads_per_level_and_remat(tmp_path):
    ref = _save(UNet2DConditionModel, LINEAR_UNET, tmp_path / "unet", seed=1)
    unet, params = load_unet(str(tmp_path / "unet"))
    sample, t, ctx = _inputs(b=1, seed=2)
    args = tuple(map(jnp.asarray, (sample, t, ctx)))

    def forward(module):  # jitted: one compile, a third of op-by-op dispatch's time here
        return jax.jit(lambda p: module.apply({"params": p}, *args))(params)

    ours = forward(unet)
    with torch.no_grad():
        want = ref(_nchw(sample), torch.from_numpy(t), torch.from_numpy(ctx)).sample
    np.testing.assert_allclose(ours, _nhwc(want), atol=TOL)
    # remat and bfloat16 compute: same parameters, same function (bf16 to its precision)
    from nd3d_jax.models.unet import UNet

    remat = UNet(unet.config.__class__(**{**unet.config.__dict__, "remat": True}))
    out = forward(remat)
    np.testing.assert_allclose(out, ours, atol=1e-5)
    bf16 = UNet(unet.config, dtype=jnp.bfloat16)
    out = forward(bf16)
    assert out.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(out - ours))) < 0.1 * float(jnp.max(jnp.abs(ours)))


def test_adapter_helpers_match_torch():
    x = np.random.default_rng(0).normal(size=(1, 6, 10, 3)).astype(np.float32)
    want = torch.nn.PixelUnshuffle(2)(_nchw(x))
    np.testing.assert_allclose(pixel_unshuffle(jnp.asarray(x), 2), _nhwc(want), atol=0)
    odd = np.random.default_rng(1).normal(size=(1, 5, 7, 2)).astype(np.float32)
    want = torch.nn.AvgPool2d(2, 2, ceil_mode=True)(_nchw(odd))
    np.testing.assert_allclose(avg_pool_ceil(jnp.asarray(odd)), _nhwc(want), atol=1e-6)


def test_bad_inputs_and_folders(unet_and_adapter, tmp_path):
    root, *_ = unet_and_adapter
    unet, up = load_unet(str(root / "unet"))
    adapter, ap = load_t2i_adapter(str(root / "adapter"))
    with pytest.raises(ValueError, match="NHWC"):
        unet.apply(
            {"params": up}, jnp.zeros((1, 4, 16, 16)), jnp.zeros((1,)), jnp.zeros((1, 7, CTX))
        )
    with pytest.raises(ValueError, match=f"cross_attention_dim {CTX}"):
        unet.apply({"params": up}, jnp.zeros((1, 16, 16, 4)), jnp.zeros((1,)), jnp.zeros((1, 7, 8)))
    with pytest.raises(ValueError, match="divisible by 8"):
        adapter.apply({"params": ap}, jnp.zeros((1, 100, 128, 6)))
    with pytest.raises(WeightImportError, match="expected a diffusers 'UNet2DConditionModel'"):
        load_unet(str(root / "adapter"))
    odd = tmp_path / "odd"
    odd.mkdir()
    config = json.loads((root / "unet" / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**config, "class_embed_type": "timestep"}))
    with pytest.raises(WeightImportError, match="class_embed_type"):
        load_unet(str(odd))


def test_converted_unet_and_adapter_load_the_same(unet_and_adapter, tmp_path):
    from nd3d_jax.weights.convert import main as convert_main

    root, *_ = unet_and_adapter
    for name, load in (("unet", load_unet), ("adapter", load_t2i_adapter)):
        convert_main([str(root / name), str(tmp_path / name)])
        _, direct = load(str(root / name))
        _, restored = load(str(tmp_path / name))
        for a, b in zip(jax.tree.leaves(direct), jax.tree.leaves(restored), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_every_parameter_has_logical_axes():
    from flax import linen as nn

    from nd3d_jax.models.t2i_adapter import T2IAdapter, T2IAdapterConfig
    from nd3d_jax.models.unet import UNet, UNetConfig
    from nd3d_jax.models.vae import AutoencoderKL, VAEConfig

    cases = [
        (UNet(UNetConfig(**{k: v for k, v in TINY_UNET.items() if k != "sample_size"})),
         (jnp.zeros((1, 16, 16, 4)), jnp.zeros((1,)), jnp.zeros((1, 3, CTX)))),
        (T2IAdapter(T2IAdapterConfig(**TINY_ADAPTER)), (jnp.zeros((1, 64, 64, 6)),)),
        (AutoencoderKL(VAEConfig(block_out_channels=(16, 32), norm_num_groups=8)),
         (jnp.zeros((1, 16, 16, 3)),)),
    ]  # fmt: skip
    for module, args in cases:
        variables = jax.eval_shape(lambda m=module, a=args: m.init(jax.random.PRNGKey(0), *a))
        specs = jax.tree.leaves(
            nn.get_partition_spec(variables), is_leaf=lambda x: x is None or hasattr(x, "index")
        )
        assert specs and all(s is not None and len(s) > 0 for s in specs), type(module).__name__
