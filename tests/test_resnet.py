"""ResNet texture encoder: numerical parity with transformers, import errors, layer freezing.

Every checkpoint is a tiny (or ResNet-18-shaped) random transformers model saved locally with
`save_pretrained`; nothing is downloaded.
"""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import transformers
from flax import traverse_util
from safetensors.numpy import load_file, save_file

from configs import presets
from nd3d_jax.models.resnet import (
    FROZEN_LAYERS,
    ResNet,
    ResNetConfig,
    conv_layer_names,
    frozen_conv_names,
    trainable_mask,
)
from nd3d_jax.weights.io import WeightImportError
from nd3d_jax.weights.resnet import load_resnet, resnet_rename

# the sizes only: each test picks the block type (transformers' default is bottleneck)
TINY = {k: v for k, v in presets.TINY_RESNET18.items() if k != "layer_type"}
RESNET18 = {k: v for k, v in presets.RESNET_18.items() if k != "layer_type"}
TOL = 1e-4


def _save_hf(folder, seed=0, cls=transformers.ResNetModel, **config_kwargs):
    """A random transformers ResNet with non-trivial BatchNorm, saved to `folder`."""
    torch.manual_seed(seed)
    model = cls(transformers.ResNetConfig(**config_kwargs))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    model.eval()
    model.save_pretrained(folder)
    return model


def _torch_features(model, x_nhwc):
    """(last_hidden_state NHWC, pooled) of a transformers ResNetModel."""
    with torch.no_grad():
        out = model(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))))
    return out.last_hidden_state.numpy().transpose(0, 2, 3, 1), out.pooler_output.flatten(1).numpy()


def _jax_features(module, params, x):
    return jax.jit(lambda p, x: module.apply({"params": p}, x, method=module.features))(params, x)


def _max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def _image(shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.fixture(scope="module")
def resnet18(tmp_path_factory):
    """A ResNet-18-shaped random checkpoint: (folder, torch model, module, params)."""
    folder = str(tmp_path_factory.mktemp("resnet18"))
    model = _save_hf(folder, seed=18, layer_type="basic", **RESNET18)
    module, params = load_resnet(folder)
    return folder, model, module, params


# --- numerical parity ------------------------------------------------------------------------


def test_tiny_basic_matches_torch(tmp_path):
    model = _save_hf(tmp_path, layer_type="basic", **TINY)
    module, params = load_resnet(str(tmp_path))
    x = _image((2, 64, 64, 3))
    hidden, pooled = _jax_features(module, params, x)
    want_hidden, want_pooled = _torch_features(model, x)
    assert hidden.shape == want_hidden.shape == (2, 2, 2, 32)
    assert pooled.shape == (2, 32)
    assert _max_diff(hidden, want_hidden) < TOL
    assert _max_diff(pooled, want_pooled) < TOL
    # __call__ is the pooled output.
    np.testing.assert_allclose(module.apply({"params": params}, x), pooled, rtol=1e-5, atol=1e-5)


def test_classification_checkpoint_loads(tmp_path):
    model = _save_hf(tmp_path, cls=transformers.ResNetForImageClassification, num_labels=5, **TINY)
    keys = load_file(str(tmp_path / "model.safetensors"))
    assert all(k.startswith(("resnet.", "classifier.")) for k in keys)
    assert any(k.startswith("classifier.") for k in keys)
    module, params = load_resnet(str(tmp_path))
    assert module.config.layer_type == "bottleneck"  # transformers' default
    x = _image((2, 48, 56, 3), seed=2)  # odd, non-square size: padding and pooling arithmetic
    hidden, pooled = _jax_features(module, params, x)
    want_hidden, want_pooled = _torch_features(model.resnet, x)
    assert _max_diff(hidden, want_hidden) < TOL
    assert _max_diff(pooled, want_pooled) < TOL


@pytest.mark.parametrize(
    "layer_type, downsample_in_bottleneck, downsample_in_first_stage",
    [("bottleneck", False, False), ("bottleneck", True, True), ("basic", False, True)],
)
def test_variants_match_torch(
    tmp_path, layer_type, downsample_in_bottleneck, downsample_in_first_stage
):
    model = _save_hf(
        tmp_path,
        seed=3,
        layer_type=layer_type,
        downsample_in_bottleneck=downsample_in_bottleneck,
        downsample_in_first_stage=downsample_in_first_stage,
        **TINY,
    )
    module, params = load_resnet(str(tmp_path))
    assert module.config.downsample_in_bottleneck == downsample_in_bottleneck
    assert module.config.downsample_in_first_stage == downsample_in_first_stage
    x = _image((2, 64, 64, 3), seed=4)
    hidden, pooled = _jax_features(module, params, x)
    want_hidden, want_pooled = _torch_features(model, x)
    assert hidden.shape == want_hidden.shape
    assert _max_diff(hidden, want_hidden) < TOL
    assert _max_diff(pooled, want_pooled) < TOL


def test_resnet18_texture_map_matches_torch(resnet18):
    """The paper's setting: a 256x256 texture map -> 512-D feature."""
    _, model, module, params = resnet18
    assert module.config == ResNetConfig()  # our defaults are ResNet-18
    n_torch = sum(v.numel() for k, v in model.state_dict().items() if "num_batches" not in k)
    assert sum(a.size for a in jax.tree.leaves(params)) == n_torch
    x = _image((1, 256, 256, 3), seed=5)
    hidden, pooled = _jax_features(module, params, x)
    want_hidden, want_pooled = _torch_features(model, x)
    assert hidden.shape == (1, 8, 8, 512) and pooled.shape == (1, 512)
    assert _max_diff(hidden, want_hidden) < TOL
    assert _max_diff(pooled, want_pooled) < TOL


def test_params_carry_logical_axes():
    module = ResNet(ResNetConfig(layer_type="bottleneck", **TINY))
    boxed = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    flat = traverse_util.flatten_dict(boxed["params"])
    assert set(boxed) == {"params"}  # no batch_stats collection
    for path, leaf in flat.items():
        assert isinstance(leaf, nn.Partitioned), path
        want = (
            ("conv_h", "conv_w", "conv_in", "conv_out") if path[-1] == "kernel" else ("conv_out",)
        )
        assert leaf.names == want, path


# --- rename and import errors ----------------------------------------------------------------


def test_rename():
    t = resnet_rename("resnet.encoder.stages.1.layers.0.shortcut.normalization.running_var")
    assert t.path == ("stages_1", "layers_0", "shortcut", "normalization", "var")
    t = resnet_rename("encoder.stages.3.layers.1.layer.2.convolution.weight")
    assert t.path == ("stages_3", "layers_1", "layer_2", "convolution", "kernel")
    assert t.transform(np.zeros((5, 4, 3, 2))).shape == (3, 2, 4, 5)
    assert resnet_rename("embedder.embedder.normalization.weight").path[-1] == "scale"
    assert resnet_rename("embedder.embedder.normalization.num_batches_tracked") is None
    assert resnet_rename("classifier.1.weight") is None
    assert resnet_rename("encoder.stages.0.layers.0.attention.weight").path[0] == "<unexpected>"


def test_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "resnet", **TINY}))
    with pytest.raises(WeightImportError, match="no weight files"):
        load_resnet(str(tmp_path))


