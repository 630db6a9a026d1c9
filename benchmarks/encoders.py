"""`python -m nd3d_jax.benchmark encoders`: CLIP and the prior + fusion forward beside PyTorch.

Random weights at the paper's shapes (CLIP ViT-B/32, ResNet-18, batch 8; `--quick`: tiny
configs) are built with transformers, saved, and loaded by our importer, so both sides run the
same weights on the same CPU in the same run. The prior + fusion reference is the sum of the
transformers parts it contains (CLIP text + vision, ResNet-18): our extra modules (semantic
encoder, MeshConv, gating, alignment, eq 10-12) have no PyTorch counterpart, so its ratio is
an upper bound on ours / theirs.
"""

from __future__ import annotations

import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from configs import presets
from nd3d_jax.benchmark import BenchOptions, Record, device_name, measure


def _models(quick: bool, folder: str):
    import torch
    from transformers import CLIPConfig, CLIPModel, ResNetConfig, ResNetModel

    from nd3d_jax.weights import load_clip, load_resnet

    torch.manual_seed(0)
    clip_config = presets.TINY_CLIP if quick else presets.CLIP_B32
    resnet_config = presets.TINY_RESNET if quick else presets.RESNET_18
    t_clip = CLIPModel(CLIPConfig(**clip_config)).eval()
    t_resnet = ResNetModel(ResNetConfig(**resnet_config)).eval()
    t_clip.save_pretrained(f"{folder}/clip")
    t_resnet.save_pretrained(f"{folder}/resnet")
    return t_clip, t_resnet, load_clip(f"{folder}/clip"), load_resnet(f"{folder}/resnet")


def _record(name, shape, median, batch, opts, ref_name, ref):
    return Record(
        name=name,
        device=device_name(),
        shape=shape,
        median_s=median,
        repeats=opts.repeats,
        throughput=batch / median,
        throughput_unit="examples/s",
        reference=ref_name,
        reference_median_s=ref,
    )


def suite(opts: BenchOptions) -> list[Record]:
    import torch
    from flax import linen as nn

    from nd3d_jax.models import conditioning as cond

    batch, texture = (2, 64) if opts.quick else (8, 256)
    with tempfile.TemporaryDirectory() as folder:
        t_clip, t_resnet, (clip, clip_p), (resnet, resnet_p) = _models(opts.quick, folder)
    c = clip.config
    rng = np.random.default_rng(0)
    n_text = c.text.max_position_embeddings
    ids = rng.integers(0, c.text.vocab_size - 2, size=(batch, n_text)).astype(np.int32)
    ids[:, -1] = c.text.eos_token_id
    mask = np.ones_like(ids)
    px = rng.normal(size=(batch, c.vision.image_size, c.vision.image_size, 3)).astype(np.float32)
    tex = rng.random((batch, texture, texture, 3)).astype(np.float32)
    t_ids, t_mask = torch.from_numpy(ids).long(), torch.from_numpy(mask).long()
    t_px = torch.from_numpy(px.transpose(0, 3, 1, 2).copy())
    t_tex = torch.from_numpy(tex.transpose(0, 3, 1, 2).copy())
    j_ids, j_mask, j_px = jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(px)
    m = dict(warmup=opts.warmup, repeats=opts.repeats)
    tag = "tiny" if opts.quick else "ViT-B/32"
    records = []

    text_fn = jax.jit(lambda p, i, a: clip.apply({"params": p}, i, a, method="encode_text"))
    image_fn = jax.jit(lambda p, x: clip.apply({"params": p}, x, method="encode_image"))
    with torch.inference_mode():
        ref_text = measure(
            lambda: t_clip.get_text_features(input_ids=t_ids, attention_mask=t_mask), **m
        )
        ref_image = measure(lambda: t_clip.get_image_features(pixel_values=t_px), **m)
        ref_resnet = measure(lambda: t_resnet(t_tex), **m)
    ours_text = measure(lambda: text_fn(clip_p, j_ids, j_mask), **m)
    ours_image = measure(lambda: image_fn(clip_p, j_px), **m)
    ref = "transformers CLIPModel.get_{}_features (torch CPU)"
    text_shape = f"batch {batch} x {n_text} tokens"
    image_shape = f"batch {batch} x {c.vision.image_size}^2"
    records.append(
        _record(
            f"clip_text_{tag}", text_shape, ours_text, batch, opts, ref.format("text"), ref_text
        )
    )
    records.append(
        _record(
            f"clip_image_{tag}",
            image_shape,
            ours_image,
            batch,
            opts,
            ref.format("image"),
            ref_image,
        )
    )

    config = cond.ConditioningConfig.from_pretrained(c, resnet.config)
    module = cond.Conditioning(config)
    sem_len = config.semantic.max_length
    faces = {
        "features": rng.normal(size=(batch, 512, 7)),
        "neighbours": rng.normal(size=(batch, 512, 3, 7)),
        "neighbour_mask": np.ones((batch, 512, 3)),
        "face_mask": np.ones((batch, 512)),
    }
    inputs = {
        "input_ids": j_ids,
        "attention_mask": j_mask,
        "semantic_ids": j_ids[:, :sem_len].at[:, -1].set(c.text.eos_token_id),
        "semantic_mask": j_mask[:, :sem_len],
        "pixel_values": j_px,
        "texture_map": jnp.asarray(tex),
        "faces": jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), faces),
    }
    params = jax.jit(lambda: nn.unbox(module.init(jax.random.PRNGKey(0), inputs))["params"])()
    params = cond.load_pretrained(params, clip_p, resnet_p, config)
    forward = jax.jit(lambda p, b: module.apply({"params": p}, b)["f_fusion"])
    ours = measure(lambda: forward(params, inputs), **m)
    shape = f"batch {batch}, texture {texture}^2, 512 faces"
    ref_sum = ref_text + ref_image + ref_resnet
    parts = "torch CLIP text + image + ResNet-18 only (sum)"
    records.append(_record(f"priors_fusion_{tag}", shape, ours, batch, opts, parts, ref_sum))
    return records
