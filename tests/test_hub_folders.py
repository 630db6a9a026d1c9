"""Checkpoint folders as the Hub serves them, written by diffusers and transformers themselves:
fp16 weight variants (single and sharded), PyTorch `.bin` pickles (`save_pretrained(...,
safe_serialization=False)` and `torch.save(state_dict)`, as older releases wrote them) and a
Stable Diffusion pipeline folder (`model_index.json`). Each loads and equals the PyTorch
reference in float32 to 1e-4 (for a variant: diffusers' own `from_pretrained(variant=...,
torch_dtype=float32)` of the same folder)."""

from __future__ import annotations

import json
import os
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hf_fixtures import make_diffusers_folder, save_tiny_tokenizer
from safetensors.numpy import save_file

from configs import presets
from nd3d_jax.errors import UserError
from nd3d_jax.weights import CLIPTokenizer, load_clip, load_t2i_adapter, load_unet, load_vae
from nd3d_jax.weights.convert import convert
from nd3d_jax.weights.io import TORCH_FIX, WeightImportError, model_folder, read_weights
from nd3d_jax.weights.paths import require_folder

TOL = 1e-4
CTX = presets.TINY_UNET["cross_attention_dim"]
ADAPTER = presets.derive(presets.TINY_ADAPTER, adapter_type="full_adapter")


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def _nhwc(t):
    return t.detach().float().numpy().transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The torch models (float32, every weight perturbed) and the folders they were saved in."""
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel
    from transformers import CLIPTokenizer as HFTokenizer

    root = tmp_path_factory.mktemp("hub")
    unet = make_diffusers_folder(root / "unet_fp32", "UNet2DConditionModel", presets.TINY_UNET)
    vae = make_diffusers_folder(root / "vae_fp32", "AutoencoderKL", presets.TINY_VAE, seed=1)
    adapter = make_diffusers_folder(root / "adapter_fp32", "T2IAdapter", ADAPTER, seed=2)
    # fp16 variants as the Hub's `variant="fp16"` downloads hold them (arrays stored in fp16)
    for name, model, kw in (("unet", unet, {}), ("vae", vae, {}),
                            ("adapter", adapter, {"max_shard_size": "20KB"})):  # fmt: skip
        half = type(model).from_pretrained(str(root / f"{name}_fp32")).half()
        half.save_pretrained(str(root / f"{name}_fp16"), variant="fp16", **kw)
    # a pickled .bin UNet, as diffusers wrote them before safetensors
    unet.save_pretrained(str(root / "unet_bin"), safe_serialization=False)
    # a Stable Diffusion pipeline folder (model_index.json, unet/, vae/, text_encoder/, ...)
    save_tiny_tokenizer(root / "tok")
    text = CLIPTextModel(CLIPTextConfig(**presets.TINY_CLIP["text_config"])).eval()
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=HFTokenizer.from_pretrained(str(root / "tok")),
        unet=unet, scheduler=diffusers.DDIMScheduler(), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.save_pretrained(str(root / "sd"))
    return root, unet, vae, adapter


@pytest.fixture(scope="module")
def runs(hub):
    """Our forwards, each jitted once (the loads below all build the same modules), with their
    inputs and the torch outputs of the fp32 models and of diffusers' fp16-variant loads."""
    import diffusers

    root, unet, vae, _ = hub
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 8, 8, 4)).astype(np.float32)
    t, ctx = np.array([10, 900]), rng.normal(size=(2, 5, CTX)).astype(np.float32)
    z = rng.normal(size=(1, 4, 4, 4)).astype(np.float32)
    fp16 = {
        name: getattr(diffusers, cls).from_pretrained(
            str(root / f"{name}_fp16"), variant="fp16", torch_dtype=torch.float32
        )
        for name, cls in (("unet", "UNet2DConditionModel"), ("vae", "AutoencoderKL"))
    }
    with torch.no_grad():
        args = (_nchw(x), torch.from_numpy(t), torch.from_numpy(ctx))
        want = {"unet": _nhwc(unet(*args).sample), "unet_fp16": _nhwc(fp16["unet"](*args).sample),
                "vae": _nhwc(vae.decode(_nchw(z)).sample),
                "vae_fp16": _nhwc(fp16["vae"].decode(_nchw(z)).sample)}  # fmt: skip
    # the fp16 variants, loaded once here: the only weights in their folders (UNet), and named
    # explicitly (VAE)
    u, want["unet_fp16_params"] = load_unet(str(root / "unet_fp16"))
    v, want["vae_fp16_params"] = load_vae(str(root / "vae_fp16"), variant="fp16")
    x, t, ctx, z = map(jnp.asarray, (x, t, ctx, z))
    return {
        "unet": jax.jit(lambda p: u.apply({"params": p}, x, t, ctx)),
        "vae": jax.jit(lambda p: v.apply({"params": p}, z, method="decode")),
    }, want


