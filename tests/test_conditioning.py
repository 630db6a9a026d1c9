"""The priors + fusion module end to end: paper widths, pretrained weights placed, freezing."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import trimesh
from flax import linen as nn

from nd3d_jax.models import conditioning as cond
from nd3d_jax.models.mesh_conv import sample_faces
from nd3d_jax.weights import CLIPTokenizer, load_clip, load_resnet


def _batch(folder, clip_config, b=2, texture=64):
    tok = CLIPTokenizer(str(folder), max_length=16)
    text = tok(["a photo of a chair", "a table"][:b])
    sem = tok(["a photo of a chair", "a table"][:b], max_length=12)
    mesh = trimesh.creation.icosphere(subdivisions=2)
    faces = {
        k: jnp.asarray(np.stack([v] * b))
        for k, v in sample_faces(mesh.vertices, mesh.faces).items()
    }
    rng = np.random.default_rng(0)
    size = clip_config.vision.image_size
    return {
        "input_ids": jnp.asarray(text["input_ids"]),
        "attention_mask": jnp.asarray(text["attention_mask"]),
        "semantic_ids": jnp.asarray(sem["input_ids"]),
        "semantic_mask": jnp.asarray(sem["attention_mask"]),
        "pixel_values": jnp.asarray(rng.normal(size=(b, size, size, 3)), jnp.float32),
        "texture_map": jnp.asarray(rng.random((b, texture, texture, 3)), jnp.float32),
        "faces": faces,
    }


def test_paper_config_widths():
    """Every prior has the paper's width (128, 128, 128, 384 -> 512), at ViT-B/32 shapes."""
    module = cond.Conditioning(cond.ConditioningConfig())
    b = {
        "input_ids": jnp.zeros((1, 77), jnp.int32),
        "attention_mask": jnp.ones((1, 77), jnp.int32),
        "semantic_ids": jnp.zeros((1, 64), jnp.int32),
        "semantic_mask": jnp.ones((1, 64), jnp.int32),
        "pixel_values": jnp.zeros((1, 224, 224, 3)),
        "texture_map": jnp.zeros((1, 256, 256, 3)),
        "faces": {
            "features": jnp.zeros((1, 512, 7)),
            "neighbours": jnp.zeros((1, 512, 3, 7)),
            "neighbour_mask": jnp.ones((1, 512, 3)),
            "face_mask": jnp.ones((1, 512)),
        },
    }
    out, variables = jax.eval_shape(lambda: module.init_with_output(jax.random.PRNGKey(0), b))
    dims = {
        k: out[k].shape for k in ("f_struc", "f_tex", "S", "f_sem", "f_prior_align", "f_fusion")
    }
    assert dims == {
        "f_struc": (1, 128),
        "f_tex": (1, 128),
        "S": (1, 256),
        "f_sem": (1, 128),
        "f_prior_align": (1, 512),
        "f_fusion": (1, 77, 512),
    }
    p = nn.unbox(variables)["params"]
    assert p["prior_alignment"]["fc"]["kernel"].shape == (384, 512)
    assert p["semantic_gating"]["w_g"]["kernel"].shape == (256, 128)
    specs = nn.get_partition_spec(variables)["params"]
    assert all(s is not None for s in jax.tree.leaves(specs, is_leaf=lambda x: x is None))


def test_pretrained_forward_and_freezing(tiny_clip, tiny_resnet):
    clip_dir, _ = tiny_clip
    resnet_dir, _ = tiny_resnet
    clip, clip_params = load_clip(str(clip_dir))
    resnet, resnet_params = load_resnet(str(resnet_dir))
    config = cond.ConditioningConfig.from_pretrained(clip.config, resnet.config)
    module = cond.Conditioning(config)
    batch = _batch(clip_dir, clip.config)
    params = nn.unbox(jax.jit(module.init)(jax.random.PRNGKey(0), batch))["params"]
    params = cond.load_pretrained(params, clip_params, resnet_params, config)

    out = jax.jit(module.apply)({"params": params}, batch)
    assert out["f_fusion"].shape == (2, 16, 24) and out["f_prior_align"].shape == (2, 24)
    assert np.isfinite(np.asarray(out["f_fusion"])).all()
    # CLIP's text tokens inside the module are the imported CLIP's
    want = clip.apply(
        {"params": clip_params}, batch["input_ids"], batch["attention_mask"], method="text_tokens"
    )
    np.testing.assert_allclose(out["f_text"], want, atol=1e-5)  # jit vs eager
    f_tex = resnet.apply({"params": resnet_params}, batch["texture_map"])
    fc = params["texture_encoder"]["fc"]
    np.testing.assert_allclose(out["f_tex"], f_tex @ fc["kernel"] + fc["bias"], atol=1e-5)

    mask = cond.trainable_mask(params, config)
    labels = jax.tree.map(lambda m: "train" if m else "freeze", mask)
    tx = optax.multi_transform({"train": optax.adamw(1e-2), "freeze": optax.set_to_zero()}, labels)

    def loss(p):
        return jnp.sum(module.apply({"params": p}, batch)["f_fusion"] ** 2)

    grads = jax.jit(jax.grad(loss))(params)
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), params, new)
    flat_changed = jax.tree.leaves(changed)
    flat_mask = jax.tree.leaves(mask)
    assert sum(flat_changed) > 0
    for m, c in zip(flat_mask, flat_changed, strict=True):
        if not m:
            assert not c
    assert not any(jax.tree.leaves(changed["clip"]))
    stem = changed["texture_encoder"]["resnet"]["embedder"]["convolution"]["kernel"]
    last = changed["texture_encoder"]["resnet"]["stages_3"]["layers_1"]["layer_1"]["convolution"][
        "kernel"
    ]
    assert not stem and last
    assert changed["prior_alignment"]["fc"]["kernel"] and changed["mesh_conv"]["w_self"]["kernel"]
