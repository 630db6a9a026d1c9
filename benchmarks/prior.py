"""`python -m nd3d_jax.benchmark prior`: Shap-E (P1) image-to-latent sampling and the field
query, ours beside diffusers (`ShapEImg2ImgPipeline`, `ShapERenderer`) with the same weights.

Random weights at the published `openai/shap-e-img2img` sizes (prior 24 x 1024, CLIP ViT-L/14
at 224 px, renderer defaults; `--quick`: the tiny presets) are built with diffusers and
transformers, saved with `save_pretrained` and loaded by our `load_shap_e`, so both sides run
the same weights on the same CPU in the same run. Before timing, each record checks ours
against the reference and names the max |ours - reference| in its shape.

- `shap_e_img2img_sample_*`: jitted `ShapE.sample_latents` (warm) beside the pipeline with
  `output_type="latent"` from the same noise (given as `noise * init_noise_sigma`: the img2img
  pipeline does not scale given latents) and the same preprocessed pixels (ours preprocesses
  the uint8 image on the host inside the timed call, the reference gets the tensor).
  Full: 1 Heun step (1 evaluation, batch 2 with guidance) on CPU; `benchmarks/gpu_prior.py`
  times the 64 steps on a GPU.
- `shap_e_field_query_R*`: SDF + colour (+ f_tex) of one latent at every point of the R^3 grid
  of `decode_to_mesh` (ours: `ShapE.query`, 65536-point chunks) beside diffusers' STF query as
  `decode_to_mesh` runs it (params projection, MLP weights copied in, `renderer.mlp` over
  chunks of 4096 points), and again with 65536-point chunks (ours' chunk size).

This module imports no `nd3d_jax.benchmark` at load time (that pulls `ml_collections`, absent
on the GPU machine): `benchmarks/gpu_prior.py` reuses the builders below.
"""

from __future__ import annotations

import os
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from configs import presets

FIELD_CHUNKS = (4096, 65536)  # torch: decode_to_mesh's query_batch_size, and ours' chunk


def sizes(quick: bool) -> dict:
    """Configs of the img2img pipeline: tiny presets or the published sizes."""
    if quick:
        prior = presets.derive(presets.TINY_SHAP_E_PRIOR, embedding_proj_norm_type="layer")
        return dict(
            tag="tiny",
            prior=prior,
            renderer=presets.TINY_SHAP_E_RENDERER,
            vision=presets.TINY_SHAP_E_VISION,
            processor=presets.TINY_SHAP_E_IMAGE_PROCESSOR,
        )
    return dict(
        tag="ViT-L14",
        prior=presets.SHAP_E_IMG2IMG_PRIOR,
        renderer=presets.SHAP_E_RENDERER,
        vision=presets.SHAP_E_VISION,
        processor=presets.SHAP_E_IMAGE_PROCESSOR,
    )


