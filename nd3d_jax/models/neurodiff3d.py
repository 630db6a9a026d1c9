"""The NeuroDiff3D model pipeline as one Linen module (paper, "Model training pipeline").

    N, T_hat = the condition mesh rendered in the K views (by the caller: `nd3d_jax.render`)
    T        = T_hat + eps                              eq 8 (train only, `texture_noise_scale`)
    f_fusion = Conditioning(text, image, faces, T)      M1 + M2, eq 9-12 (+ projection to the
                                                        UNet's cross-attention width)
    features = T2IAdapter([N, T])                       eq 13
    eps_hat  = UNet(x_t, t, f_fusion, features)         M3
    x        = VAE.decode(latent)                       M4 (or pixel space: the CPU demo)

Inputs are the fields of `data_pipelines.model_inputs`: uint8 images (normalised here, once:
CLIP's mean and std for CLIP, [-1, 1] for the VAE), tokens, cameras and the padded condition
mesh. RNG streams: 'noise' (eq 8), 'dropout' (classifier-free dropout of the context) and
'latent' (the VAE posterior sample).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nd3d_jax.models.conditioning import Conditioning, ConditioningConfig
from nd3d_jax.models.layers import dense
from nd3d_jax.models.priors import texture_noise
from nd3d_jax.models.t2i_adapter import T2IAdapter, T2IAdapterConfig
from nd3d_jax.models.unet import UNet, UNetConfig
from nd3d_jax.models.vae import AutoencoderKL, VAEConfig, sample_latent

# Paper, "Data preprocessing": CLIP's mean and std over [0, 1] pixel values.
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
# ResNet-18's pretraining (ImageNet) statistics, for the texture map T fed to f_tex
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


@dataclasses.dataclass(frozen=True)
class NeuroDiff3DConfig:
    conditioning: ConditioningConfig
    unet: UNetConfig
    adapter: T2IAdapterConfig
    vae: VAEConfig | None = None  # None: pixel space, average-pooled by `pixel_factor`
    pixel_factor: int = 8
    grid_rows: int = 2  # K = rows x cols views (docs/design.md: 2 x 2)
    grid_cols: int = 2
    tile_size: int = 256
    text_length: int = 77
    semantic_length: int = 64  # eq 9: maximum length 64
    texture_size: int = 256  # f_tex: "256x256x3 texture map"
    num_sampled_faces: int = 512  # f_struc: "totaling 512 sampled faces"
    texture_noise_scale: float = 0.1  # eq 8's eps scale
    cond_dropout: float = 0.1  # classifier-free guidance
    context_projection: bool = True  # f_fusion width -> the UNet's cross-attention width

    @property
    def grid_size(self) -> int:
        return self.tile_size * self.grid_cols

    @property
    def factor(self) -> int:
        return self.vae.downsample_factor if self.vae else self.pixel_factor

    @property
    def latent_size(self) -> int:
        return self.grid_size // self.factor

    @property
    def latent_channels(self) -> int:
        return self.vae.latent_channels if self.vae else 3

    @property
    def num_views(self) -> int:
        return self.grid_rows * self.grid_cols

    @property
    def projects_context(self) -> bool:
        width = self.conditioning.clip.projection_dim
        return self.context_projection and self.unet.cross_attention_dim != width

    def problems(self) -> list[str]:
        """Inconsistent sizes, as sentences (empty when the config fits together)."""
        u, a, out = self.unet, self.adapter, []
        if u.cross_attention_dim != self.conditioning.clip.projection_dim and not (
            self.context_projection
        ):
            out.append(
                f"unet cross_attention_dim {u.cross_attention_dim} != CLIP projection "
                f"{self.conditioning.clip.projection_dim} (f_fusion's width); set "
                "model.context_projection=True"
            )
        if u.in_channels != self.latent_channels:
            out.append(f"unet in_channels {u.in_channels} != latent {self.latent_channels}")
        if a.in_channels != 6:
            out.append(f"adapter in_channels {a.in_channels} != 6 (N and T maps)")
        if a.downscale_factor != self.factor:
            out.append(f"adapter downscale_factor {a.downscale_factor} != latent {self.factor}")
        if len(a.channels) != len(u.block_out_channels):
            out.append("adapter levels != UNet levels")
        if self.grid_rows != self.grid_cols:
            out.append(f"grid {self.grid_rows} x {self.grid_cols} is not square")
        if self.tile_size % self.factor:
            out.append(f"tile_size {self.tile_size} is not a multiple of the latent factor")
        if self.grid_size % (self.factor * 2 ** (len(u.block_out_channels) - 1)):
            out.append(f"grid size {self.grid_size} does not fit the latent factor and levels")
        if self.semantic_length > 64:
            out.append("semantic_length > 64 (paper: max length 64)")
        return out


def example_batch(c: NeuroDiff3DConfig, batch: int = 1, max_faces: int = 16) -> dict:
    """Zeros in the shapes and dtypes of `data_pipelines.model_inputs` (for init and tests)."""
    n, g, k = c.num_sampled_faces, c.grid_size, c.num_views
    image = c.conditioning.clip.vision.image_size
    return {
        "input_ids": jnp.zeros((batch, c.text_length), jnp.int32),
        "attention_mask": jnp.ones((batch, c.text_length), jnp.int32),
        "semantic_ids": jnp.zeros((batch, c.semantic_length), jnp.int32),
        "semantic_mask": jnp.ones((batch, c.semantic_length), jnp.int32),
        "image": jnp.zeros((batch, image, image, 3), jnp.uint8),
        "views": jnp.zeros((batch, g, g, 3), jnp.uint8),
        "view_mask": jnp.ones((batch, k), jnp.float32),
        "view_cameras/c2w": jnp.broadcast_to(jnp.eye(4), (batch, k, 4, 4)),
        "view_cameras/focal": jnp.full((batch, k), float(c.tile_size)),
        "view_cameras/principal": jnp.full((batch, k, 2), c.tile_size / 2.0),
        "mesh_vertices": jnp.zeros((batch, 3 * max_faces, 3)),
        "mesh_faces": jnp.zeros((batch, max_faces, 3), jnp.int32),
        "mesh_colors": jnp.zeros((batch, 3 * max_faces, 3)),
        "mesh_face_mask": jnp.zeros((batch, max_faces)),
        "faces/features": jnp.zeros((batch, n, 7)),
        "faces/neighbours": jnp.zeros((batch, n, 3, 7)),
        "faces/neighbour_mask": jnp.ones((batch, n, 3)),
        "faces/face_mask": jnp.ones((batch, n)),
    }


def clip_pixels(image: jax.Array, size: int) -> jax.Array:
    """uint8 (B, H, W, 3) -> CLIP's input: [0, 1], resized to `size`, mean/std normalised."""
    x = image.astype(jnp.float32) / 255.0
    x = jax.image.resize(x, (x.shape[0], size, size, 3), "bilinear")
    return (x - CLIP_MEAN) / CLIP_STD


