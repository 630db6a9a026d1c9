"""Our Linen CLIP against transformers' PyTorch CLIPModel on the same random weights."""

from __future__ import annotations

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hf_fixtures import make_clip_folder
from safetensors.numpy import load_file, save_file

from nd3d_jax.models.clip import eos_positions
from nd3d_jax.weights import CLIPTokenizer, WeightImportError, load_clip, tiny_tokenizer
from nd3d_jax.weights.convert import main as convert_main

TOL = 1e-4


def _text_inputs(folder, texts=("a photo of a chair", "a tab", "chair chair table")):
    tok = CLIPTokenizer(str(folder), max_length=16)
    return tok(list(texts))


def _torch(x):
    return torch.from_numpy(np.asarray(x))


def _max_diff(ours, ref):
    return float(np.max(np.abs(np.asarray(ours) - ref.detach().numpy())))


def test_text_tower_matches_transformers(tiny_clip):
    folder, ref = tiny_clip
    module, params = load_clip(str(folder))
    inputs = _text_inputs(folder)
    assert inputs["attention_mask"][1].sum() < 16  # padding is exercised
    ids, mask = jnp.asarray(inputs["input_ids"]), jnp.asarray(inputs["attention_mask"])
    variables = {"params": params}
    feats = module.apply(variables, ids, mask, method="encode_text")
    last, pooled, states = module.apply(variables, ids, mask, method="text_outputs")
    tokens = module.apply(variables, ids, mask, method="text_tokens")
    with torch.no_grad():
        t_ids, t_mask = _torch(inputs["input_ids"]).long(), _torch(inputs["attention_mask"]).long()
        out = ref.text_model(t_ids, attention_mask=t_mask, output_hidden_states=True)
        t_feats = ref.get_text_features(input_ids=t_ids, attention_mask=t_mask)
        t_feats = getattr(t_feats, "pooler_output", t_feats)
        t_tokens = ref.text_projection(out.last_hidden_state)
    assert feats.shape == (3, 24) and tokens.shape == (3, 16, 24)
    assert _max_diff(feats, t_feats) < TOL
    assert _max_diff(pooled, out.pooler_output) < TOL
    assert _max_diff(last, out.last_hidden_state) < TOL
    assert len(states) == len(out.hidden_states) == 6
    for ours, theirs in zip(states, out.hidden_states, strict=True):
        assert _max_diff(ours, theirs) < TOL
    valid = inputs["attention_mask"].astype(bool)  # padded positions are not compared
    assert np.max(np.abs(np.asarray(tokens) - t_tokens.numpy())[valid]) < TOL


def test_vision_tower_matches_transformers(tiny_clip):
    folder, ref = tiny_clip
    module, params = load_clip(str(folder))
    pixels = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    variables = {"params": params}
    feats = module.apply(variables, jnp.asarray(pixels), method="encode_image")
    last, pooled, states = module.apply(variables, jnp.asarray(pixels), method="vision_outputs")
    tokens = module.apply(variables, jnp.asarray(pixels), method="image_tokens")
    with torch.no_grad():
        nchw = _torch(pixels.transpose(0, 3, 1, 2))
        out = ref.vision_model(nchw, output_hidden_states=True)
        t_feats = ref.get_image_features(pixel_values=nchw)
        t_feats = getattr(t_feats, "pooler_output", t_feats)
        t_tokens = ref.visual_projection(ref.vision_model.post_layernorm(out.last_hidden_state))
    assert feats.shape == (2, 24) and tokens.shape == (2, 1 + 16, 24)
    assert _max_diff(feats, t_feats) < TOL
    assert _max_diff(pooled, out.pooler_output) < TOL
    for ours, theirs in zip(states, out.hidden_states, strict=True):
        assert _max_diff(ours, theirs) < TOL
    assert _max_diff(tokens, t_tokens) < TOL
    assert _max_diff(tokens[:, 0], t_feats) < TOL  # the CLS token is the pooled feature


def test_vit_b32_shapes_match_transformers(tmp_path):
    """The paper's CLIP (ViT-B/32, 512-D features) at its real shapes, random weights."""
    from transformers import CLIPConfig

    config = CLIPConfig().to_dict()  # transformers' defaults are openai ViT-B/32
    ref = make_clip_folder(tmp_path, dict(text_config={}, vision_config={}), tokenizer=False)
    assert ref.config.projection_dim == config["projection_dim"] == 512
    module, params = load_clip(str(tmp_path))
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 49406, size=(2, 77)).astype(np.int32)
    ids[:, 0], ids[0, 20], ids[1, 76] = 49406, 49407, 49407
    mask = np.ones_like(ids)
    mask[0, 21:] = 0
    pixels = rng.normal(size=(1, 224, 224, 3)).astype(np.float32)
    v = {"params": params}
    text = module.apply(v, jnp.asarray(ids), jnp.asarray(mask), method="encode_text")
    image = module.apply(v, jnp.asarray(pixels), method="encode_image")
    with torch.no_grad():
        t_text = ref.get_text_features(input_ids=_torch(ids).long(), attention_mask=_torch(mask))
        t_image = ref.get_image_features(pixel_values=_torch(pixels.transpose(0, 3, 1, 2)))
    t_text = getattr(t_text, "pooler_output", t_text)
    t_image = getattr(t_image, "pooler_output", t_image)
    assert text.shape == (2, 512) and image.shape == (1, 512)
    assert _max_diff(text, t_text) < TOL
    assert _max_diff(image, t_image) < TOL


