"""Pretrained folders enter the train state without a random init of their subtrees: read as
host arrays, placed straight into their shardings, equal to what the importers load."""

from __future__ import annotations

import os

import jax
import numpy as np

from nd3d_jax import sharding, train_state
from nd3d_jax.config_cli import load_config
from nd3d_jax.stages import get_stage
from nd3d_jax.weights import load_clip, load_resnet, load_t2i_adapter, load_unet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _same(tree, want):
    la, lb = jax.tree.leaves(tree), jax.tree.leaves(want)
    assert len(la) == len(lb)
    for a, b in zip(la, lb, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_pretrained_subtrees_are_placed_not_initialised(tiny_clip, tiny_resnet, tmp_path):
    from hf_fixtures import make_diffusers_folder

    c = load_config(os.path.join(ROOT, "configs/demo.py:variant=tiny"))
    unet_dir, adapter_dir = tmp_path / "unet", tmp_path / "adapter"
    make_diffusers_folder(unet_dir, "UNet2DConditionModel", c.model.unet.config.to_dict())
    make_diffusers_folder(adapter_dir, "T2IAdapter", c.model.adapter.config.to_dict())
    c.weights_dir = str(tmp_path)  # relative folders resolve under it, absolute ones as given
    c.model.clip.path, c.model.resnet.path = str(tiny_clip[0]), str(tiny_resnet[0])
    c.model.unet.path, c.model.adapter.path = "unet", "adapter"
    stage = get_stage(c)
    mesh = sharding.make_mesh(2, 4)
    pretrained = stage.pretrained()
    assert set(pretrained) == {
        ("conditioning", "clip"), ("conditioning", "texture_encoder", "resnet"), ("unet",),
        ("adapter",),
    }  # fmt: skip
    for tree in pretrained.values():  # host arrays: nothing placed on a device yet
        assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(tree))

    abstract, shardings, *_ = train_state.abstract_state(stage, c, mesh, sharding.DEFAULT_RULES)
    outputs = train_state.random_init(
        stage, abstract["params"], shardings["params"], set(pretrained), seed=0
    )
    assert "unet" not in outputs and "adapter" not in outputs  # never initialised at random
    assert "clip" not in outputs["conditioning"]

    with jax.set_mesh(mesh):
        ts = train_state.create(stage, c, mesh, sharding.DEFAULT_RULES, log=lambda *a: None)
    p = ts.state["params"]
    _same(p["unet"], load_unet(str(unet_dir))[1])
    _same(p["adapter"], load_t2i_adapter(str(adapter_dir))[1])
    clip = load_clip(str(tiny_clip[0]))[1]
    _same(p["conditioning"]["clip"], clip)
    _same(p["conditioning"]["texture_encoder"]["resnet"], load_resnet(str(tiny_resnet[0]))[1])
    # the SemanticEncoder's first layers are CLIP's text layers (docs/design.md)
    sem, text = p["conditioning"]["semantic_encoder"], clip["text_model"]
    _same(sem["embeddings"]["token_embedding"], text["embeddings"]["token_embedding"])
    # every leaf sits in the sharding the rules give it, sharded ones split over 'fsdp'
    for leaf, want in zip(jax.tree.leaves(p), jax.tree.leaves(shardings["params"]), strict=True):
        assert leaf.sharding == want
    kernel = p["unet"]["conv_in"]["kernel"]
    assert kernel.addressable_shards[0].data.shape[-1] == kernel.shape[-1] // 4