def test_other_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    save_file({"embeddings.word_embeddings.weight": np.zeros((4, 8), np.float32)},
              str(tmp_path / "model.safetensors"))  # fmt: skip
    with pytest.raises(WeightImportError, match="holds a 'bert' checkpoint, expected 'resnet'"):
        load_resnet(str(tmp_path))


def test_unsupported_config(tmp_path):
    _save_hf(tmp_path, layer_type="basic", **TINY)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "hidden_act": "gelu"}))
    with pytest.raises(WeightImportError, match="hidden_act"):
        load_resnet(str(tmp_path))
    with pytest.raises(ValueError, match="layer_type"):
        ResNetConfig.from_hf({"model_type": "resnet", "layer_type": "preactivation"})


def _edit_checkpoint(folder, edit):
    path = str(folder / "model.safetensors")
    state = load_file(path)
    edit(state)
    save_file(state, path)


def test_misshaped_tensor(tmp_path):
    _save_hf(tmp_path, layer_type="basic", **TINY)
    key = "encoder.stages.2.layers.0.layer.0.convolution.weight"  # (16, 16, 3, 3)
    _edit_checkpoint(tmp_path, lambda s: s.__setitem__(key, np.zeros((16, 8, 3, 3), np.float32)))
    with pytest.raises(WeightImportError, match=r"1 mis-shaped: " + key.replace(".", r"\.")):
        load_resnet(str(tmp_path))
    # A non-4-D array for a conv is reported too, not a crash in the transpose.
    _edit_checkpoint(tmp_path, lambda s: s.__setitem__(key, np.zeros((16,), np.float32)))
    with pytest.raises(WeightImportError, match="mis-shaped"):
        load_resnet(str(tmp_path))