def test_eos_pooling_rules():
    ids = jnp.array([[5, 9, 3, 9, 0], [5, 2, 7, 1, 1]])
    np.testing.assert_array_equal(eos_positions(ids, 9), [1, 0])  # first EOS; none -> 0
    np.testing.assert_array_equal(eos_positions(ids, 2), [1, 2])  # legacy configs: largest id


def test_converted_checkpoint_loads_the_same(tiny_clip, tmp_path, capsys):
    folder, _ = tiny_clip
    out = tmp_path / "converted"
    convert_main([str(folder), str(out)])
    assert "converted clip" in capsys.readouterr().out
    _, direct = load_clip(str(folder))
    module, restored = load_clip(str(out))
    flat_a, flat_b = jax.tree.leaves(direct), jax.tree.leaves(restored)
    assert len(flat_a) == len(flat_b)
    for a, b in zip(flat_a, flat_b, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    CLIPTokenizer(str(out))  # the tokenizer files travel with the checkpoint
    with pytest.raises(SystemExit) as exit_info:
        convert_main([str(folder), str(out)])
    assert exit_info.value.code == 2 and "exists" in capsys.readouterr().err


def _copy_with(folder, dst, edit):
    os.makedirs(dst)
    state = load_file(os.path.join(folder, "model.safetensors"))
    edit(state)
    save_file(state, os.path.join(dst, "model.safetensors"))
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(config, f)
    return str(dst)


def test_bad_checkpoints_are_named(tiny_clip, tmp_path):
    folder, _ = tiny_clip
    with pytest.raises(WeightImportError, match="not found"):
        load_clip(str(tmp_path / "nowhere"))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"model_type": "clip"}))
    (empty / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(WeightImportError, match="pytorch_model.bin: unreadable torch file"):
        load_clip(str(empty))
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "resnet"}))
    with pytest.raises(WeightImportError, match="holds a 'resnet' checkpoint, expected 'clip'"):
        load_clip(str(other))

    key = "text_model.encoder.layers.1.mlp.fc1.weight"
    bad = _copy_with(folder, tmp_path / "misshaped", lambda s: s.update({key: s[key][:, :-1]}))
    with pytest.raises(WeightImportError, match=r"1 mis-shaped: text_model\.encoder\.layers\.1"):
        load_clip(bad)
    gone = "vision_model.post_layernorm.bias"
    bad = _copy_with(folder, tmp_path / "missing", lambda s: s.pop(gone))
    with pytest.raises(WeightImportError, match="1 missing: vision_model/post_layernorm/bias"):
        load_clip(bad)
    extra = _copy_with(
        folder, tmp_path / "extra", lambda s: s.update({"text_model.adapter.weight": s[key]})
    )
    with pytest.raises(WeightImportError, match=r"1 unexpected: text_model\.adapter\.weight"):
        load_clip(extra)


def test_bad_inputs(tiny_clip, caplog):
    folder, _ = tiny_clip
    module, params = load_clip(str(folder))
    with pytest.raises(ValueError, match=r"\(batch, 32, 32, 3\) NHWC"):
        module.apply({"params": params}, jnp.zeros((1, 3, 32, 32)), method="encode_image")
    with pytest.raises(ValueError, match="78 tokens, but the text encoder has 77 positions"):
        module.apply({"params": params}, jnp.zeros((1, 78), jnp.int32), method="encode_text")
    tok = CLIPTokenizer(str(folder), max_length=8)
    with caplog.at_level(logging.WARNING):
        long = tok(["a photo of a chair next to a table", "a chair"])
        tok(["another photo of a long long table"])
    warnings = [r for r in caplog.records if "truncated" in r.getMessage()]
    assert len(warnings) == 1
    assert long["input_ids"].shape == (2, 8) and long["input_ids"].dtype == np.int32
    assert long["input_ids"][0, -1] == tiny_tokenizer.EOS  # truncation keeps end-of-text
    with pytest.raises(WeightImportError, match="tokenizer folder not found"):
        CLIPTokenizer(str(folder / "missing"))
