"""Stage `neurodiff3d`: the paper's model training pipeline (section "Model training pipeline").

Per example:
  target   the K-view grid of the object (OmniObject3D renders; Pix3D: its one photo in slot 0,
           the other slots masked out of the loss), encoded by the frozen VAE (or, with
           `model.vae.use=False`, average-pooled pixels: the CPU demo)
  N, T     normal maps and colour maps (T = T_hat + eps, eq 8) of the example's condition mesh,
           rendered in the same grid by `nd3d_jax.render` -> the T2I-Adapter (eq 13)
  priors   f_struc (512 sampled faces), f_tex (T resized to the texture size), S and f_sem from
           the caption, fused with CLIP text and image tokens (eq 10-12) -> cross-attention
  loss     eq 3 on the grid latent, noise predicted by the UNet + adapter; the context is
           dropped to zeros with probability `cond_dropout` (classifier-free guidance)
"""

from __future__ import annotations

import dataclasses
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from nd3d_jax import diffusion
from nd3d_jax.models import conditioning as cond
from nd3d_jax.models.clip import CLIPConfig
from nd3d_jax.models.resnet import ResNetConfig
from nd3d_jax.models.t2i_adapter import T2IAdapter, T2IAdapterConfig
from nd3d_jax.models.unet import UNet, UNetConfig
from nd3d_jax.models.unet_flops import unet_forward_flops
from nd3d_jax.models.vae import AutoencoderKL, VAEConfig
from nd3d_jax.render.camera import Camera
from nd3d_jax.render.maps import color_image, grid_layout, normal_map, rasterize_views

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
GROUPS = ("clip", "vae", "resnet_frozen", "conditioning", "adapter", "unet")


def _dtype(name: str):
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


@dataclasses.dataclass
class Modules:
    conditioning: cond.Conditioning
    unet: UNet
    adapter: T2IAdapter
    vae: AutoencoderKL | None