def _perturb(model, scale: float) -> None:
    """Every weight non-trivial (diffusers zero-inits the positional embedding and biases, HF
    sets LayerNorms to identity), so the parity check sees them all."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "layrnorm" in name:
                p.add_(0.1 * torch.randn_like(p))
            p.add_(scale * torch.randn_like(p))


def build_pipeline(quick: bool, device: str = "cpu", seed: int = 0):
    """A random diffusers `ShapEImg2ImgPipeline` (eval mode) built directly on `device`."""
    import torch
    from diffusers import HeunDiscreteScheduler, PriorTransformer, ShapEImg2ImgPipeline
    from diffusers.pipelines.shap_e import ShapERenderer
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    s = sizes(quick)
    torch.manual_seed(seed)
    with torch.device(device):
        prior = PriorTransformer(**s["prior"]).eval()
        renderer = ShapERenderer(**s["renderer"]).eval()
        encoder = CLIPVisionModel(CLIPVisionConfig(**s["vision"])).eval()
    _perturb(prior, 0.02)
    _perturb(renderer, 0.3 if quick else 0.02)  # tiny: a surface inside the unit cube
    _perturb(encoder, 0.02)
    with torch.no_grad():  # projected MLP weights of unit fan-in variance: a field of O(1)
        for proj in renderer.params_proj.projections.values():
            proj.norm.weight.div_(proj.norm.weight.shape[0] ** 0.5)
            proj.norm.bias.div_(proj.norm.bias.shape[0] ** 0.5)
    processor = CLIPImageProcessor(**s["processor"])
    pipe = ShapEImg2ImgPipeline(
        prior, encoder, processor, HeunDiscreteScheduler(**presets.SHAP_E_SCHEDULER), renderer
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_and_load(pipe, folder: str, dtype=jnp.float32):
    """Saves the torch pipeline into `folder` and loads it with our importer."""
    from nd3d_jax.prior import load_shap_e

    pipe.save_pretrained(folder, safe_serialization=True)
    return load_shap_e(folder, dtype)


def num_params(pipe) -> int:
    return sum(
        p.numel() for m in (pipe.prior, pipe.image_encoder, pipe.shap_e_renderer)
        for p in m.parameters()
    )  # fmt: skip


def sample_inputs(shap_e, batch: int, seed: int = 0):
    """(uint8 images (B, S, S, 3) at the encoder's size, their preprocessed pixels
    (B, 3, S, S) float32 numpy as the reference takes them, unit noise (B, T, D))."""
    rng = np.random.default_rng(seed)
    s = shap_e.encoder.config.image_size
    images = rng.integers(0, 256, size=(batch, s, s, 3), dtype=np.uint8)
    pixels = shap_e.image_processor(images).transpose(0, 3, 1, 2).copy()
    noise = rng.standard_normal((batch, *shap_e.latent_shape)).astype(np.float32)
    return images, pixels, noise


def init_noise_sigma(shap_e, num_steps: int) -> float:
    from nd3d_jax.diffusion.heun import heun_schedule

    return heun_schedule(shap_e.scheduler, num_steps).init_noise_sigma


def reference_sampler(pipe, pixels: np.ndarray, noise: np.ndarray, sigma: float, steps, guidance):
    """() -> latents (B, T, D) torch tensor: the diffusers img2img pipeline on the same inputs."""
    import torch

    device, dtype = pipe.prior.device, pipe.prior.dtype
    px = torch.from_numpy(pixels).to(device, dtype)
    latents = (torch.from_numpy(noise) * sigma).to(device, dtype)

    def run():
        with torch.inference_mode():
            return pipe(
                image=px,
                num_inference_steps=steps,
                latents=latents,
                guidance_scale=guidance,
                output_type="latent",
            ).images

    return run


def grid_points(resolution: int) -> np.ndarray:
    """(R^3, 3) float32: the query grid of diffusers' `decode_to_mesh` (`volume_query_points`
    over the renderer's [-1, 1]^3 box), x slowest."""
    i = np.arange(resolution, dtype=np.float32) / (resolution - 1) * 2 - 1
    x, y, z = np.meshgrid(i, i, i, indexing="ij")
    return np.stack([x, y, z], -1).reshape(-1, 3)


def reference_field(renderer, latent, points, chunk: int):
    """() -> SDF (1, N, 1): `decode_to_mesh` steps 1-3.1 (project the latent into the MLP
    weights, copy them in, query the STF field in chunks) on torch `latent` (1, T, D)."""
    import torch

    def run():
        with torch.inference_mode():
            projected = renderer.params_proj(latent)
            for name, param in renderer.mlp.state_dict().items():
                if f"nerstf.{name}" in projected:
                    param.copy_(projected[f"nerstf.{name}"].squeeze(0))
            out = []
            for i in range(0, points.shape[1], chunk):
                q = points[:, i : i + chunk]
                m = renderer.mlp(
                    position=q, direction=None, ts=None, nerf_level="fine", rendering_mode="stf"
                )
                out.append(m.signed_distance)
            return torch.cat(out, dim=1)

    return run


def reference_rgb(renderer, points):
    """STF colour at `points` (1, n, 3) with the weights `reference_field` copied in."""
    import torch

    with torch.inference_mode():
        m = renderer.mlp(
            position=points, direction=None, ts=None, nerf_level="fine", rendering_mode="stf"
        )
        return m.channels


def field_diffs(shap_e, renderer, latent: np.ndarray, points: np.ndarray, ref_sdf) -> dict:
    """max |ours - reference| of the SDF (ours is negated: negative inside) over every point and
    of the colour over the first 4096 points. `ref_sdf`: (1, N, 1) from `reference_field`
    (which leaves the projected weights in `renderer.mlp`)."""
    import torch

    sdf, rgb, _ = shap_e.query(latent[None], points)
    ref_sdf = ref_sdf.float().cpu().numpy().reshape(-1)
    n = min(4096, len(points))
    t_points = torch.from_numpy(points[None, :n]).to(renderer.mlp.dtype)
    device = next(renderer.parameters()).device
    ref_rgb = reference_rgb(renderer, t_points.to(device)).float().cpu().numpy()[0]
    return {
        "sdf": float(np.abs(np.asarray(sdf[0]) + ref_sdf).max()),
        "rgb": float(np.abs(np.asarray(rgb[0, :n]) - ref_rgb).max()),
    }


