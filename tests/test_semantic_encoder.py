"""SemanticEncoder (eq 9): CLIP's first 4 text layers reused, 256-D LayerNormed output."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from nd3d_jax.models.semantic_encoder import (
    SemanticEncoder,
    SemanticEncoderConfig,
    init_from_clip,
)
from nd3d_jax.weights import CLIPTokenizer, load_clip, tiny_tokenizer


def test_paper_dimensions():
    c = SemanticEncoderConfig()
    assert (c.num_layers, c.width, c.num_heads, c.max_length, c.out_dim) == (6, 512, 8, 64, 256)
    assert c.num_clip_layers == 4


@pytest.fixture(scope="module")
def encoder(tiny_clip):
    folder, ref = tiny_clip
    clip, clip_params = load_clip(str(folder))
    config = SemanticEncoderConfig.from_clip(clip.config.text)
    module = SemanticEncoder(config)
    ids = jnp.zeros((1, config.max_length), jnp.int32)
    params = module.init(jax.random.PRNGKey(3), ids)["params"]
    params = init_from_clip(jax.tree.map(jnp.asarray, nn_unbox(params)), clip_params, config)
    return module, params, clip_params, folder, ref


def nn_unbox(tree):
    import flax.linen as nn

    return nn.unbox(tree)


def test_first_layers_equal_clip(encoder):
    module, params, clip_params, *_ = encoder
    layers = clip_params["text_model"]["encoder"]
    for i in range(4):
        for a, b in zip(
            jax.tree.leaves(params[f"layers_{i}"]),
            jax.tree.leaves(layers[f"layers_{i}"]),
            strict=True,
        ):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # layers 5 and 6 stay random: not CLIP's 5th layer
    assert not np.allclose(
        np.asarray(params["layers_4"]["fc1"]["kernel"]),
        np.asarray(layers["layers_4"]["fc1"]["kernel"]),
    )
    assert params["embeddings"]["position_embedding"]["embedding"].shape == (64, 32)


def test_hidden_states_match_clip_and_output_is_layernormed(encoder):
    module, params, _, folder, ref = encoder
    tok = CLIPTokenizer(str(folder), max_length=64)
    inputs = tok(["a photo of a chair", "a tab"])
    ids, mask = jnp.asarray(inputs["input_ids"]), jnp.asarray(inputs["attention_mask"])
    s, states = module.apply({"params": params}, ids, mask, return_hidden=True)
    with torch.no_grad():
        out = ref.text_model(
            torch.from_numpy(inputs["input_ids"]).long(),
            attention_mask=torch.from_numpy(inputs["attention_mask"]).long(),
            output_hidden_states=True,
        )
    valid = inputs["attention_mask"].astype(bool)
    for i in range(5):  # embeddings and the 4 reused layers equal PyTorch CLIP's
        diff = np.abs(np.asarray(states[i]) - out.hidden_states[i].numpy())[valid]
        assert diff.max() < 1e-4, i
    assert s.shape == (2, 256)
    # S = LayerNorm(tanh(FC(pooled))): unit variance, zero mean per row (scale 1, bias 0 at init)
    np.testing.assert_allclose(np.asarray(s).mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(s).var(-1), 1.0, atol=1e-3)
    # by hand from the pooled end-of-text state
    last = states[-1]
    ln = params["final_layer_norm"]
    eos = np.argmax(inputs["input_ids"] == tiny_tokenizer.EOS, axis=-1)
    x = np.asarray(last)[np.arange(2), eos]
    x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    x = x * np.asarray(ln["scale"]) + np.asarray(ln["bias"])
    h = np.tanh(
        x @ np.asarray(params["adapt_fc"]["kernel"]) + np.asarray(params["adapt_fc"]["bias"])
    )
    h = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(np.asarray(s), h, atol=1e-4)


def test_rejects_long_input_and_wrong_clip(encoder):
    module, params, clip_params, *_ = encoder
    with pytest.raises(ValueError, match="length <= 64"):
        module.apply({"params": params}, jnp.zeros((1, 65), jnp.int32))
    with pytest.raises(ValueError, match="from_clip"):
        init_from_clip(params, clip_params, SemanticEncoderConfig())