class NeuroDiff3D:
    """Everything the trainer needs from a stage: init, masks, host batches, loss, samples."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        m = config.model
        dtype = _dtype(m.dtype)
        clip_cfg = CLIPConfig.from_hf(_hf_config(m.clip))
        resnet_cfg = ResNetConfig.from_hf(_hf_config(m.resnet))
        cond_cfg = cond.ConditioningConfig.from_pretrained(
            clip_cfg,
            resnet_cfg,
            texture_noise_scale=m.texture_noise_scale,
            fusion_weights=tuple(m.fusion_weights),
        )
        unet_cfg = dataclasses.replace(UNetConfig.from_hf(_hf_config(m.unet)), remat=m.remat)
        adapter_cfg = T2IAdapterConfig.from_hf(_hf_config(m.adapter))
        vae = AutoencoderKL(VAEConfig.from_hf(_hf_config(m.vae)), dtype) if m.vae.use else None
        self.modules = Modules(
            cond.Conditioning(cond_cfg, dtype),
            UNet(unet_cfg, dtype),
            T2IAdapter(adapter_cfg, dtype),
            vae,
        )
        self.schedule = diffusion.make_schedule(diffusion.ScheduleConfig(**config.schedule))
        self.grid_size = m.tile_size * m.grid_cols
        self.factor = vae.config.downsample_factor if vae else m.pixel_factor
        self.latent_size = self.grid_size // self.factor
        self.latent_channels = vae.config.latent_channels if vae else 3
        # f_fusion (CLIP width, 512) -> the UNet's cross-attention width (768 for SD 1.5)
        self.context_proj = None
        if m.context_projection and unet_cfg.cross_attention_dim != clip_cfg.projection_dim:
            from nd3d_jax.models.layers import dense

            self.context_proj = dense(
                unet_cfg.cross_attention_dim, ("embed", "mlp"), name="context_proj", dtype=dtype
            )
        self._check(clip_cfg, unet_cfg, adapter_cfg)

    def _check(self, clip_cfg, unet_cfg, adapter_cfg) -> None:
        m = self.config.model
        problems = []
        if unet_cfg.cross_attention_dim != clip_cfg.projection_dim and not m.context_projection:
            problems.append(
                f"unet cross_attention_dim {unet_cfg.cross_attention_dim} != CLIP projection "
                f"{clip_cfg.projection_dim} (f_fusion's width); set model.context_projection"
            )
        if unet_cfg.in_channels != self.latent_channels:
            problems.append(
                f"unet in_channels {unet_cfg.in_channels} != latent {self.latent_channels}"
            )
        if adapter_cfg.in_channels != 6:
            problems.append(f"adapter in_channels {adapter_cfg.in_channels} != 6 (N and T maps)")
        if adapter_cfg.downscale_factor != self.factor:
            problems.append(
                f"adapter downscale_factor {adapter_cfg.downscale_factor} != latent factor "
                f"{self.factor}"
            )
        if len(adapter_cfg.channels) != len(unet_cfg.block_out_channels):
            problems.append("adapter levels != UNet levels")
        if self.grid_size % (self.factor * 2 ** (len(unet_cfg.block_out_channels) - 1)):
            problems.append(f"grid size {self.grid_size} does not fit the latent factor and levels")
        if m.semantic_length > 64:
            problems.append("semantic_length > 64 (paper: max length 64)")
        if problems:
            raise ValueError("model config: " + "; ".join(problems))
        abar_end = float(self.schedule.alphas_cumprod[-1])
        if abar_end > 0.01:
            import logging

            logging.getLogger(__name__).warning(
                "the noise schedule ends at abar_T = %.3g, not pure noise: sampling starts from "
                "N(0, I), which training never saw (use more steps or a larger beta_end)",
                abar_end,
            )

    # ---------------------------------------------------------------- parameters
    def _example_inputs(self, batch: int = 1) -> dict:
        m, c = self.config.model, self.modules.conditioning.config
        n, g = m.num_sampled_faces, self.grid_size
        return {
            "input_ids": jnp.zeros((batch, m.text_length), jnp.int32),
            "attention_mask": jnp.ones((batch, m.text_length), jnp.int32),
            "semantic_ids": jnp.zeros((batch, m.semantic_length), jnp.int32),
            "semantic_mask": jnp.ones((batch, m.semantic_length), jnp.int32),
            "pixel_values": jnp.zeros(
                (batch, c.clip.vision.image_size, c.clip.vision.image_size, 3)
            ),
            "texture_map": jnp.zeros((batch, m.texture_size, m.texture_size, 3)),
            "faces": {
                "features": jnp.zeros((batch, n, 7)),
                "neighbours": jnp.zeros((batch, n, 3, 7)),
                "neighbour_mask": jnp.ones((batch, n, 3)),
                "face_mask": jnp.ones((batch, n)),
            },
            "grid": jnp.zeros((batch, g, g, 3)),
            "conditions": jnp.zeros((batch, g, g, 6)),
        }

    def _init(self, key):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        x = self._example_inputs()
        mods = self.modules
        variables = {
            "conditioning": mods.conditioning.init(k1, x)["params"],
            "adapter": mods.adapter.init(k2, x["conditions"])["params"],
        }
        latent = jnp.zeros((1, self.latent_size, self.latent_size, self.latent_channels))
        ctx = jnp.zeros((1, self.config.model.text_length, mods.unet.config.cross_attention_dim))
        variables["unet"] = mods.unet.init(k3, latent, jnp.zeros((1,), jnp.int32), ctx)["params"]
        if mods.vae is not None:
            variables["vae"] = mods.vae.init(k4, x["grid"])["params"]
        if self.context_proj is not None:
            width = self.modules.conditioning.config.clip.projection_dim
            variables["context_proj"] = self.context_proj.init(k4, jnp.zeros((1, 1, width)))[
                "params"
            ]
        return variables

    def abstract_params(self):
        """The boxed (logical axis names) abstract parameter tree."""
        return jax.eval_shape(self._init, jax.random.PRNGKey(0))

    def init_params(self, key) -> dict:
        """Random init, then every pretrained folder the config names (CLIP, ResNet, UNet,
        T2I-Adapter, VAE) loaded through the importers; the SemanticEncoder's first 4 layers
        from CLIP's text encoder."""
        from nd3d_jax.weights import diffusers, load_clip, load_resnet

        params = nn.unbox(jax.jit(self._init)(key))
        m = self.config.model
        c = params["conditioning"]
        if m.clip.path:
            clip_params = load_clip(m.clip.path)[1]
            resnet_params = (
                load_resnet(m.resnet.path)[1] if m.resnet.path else c["texture_encoder"]["resnet"]
            )
            params["conditioning"] = cond.load_pretrained(
                c, clip_params, resnet_params, self.modules.conditioning.config
            )
        elif m.resnet.path:
            c["texture_encoder"] = {**c["texture_encoder"], "resnet": load_resnet(m.resnet.path)[1]}
        for name, loader in (
            ("unet", diffusers.load_unet),
            ("adapter", diffusers.load_t2i_adapter),
            ("vae", diffusers.load_vae),
        ):
            path = m[name].path
            if path and (name != "vae" or m.vae.use):
                params[name] = loader(path)[1]
        return params

    def trainable_mask(self, params) -> dict:
        """Frozen: CLIP, the VAE, the first 10 ResNet layers (+ `model.frozen` groups)."""
        mask = {
            "conditioning": cond.trainable_mask(
                params["conditioning"], self.modules.conditioning.config
            ),
            "adapter": jax.tree.map(lambda _: True, params["adapter"]),
            "unet": jax.tree.map(lambda _: True, params["unet"]),
        }
        if "vae" in params:
            mask["vae"] = jax.tree.map(lambda _: False, params["vae"])
        if "context_proj" in params:
            mask["context_proj"] = jax.tree.map(lambda _: True, params["context_proj"])
        for group in self.config.model.frozen:
            top, _, sub = group.partition(".")
            node = mask[top] if not sub else mask[top][sub]
            frozen = jax.tree.map(lambda _: False, node)
            if sub:
                mask[top] = {**mask[top], sub: frozen}
            else:
                mask[top] = frozen
        return mask

    def parameter_groups(self, params, mask) -> dict[str, tuple[int, int]]:
        """{group: (trainable, frozen)} parameter counts."""
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

    # ---------------------------------------------------------------- host side
    def host_batch(self, batch: dict, tokenizer) -> dict:
        """Loader batch (numpy, strings) -> the numeric arrays the device step takes."""
        m = self.config.model
        rows, cols, tile = m.grid_rows, m.grid_cols, m.tile_size
        k = rows * cols
        text = tokenizer(list(batch["caption"]), max_length=m.text_length)
        sem = tokenizer(list(batch["caption"]), max_length=m.semantic_length)
        image = np.asarray(batch["image"], np.float32)
        b = image.shape[0]
        out = {
            "input_ids": text["input_ids"],
            "attention_mask": text["attention_mask"],
            "semantic_ids": sem["input_ids"],
            "semantic_mask": sem["attention_mask"],
            "image": image,
            "mesh_vertices": batch["mesh_vertices"],
            "mesh_faces": batch["mesh_faces"],
            "mesh_colors": batch["mesh_colors"],
            "mesh_face_mask": batch["mesh_face_mask"],
        }
        for key in ("features", "neighbours", "neighbour_mask", "face_mask"):
            out[f"faces/{key}"] = batch[f"faces/{key}"]
        if "views" in batch:  # OmniObject3D: K rendered views in the grid
            grid = _resize(np.asarray(batch["views"], np.float32), self.grid_size)
            c2w = batch["view_cameras/c2w"]
            scale = tile / (batch["views"].shape[2] / cols)
            focal = batch["view_cameras/focal"] * scale
            principal = batch["view_cameras/principal"] * scale
            view_mask = np.ones((b, k), np.float32)
        else:  # Pix3D: the photo in slot 0, the other slots masked out of the loss
            grid = np.zeros((b, self.grid_size, self.grid_size, 3), np.float32)
            grid[:, :tile, :tile] = _resize(image, tile)
            grid[:, tile:] = grid[:, :tile, tile:] = _NORMALISED_WHITE
            scale = tile / image.shape[2]
            c2w = np.repeat(batch["camera/c2w"][:, None], k, axis=1)
            focal = np.repeat(batch["camera/focal"][:, None] * scale, k, axis=1)
            principal = np.repeat(batch["camera/principal"][:, None] * scale, k, axis=1)
            view_mask = np.zeros((b, k), np.float32)
            view_mask[:, 0] = 1.0
        out.update(
            grid=(grid * CLIP_STD + CLIP_MEAN) * 2.0 - 1.0,  # the VAE's [-1, 1]
            view_mask=view_mask,
            **{"cameras/c2w": c2w, "cameras/focal": focal, "cameras/principal": principal},
        )
        return {k: np.asarray(v) for k, v in out.items()}

    # ---------------------------------------------------------------- device side
    def render_conditions(self, batch: dict) -> tuple[jax.Array, jax.Array]:
        """(N grid (B, G, G, 3) in [-1, 1], T_hat grid (B, G, G, 3) in [0, 1]) of the mesh."""
        m = self.config.model
        tile = m.tile_size

        def one(v, f, colours, fmask, c2w, focal, principal):
            cams = Camera(c2w, focal, principal, tile, tile)
            frags = rasterize_views(cams, v, f, fmask > 0)
            normals = jax.vmap(lambda fr: normal_map(fr, v, f))(frags)
            rgb = jax.vmap(lambda fr: color_image(fr, f, colours))(frags)
            return grid_layout(normals, m.grid_rows), grid_layout(rgb, m.grid_rows)

        n, t = jax.vmap(one)(
            batch["mesh_vertices"],
            batch["mesh_faces"],
            batch["mesh_colors"],
            batch["mesh_face_mask"],
            batch["cameras/c2w"],
            batch["cameras/focal"],
            batch["cameras/principal"],
        )
        return jax.lax.stop_gradient(n), jax.lax.stop_gradient(t)

    def encode(self, params, grid, key) -> jax.Array:
        """Grid in [-1, 1] -> scaled latent (VAE sample x scaling factor, or pooled pixels)."""
        vae = self.modules.vae
        if vae is None:
            b, g, _, ch = grid.shape
            f = self.factor
            return grid.reshape(b, g // f, f, g // f, f, ch).mean((2, 4))
        mean, logvar = vae.apply({"params": params["vae"]}, grid, method="encode")
        from nd3d_jax.models.vae import sample_latent

        return jax.lax.stop_gradient(sample_latent(key, mean, logvar) * vae.config.scaling_factor)

    def decode(self, params, latent) -> jax.Array:
        vae = self.modules.vae
        if vae is None:
            f = self.factor
            return jnp.repeat(jnp.repeat(latent, f, axis=1), f, axis=2)
        return vae.apply(
            {"params": params["vae"]}, latent / vae.config.scaling_factor, method="decode"
        )

    def context(self, params, batch, key, train: bool):
        """f_fusion (B, L, D), the adapter features and the rendered condition grids."""
        m = self.config.model
        k_tex, k_drop = jax.random.split(key)
        normals, colours = self.render_conditions(batch)
        t_map = diffusion_texture(colours, k_tex, m.texture_noise_scale if train else 0.0)
        conditions = jnp.concatenate([normals, t_map * 2.0 - 1.0], axis=-1)
        clip_size = self.modules.conditioning.config.clip.vision.image_size
        b = batch["image"].shape[0]
        inputs = {
            "input_ids": batch["input_ids"],
            "attention_mask": batch["attention_mask"],
            "semantic_ids": batch["semantic_ids"],
            "semantic_mask": batch["semantic_mask"],
            "pixel_values": jax.image.resize(
                batch["image"], (b, clip_size, clip_size, 3), "bilinear"
            ),
            "texture_map": jax.image.resize(
                t_map, (b, m.texture_size, m.texture_size, 3), "bilinear"
            ),
            "faces": {k.split("/")[1]: v for k, v in batch.items() if k.startswith("faces/")},
        }
        f_fusion = self.modules.conditioning.apply({"params": params["conditioning"]}, inputs)[
            "f_fusion"
        ]
        if self.context_proj is not None:
            f_fusion = self.context_proj.apply({"params": params["context_proj"]}, f_fusion)
        if train and m.cond_dropout > 0:
            keep = jax.random.uniform(k_drop, (b, 1, 1)) >= m.cond_dropout
            f_fusion = jnp.where(keep, f_fusion, 0.0)
        features = self.modules.adapter.apply({"params": params["adapter"]}, conditions)
        return f_fusion, features, conditions

    def loss(self, params, batch, key):
        """Eq 3 over the grid latent with the view mask; returns (loss, metrics)."""
        k_lat, k_ctx, k_t, k_eps = jax.random.split(key, 4)
        x0 = self.encode(params, batch["grid"], k_lat)
        f_fusion, features, _ = self.context(params, batch, k_ctx, train=True)
        b = x0.shape[0]
        t = jax.random.randint(k_t, (b,), 0, self.schedule.num_train_timesteps)
        noise = jax.random.normal(k_eps, x0.shape, x0.dtype)
        x_t = diffusion.q_sample(self.schedule, x0, noise, t)
        pred = self.modules.unet.apply({"params": params["unet"]}, x_t, t, f_fusion, features)
        mask = self.latent_view_mask(batch["view_mask"])
        loss = diffusion.diffusion_loss(
            pred, diffusion.training_target(self.schedule, x0, noise, t), mask
        )
        return loss, {"loss": loss, "view_fraction": jnp.mean(batch["view_mask"])}

    def latent_view_mask(self, view_mask: jax.Array) -> jax.Array:
        """(B, K) -> (B, h, w, 1): each grid slot's latent tile."""
        m = self.config.model
        b = view_mask.shape[0]
        tile = self.latent_size // m.grid_cols
        grid = view_mask.reshape(b, m.grid_rows, 1, m.grid_cols, 1)
        grid = jnp.broadcast_to(grid, (b, m.grid_rows, tile, m.grid_cols, tile))
        return grid.reshape(b, m.grid_rows * tile, m.grid_cols * tile, 1)

    def sample(self, params, batch, key, num_steps: int, guidance: float) -> dict:
        """DDIM samples of the grid with classifier-free guidance; images in [0, 1]."""
        k_ctx, k_x, k_s = jax.random.split(key, 3)
        f_fusion, features, conditions = self.context(params, batch, k_ctx, train=False)
        b = f_fusion.shape[0]
        shape = (b, self.latent_size, self.latent_size, self.latent_channels)
        unet = self.modules.unet

        def model_fn(x, t):
            both = unet.apply(
                {"params": params["unet"]},
                jnp.concatenate([x, x]),
                jnp.concatenate([t, t]),
                jnp.concatenate([jnp.zeros_like(f_fusion), f_fusion]),
                [jnp.concatenate([f, f]) for f in features],
            )
            uncond, cond_ = jnp.split(both, 2)
            return diffusion.classifier_free_guidance(uncond, cond_, guidance)

        clip = self.config.train.clip_sample or None
        x_T = jax.random.normal(k_x, shape)
        x0 = diffusion.sample(model_fn, self.schedule, x_T, k_s, num_steps, clip=clip)
        to01 = lambda x: jnp.clip((x + 1.0) / 2.0, 0.0, 1.0)  # noqa: E731
        return {
            "sample": to01(self.decode(params, x0)),
            "target": to01(batch["grid"]),
            "normals": to01(conditions[..., :3]),
        }

    def train_flops_per_example(self) -> float:
        """Analytic model FLOPs of one training example: 3 x the UNet forward (forward +
        backward), the dominant cost; conditioning and rendering are left out."""
        return 3.0 * unet_forward_flops(
            self.modules.unet.config,
            1,
            self.latent_size,
            self.latent_size,
            self.config.model.text_length,
        )


_NORMALISED_WHITE = (1.0 - CLIP_MEAN) / CLIP_STD


def diffusion_texture(t_hat: jax.Array, key, scale: float) -> jax.Array:
    """Eq 8 on the rendered colour grid: T = T_hat + eps (scaled)."""
    return cond.texture_noise(key, t_hat, scale) if scale > 0 else t_hat


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """Box-downsample (B, S, S, C) by an integer factor (or return as is)."""
    s = images.shape[1]
    if s == size:
        return images
    if s % size:
        raise ValueError(f"cannot resize {s} px to {size} px by an integer factor")
    f = s // size
    b, _, _, c = images.shape
    return images.reshape(b, size, f, size, f, c).mean((2, 4))


def _hf_config(node: ml_collections.ConfigDict) -> dict:
    """A sub-model's Hugging Face config: `path/config.json` if a folder is given, else the
    inline `config` dict (random init)."""
    import json

    if node.path:
        path = os.path.join(node.path, "config.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"weights folder {node.path!r} has no config.json")
        with open(path) as f:
            return json.load(f)
    return node.config.to_dict()