def test_missing_and_unexpected_keys(tmp_path):
    _save_hf(tmp_path, layer_type="basic", **TINY)

    def edit(state):
        del state["encoder.stages.1.layers.0.shortcut.convolution.weight"]
        state["encoder.stages.9.layers.0.layer.0.convolution.weight"] = np.zeros((1, 1, 1, 1))

    _edit_checkpoint(tmp_path, edit)
    with pytest.raises(WeightImportError) as info:
        load_resnet(str(tmp_path))
    message = str(info.value)
    assert "1 missing: stages_1/layers_0/shortcut/convolution/kernel" in message
    assert "1 unexpected: encoder.stages.9.layers.0.layer.0.convolution.weight" in message


def test_input_layout_errors():
    module = ResNet(ResNetConfig(**TINY))
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), nn.unbox(shapes)["params"])
    with pytest.raises(ValueError, match=r"\(batch, height, width, 3\) NHWC.*NCHW"):
        module.apply({"params": params}, jnp.zeros((1, 3, 32, 32)))
    with pytest.raises(ValueError, match="NHWC"):
        module.apply({"params": params}, jnp.zeros((32, 32, 3)))


# --- freezing and gradients ------------------------------------------------------------------


def test_frozen_layers_are_stem_and_first_two_stages():
    config = ResNetConfig()
    names = frozen_conv_names(config)
    assert len(names) == FROZEN_LAYERS == 10
    # torchvision order: conv1, layer1.0.conv1/2, layer1.1.conv1/2, layer2.0.conv1/2,
    # layer2.0.downsample, layer2.1.conv1/2.
    assert names == [
        ("embedder",),
        ("stages_0", "layers_0", "layer_0"),
        ("stages_0", "layers_0", "layer_1"),
        ("stages_0", "layers_1", "layer_0"),
        ("stages_0", "layers_1", "layer_1"),
        ("stages_1", "layers_0", "layer_0"),
        ("stages_1", "layers_0", "layer_1"),
        ("stages_1", "layers_0", "shortcut"),
        ("stages_1", "layers_1", "layer_0"),
        ("stages_1", "layers_1", "layer_1"),
    ]
    assert len(conv_layer_names(config)) == 20  # 17 3x3/7x7 convs + 3 shortcuts
    with pytest.raises(ValueError, match="num_frozen"):
        frozen_conv_names(config, 21)


def test_trainable_mask_and_update(resnet18):
    _, _, module, params = resnet18
    mask = trainable_mask(params)
    assert jax.tree.structure(mask) == jax.tree.structure(params)
    flat = traverse_util.flatten_dict(mask)
    kernels = {p: m for p, m in flat.items() if p[-1] == "kernel"}
    assert len(kernels) == 20
    frozen_kernels = [p[:-2] for p, m in kernels.items() if not m]
    assert len(frozen_kernels) == 10
    assert sorted(frozen_kernels) == sorted(frozen_conv_names(module.config))
    for path, trainable in flat.items():
        frozen_layer = path[:-2] in frozen_kernels
        statistic = path[-1] in ("mean", "var")
        assert trainable == (not frozen_layer and not statistic), path

    labels = jax.tree.map(lambda t: "train" if t else "freeze", mask)
    tx = optax.multi_transform({"train": optax.adamw(1e-2), "freeze": optax.set_to_zero()}, labels)
    grads = jax.tree.map(jnp.ones_like, params)

    @jax.jit
    def step(params):
        updates, _ = tx.update(grads, tx.init(params), params)
        return optax.apply_updates(params, updates)

    new = step(params)
    flat_old, flat_new = traverse_util.flatten_dict(params), traverse_util.flatten_dict(new)
    for path, trainable in flat.items():
        changed = bool(jnp.any(flat_new[path] != flat_old[path]))
        assert changed == trainable, path


def test_gradients_skip_bn_statistics(tmp_path):
    _save_hf(tmp_path, layer_type="basic", **TINY)
    module, params = load_resnet(str(tmp_path))
    x = jnp.asarray(_image((2, 32, 32, 3), seed=6))
    grads = jax.jit(jax.grad(lambda p: module.apply({"params": p}, x).sum()))(params)
    for path, g in traverse_util.flatten_dict(grads).items():
        if path[-1] in ("mean", "var"):
            assert not bool(jnp.any(g != 0)), path
        elif path[-1] == "kernel":
            assert bool(jnp.any(g != 0)), path


def test_mask_on_fewer_frozen_layers():
    module = ResNet(ResNetConfig(**TINY))
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    params = nn.unbox(shapes)["params"]  # the mask only needs the structure
    flat = traverse_util.flatten_dict(trainable_mask(params, num_frozen=1))
    assert not flat[("embedder", "convolution", "kernel")]
    assert flat[("stages_0", "layers_0", "layer_0", "convolution", "kernel")]
    assert all(not m for p, m in flat.items() if p[-1] in ("mean", "var"))