def _log(msg: str) -> None:
    print(f"[benchmark] prior: {msg}", file=sys.stderr, flush=True)


def _timing(opts) -> dict:
    """`measure` arguments: the parity check before each timing ran both sides once (compile
    included), so it counts as one warmup call."""
    return dict(warmup=max(opts.warmup - 1, 0), repeats=opts.repeats)


def _sample_record(opts, quick: bool, folder: str):
    from nd3d_jax.benchmark import Record, device_name, measure

    pipe = build_pipeline(quick)
    _log(f"{num_params(pipe):,} parameters; saving and loading")
    shap_e = save_and_load(pipe, folder)
    batch, steps, guidance = (2, 3, 3.0) if quick else (1, 1, 3.0)
    images, pixels, noise = sample_inputs(shap_e, batch)
    sigma = init_noise_sigma(shap_e, steps)
    ref_fn = reference_sampler(pipe, pixels, noise, sigma, steps, guidance)

    def ours_fn():
        return shap_e.sample_latents(
            image=images, num_steps=steps, guidance=guidance, initial_noise=noise
        )

    _log("parity check")
    ours_latents = np.asarray(ours_fn())
    diff = float(np.abs(ours_latents - ref_fn().float().numpy()).max())
    _log(f"sample: max |ours - diffusers| = {diff:.3g}")
    m = _timing(opts)
    _log("timing diffusers sampling")
    ref = measure(ref_fn, **m)
    _log("timing our sampling")
    ours = measure(ours_fn, **m)
    v = shap_e.encoder.config
    evals = 2 * steps - 1
    record = Record(
        name=f"shap_e_img2img_sample_{sizes(quick)['tag']}",
        device=device_name(),
        shape=(
            f"batch {batch}, {steps} Heun steps ({evals} evals x batch {2 * batch} cfg), "
            f"{v.image_size}px, max|ours-ref| {diff:.2g}"
        ),
        median_s=ours,
        repeats=opts.repeats,
        throughput=batch / ours,
        throughput_unit="objects/s",
        reference="diffusers ShapEImg2ImgPipeline output_type=latent (torch CPU)",
        reference_median_s=ref,
    )
    return record, shap_e, pipe, ours_latents[0].copy()


def _field_records(opts, quick: bool, shap_e, pipe, latent: np.ndarray):
    import torch

    from nd3d_jax.benchmark import Record, device_name, measure

    resolution = 32 if quick else 128
    points = grid_points(resolution)
    renderer = pipe.shap_e_renderer
    t_latent = torch.from_numpy(latent[None])
    t_points = torch.from_numpy(points[None])
    m = _timing(opts)
    j_latent, j_points = jnp.asarray(latent[None]), jax.device_put(points)
    diffs = field_diffs(shap_e, renderer, latent, points, reference_field(
        renderer, t_latent, t_points, FIELD_CHUNKS[-1])())  # fmt: skip
    _log(f"field R={resolution}: max |ours - diffusers| sdf {diffs['sdf']:.3g}, "
         f"rgb {diffs['rgb']:.3g}")  # fmt: skip
    _log("timing our field query")
    ours = measure(lambda: shap_e.query(j_latent, j_points), **m)
    records = []
    for chunk in FIELD_CHUNKS:
        _log(f"timing diffusers field query, chunk {chunk}")
        ref = measure(reference_field(renderer, t_latent, t_points, chunk), **m)
        records.append(
            Record(
                name=f"shap_e_field_query_R{resolution}_torch_chunk{chunk}",
                device=device_name(),
                shape=(
                    f"1 latent, {len(points)} points, ours chunk {shap_e.settings.chunk}, "
                    f"max|ours-ref| sdf {diffs['sdf']:.2g} rgb {diffs['rgb']:.2g}"
                ),
                median_s=ours,
                repeats=opts.repeats,
                throughput=len(points) / ours,
                throughput_unit="points/s",
                reference=f"diffusers decode_to_mesh STF query, chunk {chunk} (torch CPU)",
                reference_median_s=ref,
            )
        )
    return records


def suite(opts) -> list:
    with tempfile.TemporaryDirectory() as folder:
        record, shap_e, pipe, latent = _sample_record(opts, opts.quick, os.path.join(folder, "p"))
    return [record, *_field_records(opts, opts.quick, shap_e, pipe, latent)]