def test_fp16_variants_load_and_match_diffusers(hub, runs):
    import diffusers

    root, *_ = hub
    run, want = runs
    assert "diffusion_pytorch_model.fp16.safetensors" in os.listdir(root / "unet_fp16")
    stored = read_weights(str(root / "unet_fp16"))  # the only weights there: taken as they are
    assert {a.dtype for a in stored.values()} == {np.dtype(np.float16)}
    params = want["unet_fp16_params"]
    assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    np.testing.assert_allclose(run["unet"](params), want["unet_fp16"], atol=TOL)
    assert np.abs(want["unet_fp16"] - want["unet"]).max() > 1e-5  # the variant's rounding is real
    np.testing.assert_allclose(run["vae"](want["vae_fp16_params"]), want["vae_fp16"], atol=TOL)

    # the sharded variant: adapter.safetensors.index.fp16.json and its fp16 shards
    files = os.listdir(root / "adapter_fp16")
    assert "diffusion_pytorch_model.safetensors.index.fp16.json" in files
    assert sum(n.endswith(".safetensors") for n in files) > 1
    ref = diffusers.T2IAdapter.from_pretrained(str(root / "adapter_fp16"), variant="fp16",
                                               torch_dtype=torch.float32)  # fmt: skip
    module, params = load_t2i_adapter(str(root / "adapter_fp16"))
    cond = np.random.default_rng(2).random((1, 16, 16, 6)).astype(np.float32)
    feats = jax.jit(lambda p, c: module.apply({"params": p}, c))(params, jnp.asarray(cond))
    with torch.no_grad():
        ref_feats = ref(_nchw(cond))
    assert len(feats) == len(ref_feats) == 2
    for ours, theirs in zip(feats, ref_feats, strict=True):
        np.testing.assert_allclose(ours, _nhwc(theirs), atol=TOL)


def test_bin_unet_and_clip_match_torch(hub, runs, tiny_clip, tmp_path, monkeypatch):
    root, *_ = hub
    run, want = runs
    assert sorted(os.listdir(root / "unet_bin")) == ["config.json", "diffusion_pytorch_model.bin"]
    np.testing.assert_allclose(run["unet"](load_unet(str(root / "unet_bin"))[1]), want["unet"],
                               atol=TOL)  # fmt: skip

    clip_folder, ref = tiny_clip  # a CLIP folder as older transformers wrote it
    old = tmp_path / "clip_bin"
    old.mkdir()
    torch.save(ref.state_dict(), old / "pytorch_model.bin")
    shutil.copy(clip_folder / "config.json", old / "config.json")
    module, params = load_clip(str(old))
    tokens = CLIPTokenizer(str(clip_folder), max_length=8)(["a photo of a chair", "a tab"])
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    text = jax.jit(lambda p: module.apply({"params": p}, ids, mask, method="encode_text"))(params)
    with torch.no_grad():
        t_text = ref.get_text_features(input_ids=torch.from_numpy(ids).long(),
                                       attention_mask=torch.from_numpy(mask).long())  # fmt: skip
    np.testing.assert_allclose(text, getattr(t_text, "pooler_output", t_text).numpy(), atol=TOL)

    monkeypatch.setitem(sys.modules, "torch", None)  # a machine without torch
    with pytest.raises(WeightImportError) as e:
        load_unet(str(root / "unet_bin"))
    message = str(e.value)
    assert "\n" not in message and message.endswith(TORCH_FIX)
    assert "pip install torch" in message and "python -m nd3d_jax.weights.convert" in message