def to_signed(image: jax.Array) -> jax.Array:
    """uint8 [0, 255] -> float [-1, 1] (the VAE's and the pixel-space UNet's range)."""
    return image.astype(jnp.float32) / 127.5 - 1.0


class NeuroDiff3D(nn.Module):
    config: NeuroDiff3DConfig
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        c = self.config
        self.conditioning = Conditioning(c.conditioning, self.dtype)
        self.adapter = T2IAdapter(c.adapter, self.dtype)
        self.unet = UNet(c.unet, self.dtype)
        self.vae = AutoencoderKL(c.vae, self.dtype) if c.vae else None
        if c.projects_context:
            self.context_proj = dense(
                c.unet.cross_attention_dim, ("embed", "mlp"), name="context_proj", dtype=self.dtype
            )

    def __call__(self, batch: dict) -> jax.Array:
        """Every sub-module once on `batch`'s shapes, without rendering (for `init`: the
        parameters do not depend on the rendered values)."""
        c = self.config
        b, g, t = batch["views"].shape[0], c.grid_size, c.texture_size
        conditions = jnp.zeros((b, g, g, 6), jnp.float32)
        f_fusion = self._fusion(batch, jnp.zeros((b, t, t, 3), jnp.float32))
        x0 = self.encode(batch["views"])
        pred = self.denoise(x0, jnp.zeros((b,), jnp.int32), f_fusion, self.adapter(conditions))
        return self.decode(pred)

    # ------------------------------------------------------------------ conditions
    def context(self, batch: dict, normals: jax.Array, t_hat: jax.Array, train: bool):
        """(f_fusion (B, L, D), the adapter's per-level features, the [N, T] conditions) from
        the batch and the condition mesh's rendered grids: normals N (B, G, G, 3) in [-1, 1]
        and colours T_hat (B, G, G, 3) in [0, 1]."""
        c = self.config
        t_map = t_hat
        if train and c.texture_noise_scale > 0:  # eq 8, the one place it is applied
            t_map = texture_noise(self.make_rng("noise"), t_hat, c.texture_noise_scale)
        conditions = jnp.concatenate([normals, t_map * 2.0 - 1.0], axis=-1)
        b = t_map.shape[0]
        texture = jax.image.resize(t_map, (b, c.texture_size, c.texture_size, 3), "bilinear")
        f_fusion = self._fusion(batch, texture)
        if train and c.cond_dropout > 0:
            keep = jax.random.uniform(self.make_rng("dropout"), (b, 1, 1)) >= c.cond_dropout
            f_fusion = jnp.where(keep, f_fusion, 0.0)
        return f_fusion, self.adapter(conditions), conditions

    def _fusion(self, batch: dict, texture_map: jax.Array) -> jax.Array:
        """f_fusion (eq 10-12), projected to the UNet's cross-attention width."""
        c = self.config
        inputs = {
            "input_ids": batch["input_ids"],
            "attention_mask": batch["attention_mask"],
            "semantic_ids": batch["semantic_ids"],
            "semantic_mask": batch["semantic_mask"],
            "pixel_values": clip_pixels(batch["image"], c.conditioning.clip.vision.image_size),
            "texture_map": (texture_map - IMAGENET_MEAN) / IMAGENET_STD,
            "faces": {k.split("/")[1]: v for k, v in batch.items() if k.startswith("faces/")},
        }
        f_fusion = self.conditioning(inputs)["f_fusion"]
        return self.context_proj(f_fusion) if c.projects_context else f_fusion

    # ------------------------------------------------------------------ diffusion
    def denoise(self, x_t, t, f_fusion, features) -> jax.Array:
        """The UNet's prediction (eps, x_0 or v, as the schedule trains it)."""
        return self.unet(x_t, t, f_fusion, features)

    def encode(self, views: jax.Array) -> jax.Array:
        """uint8 view grid -> scaled latent (a VAE posterior sample x scaling factor, or
        average-pooled pixels in [-1, 1])."""
        x = to_signed(views)
        if self.vae is None:
            b, g, _, ch = x.shape
            f = self.config.factor
            return x.reshape(b, g // f, f, g // f, f, ch).mean((2, 4))
        mean, logvar = self.vae.encode(x)
        z = sample_latent(self.make_rng("latent"), mean, logvar)
        return jax.lax.stop_gradient(z * self.vae.config.scaling_factor)

    def decode(self, latent: jax.Array) -> jax.Array:
        """Latent -> images in [-1, 1]."""
        if self.vae is None:
            f = self.config.factor
            return jnp.repeat(jnp.repeat(latent, f, axis=1), f, axis=2)
        return self.vae.decode(latent / self.vae.config.scaling_factor)

    def latent_view_mask(self, view_mask: jax.Array) -> jax.Array:
        """(B, K) -> (B, h, w, 1): each grid slot's latent tile."""
        c = self.config
        b, tile = view_mask.shape[0], self.config.latent_size // c.grid_cols
        grid = view_mask.reshape(b, c.grid_rows, 1, c.grid_cols, 1)
        grid = jnp.broadcast_to(grid, (b, c.grid_rows, tile, c.grid_cols, tile))
        return grid.reshape(b, c.grid_rows * tile, c.grid_cols * tile, 1)
