"""Stage `neurodiff3d`: the paper's model training pipeline around `models.neurodiff3d`.

The stage holds what is not the network: the model config read from the run config (and the
`config.json` of each pretrained folder), the eq 3 loss with the view mask, guided sampling,
the freeze mask, and the pretrained subtrees (host arrays, placed by the trainer straight into
their shardings).

Per example: the target is the K-view grid (OmniObject3D renders; Pix3D: its photo in slot 0,
the other slots masked out of the loss), encoded by the frozen VAE (or pooled pixels:
`model.vae.use=False`, the CPU demo); see `models/neurodiff3d.py` for the conditions.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os

import jax
import jax.numpy as jnp
import ml_collections

from nd3d_jax import diffusion, host_init
from nd3d_jax.errors import UserError
from nd3d_jax.models import conditioning as cond
from nd3d_jax.models.clip import CLIPConfig
from nd3d_jax.models.neurodiff3d import NeuroDiff3D, NeuroDiff3DConfig, example_batch
from nd3d_jax.models.resnet import ResNetConfig
from nd3d_jax.models.t2i_adapter import T2IAdapterConfig
from nd3d_jax.models.unet import UNetConfig
from nd3d_jax.models.unet_flops import unet_forward_flops
from nd3d_jax.models.vae import VAEConfig
from nd3d_jax.render.camera import Camera
from nd3d_jax.render.maps import color_image, grid_layout, normal_map, rasterize_views
from nd3d_jax.weights.paths import require_folder

LOG = logging.getLogger(__name__)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
SUB_MODELS = ("clip", "resnet", "unet", "adapter", "vae")


def model_config(config: ml_collections.ConfigDict) -> NeuroDiff3DConfig:
    """The network's config from the run config; sub-model sizes from each pretrained folder's
    config.json (resolved under `weights_dir` now, so overrides apply) or the inline dict."""
    m = config.model
    hf = {name: _hf_config(config, name) for name in SUB_MODELS}

    def parse(name: str, cls):  # a config the class refuses: one line naming its key
        try:
            return cls.from_hf(hf[name])
        except (TypeError, ValueError) as e:
            key = f"model.{name}.{'path' if m[name].path else 'config'}"
            raise UserError(f"{key}: {e}") from e

    clip = parse("clip", CLIPConfig)
    unet = dataclasses.replace(parse("unet", UNetConfig), remat=m.remat)
    c = NeuroDiff3DConfig(
        conditioning=cond.ConditioningConfig.from_pretrained(
            clip, parse("resnet", ResNetConfig), fusion_weights=tuple(m.fusion_weights)
        ),
        unet=unet,
        adapter=parse("adapter", T2IAdapterConfig),
        vae=parse("vae", VAEConfig) if m.vae.use else None,
        pixel_factor=m.pixel_factor,
        grid_rows=m.grid_rows,
        grid_cols=m.grid_cols,
        tile_size=m.tile_size,
        text_length=m.text_length,
        semantic_length=m.semantic_length,
        texture_size=m.texture_size,
        num_sampled_faces=m.num_sampled_faces,
        texture_noise_scale=m.texture_noise_scale,
        cond_dropout=m.cond_dropout,
        context_projection=m.context_projection,
    )
    if problems := c.problems():
        raise UserError("model config: " + "; ".join(problems))
    return c


def _hf_config(config: ml_collections.ConfigDict, name: str) -> dict:
    node = config.model[name]
    if node.path:
        w = config.get("weights_dir", "")
        folder = require_folder(w, node.path, f"model.{name}.path", kind=name)
        with open(os.path.join(folder, "config.json")) as f:
            return json.load(f)
    return node.config.to_dict()


def render_conditions(batch: dict, c: NeuroDiff3DConfig) -> tuple[jax.Array, jax.Array]:
    """(N (B, G, G, 3) in [-1, 1], T_hat (B, G, G, 3) in [0, 1]): the condition mesh's normal
    and colour maps in the K-view grid, from the batch's view cameras."""

    def one(v, f, colours, fmask, c2w, focal, principal):
        cams = Camera(c2w, focal, principal, c.tile_size, c.tile_size)
        frags = rasterize_views(cams, v, f, fmask > 0)
        normals = jax.vmap(lambda fr: normal_map(fr, v, f))(frags)
        rgb = jax.vmap(lambda fr: color_image(fr, f, colours))(frags)
        return grid_layout(normals, c.grid_rows), grid_layout(rgb, c.grid_rows)

    n, t = jax.vmap(one)(
        batch["mesh_vertices"],
        batch["mesh_faces"],
        batch["mesh_colors"],
        batch["mesh_face_mask"],
        batch["view_cameras/c2w"],
        batch["view_cameras/focal"],
        batch["view_cameras/principal"],
    )
    return jax.lax.stop_gradient(n), jax.lax.stop_gradient(t)