def test_pipeline_folder_stands_for_its_models(hub, runs, tmp_path):
    root, *_ = hub
    run, want = runs
    sd = root / "sd"
    assert json.loads((sd / "model_index.json").read_text())["unet"][1] == "UNet2DConditionModel"
    np.testing.assert_allclose(run["unet"](load_unet(str(sd))[1]), want["unet"], atol=TOL)
    np.testing.assert_allclose(run["vae"](load_vae(str(sd))[1]), want["vae"], atol=TOL)
    ids = CLIPTokenizer(str(sd), max_length=8)(["a chair"])["input_ids"]  # tokenizer/
    assert ids.shape == (1, 8) and ids[0, 0] == presets.TINY_CLIP["text_config"]["bos_token_id"]
    # the config's folders resolve the same way (model.unet.path=PIPELINE)
    assert require_folder("", str(sd), "model.unet.path", kind="unet") == str(sd / "unet")
    with pytest.raises(UserError, match=r"model.adapter.path=.*without a T2IAdapter .*unet/ "):
        require_folder("", str(sd), "model.adapter.path", kind="adapter")
    # converted once (no torch needed afterwards): the networks we load, the tokenizer copied;
    # here the pipeline without its UNet (the conversion is the same for each network)
    small = tmp_path / "sd_small"
    small.mkdir()
    for name in ("model_index.json", "vae", "text_encoder", "tokenizer", "scheduler"):
        (shutil.copy if name.endswith(".json") else shutil.copytree)(sd / name, small / name)
    out = tmp_path / "sd_converted"
    assert convert(str(small), str(out)) == "pipeline (vae; not converted: text_encoder " + (
        "(clip_text_model))"
    )
    assert model_folder(str(out), "vae") == str(out / "vae")
    assert sorted(os.listdir(out)) == ["model_index.json", "scheduler", "tokenizer", "vae"]
    np.testing.assert_allclose(run["vae"](load_vae(str(out))[1]), want["vae"], atol=TOL)
    assert CLIPTokenizer(str(out), max_length=8)(["a chair"])["input_ids"].tolist() == ids.tolist()


def test_variant_choice(tmp_path):
    def folder(name, *files):
        d = tmp_path / name
        d.mkdir()
        for f, value in files:
            save_file({"w": np.full((2,), value, np.float16)}, str(d / f))
        return str(d)

    both = folder("both", ("model.safetensors", 1.0), ("model.fp16.safetensors", 2.0))
    assert read_weights(both)["w"][0] == 1.0  # the plain weights first
    assert read_weights(both, "fp16")["w"][0] == 2.0
    two = folder("two", ("model.fp16.safetensors", 2.0), ("model.bf16.safetensors", 3.0))
    with pytest.raises(WeightImportError, match=r"variants bf16, fp16 and no plain.*variant="):
        read_weights(two)
    assert read_weights(two, "bf16")["w"][0] == 3.0
    with pytest.raises(WeightImportError, match=r"no 'int8' weight variant \(it holds: bf16, fp16"):
        read_weights(two, "int8")
    with pytest.raises(WeightImportError, match="no weight files"):
        read_weights(folder("empty"))
    # a real bfloat16 file (as torch writes it; 2^100 overflows float16), the only one there
    import torch
    from safetensors.torch import save_file as save_torch

    (tmp_path / "bf16").mkdir()
    values = torch.tensor([3.0, 2.0**100, -0.5], dtype=torch.bfloat16)
    save_torch({"w": values}, str(tmp_path / "bf16" / "model.bf16.safetensors"))
    got = np.asarray(read_weights(str(tmp_path / "bf16"))["w"], np.float32)
    np.testing.assert_array_equal(got, [3.0, 2.0**100, -0.5])