class NeuroDiff3DStage:
    """Everything the trainer needs: the module, pretrained parts, masks, loss, samples."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.model_config = model_config(config)
        self.model = NeuroDiff3D(self.model_config, DTYPES[config.model.dtype])
        self._abstract = None  # (boxed abstract params, their initializers)
        try:
            self.schedule = diffusion.make_schedule(diffusion.ScheduleConfig(**config.schedule))
        except (TypeError, ValueError) as e:
            raise UserError(f"schedule: {e}") from e
        abar_end = float(self.schedule.alphas_cumprod[-1])
        if abar_end > 0.01:
            LOG.warning(
                "the noise schedule ends at abar_T = %.3g, not pure noise: sampling starts from "
                "N(0, I), which training never saw (use more steps or a larger beta_end)",
                abar_end,
            )

    # ---------------------------------------------------------------- parameters
    def init(self, key: jax.Array, batch: dict | None = None):
        """`model.init` with one key per RNG stream (boxed, with logical axis names)."""
        k_params, k_noise, k_drop, k_lat = jax.random.split(key, 4)
        rngs = {"params": k_params, "noise": k_noise, "dropout": k_drop, "latent": k_lat}
        batch = example_batch(self.model_config) if batch is None else batch
        return self.model.init(rngs, batch)["params"]

    def abstract_params(self):
        """The boxed abstract parameter tree (shapes, dtypes, logical axis names)."""
        return self._traced_init()[0]

    def initializers(self) -> list[host_init.Record]:
        """Every parameter's path and the Flax initializer `init` calls for it."""
        return self._traced_init()[1]

    def _traced_init(self):
        """One abstract trace of `init` (seconds at the paper's sizes), kept."""
        if self._abstract is None:
            with host_init.record_initializers() as records:
                boxed = jax.eval_shape(self.init, jax.random.key(0))
            self._abstract = (boxed, records)
        return self._abstract

    def pretrained(self) -> dict[tuple[str, ...], dict]:
        """{path in the parameter tree: host (numpy) subtree} for every pretrained folder the
        config names; the trainer skips their random init and places these instead."""
        from nd3d_jax.weights import load_clip, load_resnet, load_t2i_adapter, load_unet, load_vae

        m, w = self.config.model, self.config.get("weights_dir", "")
        loaders = {
            ("conditioning", "clip"): ("clip", load_clip),
            ("conditioning", "texture_encoder", "resnet"): ("resnet", load_resnet),
            ("unet",): ("unet", load_unet),
            ("adapter",): ("adapter", load_t2i_adapter),
        }
        if m.vae.use:
            loaders[("vae",)] = ("vae", load_vae)
        out = {}
        for path, (name, loader) in loaders.items():
            if m[name].path:
                folder = require_folder(w, m[name].path, f"model.{name}.path", kind=name)
                variant = m[name].get("variant") or None  # configs from before the key: None
                out[path] = loader(folder, host=True, variant=variant)[1]
        return out

    def semantic_from_clip(self, semantic_params, clip_params):
        """The SemanticEncoder's token/position embeddings and first layers from CLIP's text
        encoder (docs/design.md); `semantic_params` may be sharded arrays."""
        from nd3d_jax.models.semantic_encoder import init_from_clip

        return init_from_clip(semantic_params, clip_params, self.model_config.conditioning.semantic)

    def trainable_mask(self, params) -> dict:
        """Frozen: CLIP, the VAE, the first 10 ResNet layers (+ `model.frozen` groups)."""
        mask = jax.tree.map(lambda _: True, params)
        mask["conditioning"] = cond.trainable_mask(
            params["conditioning"], self.model_config.conditioning
        )
        if "vae" in params:
            mask["vae"] = jax.tree.map(lambda _: False, params["vae"])
        for group in self.config.model.frozen:
            *parents, leaf = group.split(".")
            node = mask
            for p in parents:
                node = node[p]
            if leaf not in node:
                raise UserError(f"model.frozen: no parameter group {group!r}")
            node[leaf] = jax.tree.map(lambda _: False, node[leaf])
        return mask

    def parameter_groups(self, params, mask) -> dict[str, tuple[int, int]]:
        """{group: (trainable, frozen)} parameter counts (conditioning by its parts)."""
        out = {}
        for top in params:
            subs = params[top].items() if top == "conditioning" else [(None, params[top])]
            for sub, tree in subs:
                m = mask[top][sub] if sub else mask[top]
                sizes = jax.tree.leaves(jax.tree.map(lambda x, t: (x.size, t), tree, m))
                pairs = list(zip(sizes[::2], sizes[1::2], strict=True))
                name = f"{top}.{sub}" if sub else top
                out[name] = (sum(s for s, t in pairs if t), sum(s for s, t in pairs if not t))
        return out

    # ---------------------------------------------------------------- training
    def loss(self, params, batch, key):
        """Eq 3 over the grid latent with the view mask; returns (loss, metrics)."""
        k_lat, k_noise, k_drop, k_t, k_eps = jax.random.split(key, 5)
        apply = functools.partial(
            self.model.apply,
            {"params": params},
            rngs={"latent": k_lat, "noise": k_noise, "dropout": k_drop},
        )
        x0 = apply(batch["views"], method="encode")
        normals, t_hat = render_conditions(batch, self.model_config)
        f_fusion, features, _ = apply(batch, normals, t_hat, True, method="context")
        b = x0.shape[0]
        t = jax.random.randint(k_t, (b,), 0, self.schedule.num_train_timesteps)
        noise = jax.random.normal(k_eps, x0.shape, x0.dtype)
        x_t = diffusion.q_sample(self.schedule, x0, noise, t)
        pred = apply(x_t, t, f_fusion, features, method="denoise")
        mask = apply(batch["view_mask"], method="latent_view_mask")
        target = diffusion.training_target(self.schedule, x0, noise, t)
        loss = diffusion.diffusion_loss(pred, target, mask)
        return loss, {"loss": loss, "view_fraction": jnp.mean(batch["view_mask"])}

    def sample(self, params, batch, key, sample: ml_collections.ConfigDict) -> dict:
        """Guided samples of the grid (`sample`: num_steps, guidance, eta, clip, sampler);
        images, targets and normal maps in [0, 1]."""
        normals, t_hat = render_conditions(batch, self.model_config)
        out = self.sample_views(params, batch, normals, t_hat, key, sample)
        out["target"] = batch["views"].astype(jnp.float32) / 255.0
        return out

    def sample_views(self, params, batch, normals, t_hat, key, sample) -> dict:
        """The K-view grid sampled from the conditions (N, T_hat rendered by the caller):
        {"sample": decoded grid, "normals": N} in [0, 1]. `key` is one key, or one per example
        (shape (B,)): then each example's noise depends only on its key, so a batch gives
        the same samples however it is split over devices."""
        batched = diffusion.per_example_keys(key)
        if batched:
            k_x, k_s = jax.vmap(jax.random.split)(key).swapaxes(0, 1)
        else:
            k_x, k_s = jax.random.split(key)
        apply = functools.partial(self.model.apply, {"params": params})
        f_fusion, features, conditions = apply(batch, normals, t_hat, False, method="context")
        c = self.model_config
        shape = (c.latent_size, c.latent_size, c.latent_channels)

        model_fn = self.guided_denoiser(params, f_fusion, features, sample.guidance)
        if batched:
            x_T = jax.vmap(lambda k: jax.random.normal(k, shape))(k_x)
        else:
            x_T = jax.random.normal(k_x, (f_fusion.shape[0], *shape))
        x0 = diffusion.sample(
            model_fn,
            self.schedule,
            x_T,
            k_s,
            sample.num_steps,
            sampler=sample.get("sampler", "ddim"),
            eta=sample.eta,
            clip=sample.clip or None,
        )
        to01 = lambda x: jnp.clip((x + 1.0) / 2.0, 0.0, 1.0)  # noqa: E731
        return {"sample": to01(apply(x0, method="decode")), "normals": to01(conditions[..., :3])}

    def guided_denoiser(self, params, f_fusion, features, guidance):
        """model_fn(x_t, t) of one classifier-free-guided step: the UNet on the unconditional
        (zeroed f_fusion) and conditional halves of one doubled batch."""
        apply = functools.partial(self.model.apply, {"params": params})

        def model_fn(x, t):
            both = apply(
                jnp.concatenate([x, x]),
                jnp.concatenate([t, t]),
                jnp.concatenate([jnp.zeros_like(f_fusion), f_fusion]),
                [jnp.concatenate([f, f]) for f in features],
                method="denoise",
            )
            uncond, cond_ = jnp.split(both, 2)
            return diffusion.classifier_free_guidance(uncond, cond_, guidance)

        return model_fn

    def train_flops_per_example(self) -> float:
        """Analytic model FLOPs of one training example: 3 x the UNet forward (forward +
        backward), the dominant cost; conditioning and rendering are left out."""
        c = self.model_config
        return 3.0 * unet_forward_flops(c.unet, 1, c.latent_size, c.latent_size, c.text_length)
