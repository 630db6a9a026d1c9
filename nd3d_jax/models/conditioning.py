"""M1 + M2 of docs/design.md: the priors and their fusion into the UNet's cross-attention context.

    f_struc = MeshConv(512 sampled faces)                      128
    f_tex   = FC(ResNet-18(T)),  T = T_hat + eps (eq 8, added by the caller)  128
    f_sem   = sigmoid(W_g SemanticEncoder(text) + b_g)         128   (eq 9)
    f_prior_align = FC(concat)                                 384 -> 512
    f_fusion = eq 10-12 over CLIP text tokens and CLIP image tokens  (B, L_text, 512)

Frozen by default (`trainable_mask`): CLIP, and the first 10 ResNet layers (stem + first nine
convolutions, docs/design.md); everything else trains.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from nd3d_jax.models import resnet as resnet_lib
from nd3d_jax.models.clip import CLIPConfig, CLIPModel
from nd3d_jax.models.mesh_conv import F_STRUC_DIM, MeshConv
from nd3d_jax.models.priors import (
    F_SEM_DIM,
    F_TEX_DIM,
    FUSION_WEIGHTS,
    PriorAlignment,
    SemanticGating,
    TextureEncoder,
    fuse,
)
from nd3d_jax.models.semantic_encoder import SemanticEncoder, SemanticEncoderConfig, init_from_clip


@dataclasses.dataclass(frozen=True)
class ConditioningConfig:
    clip: CLIPConfig = CLIPConfig()
    resnet: resnet_lib.ResNetConfig = resnet_lib.ResNetConfig()
    semantic: SemanticEncoderConfig = SemanticEncoderConfig()
    f_struc_dim: int = F_STRUC_DIM
    f_tex_dim: int = F_TEX_DIM
    f_sem_dim: int = F_SEM_DIM
    fusion_weights: tuple[float, float, float] = FUSION_WEIGHTS
    frozen_resnet_layers: int = resnet_lib.FROZEN_LAYERS

    @classmethod
    def from_pretrained(cls, clip: CLIPConfig, resnet: resnet_lib.ResNetConfig, **kw):
        return cls(
            clip=clip, resnet=resnet, semantic=SemanticEncoderConfig.from_clip(clip.text), **kw
        )


class Conditioning(nn.Module):
    config: ConditioningConfig = ConditioningConfig()
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        c = self.config
        self.clip = CLIPModel(c.clip, self.dtype)
        self.semantic_encoder = SemanticEncoder(c.semantic, self.dtype)
        self.mesh_conv = MeshConv(c.f_struc_dim, self.dtype)
        self.texture_encoder = TextureEncoder(c.resnet, c.f_tex_dim, self.dtype)
        self.semantic_gating = SemanticGating(c.f_sem_dim, self.dtype)
        self.prior_alignment = PriorAlignment(c.clip.projection_dim, self.dtype)

    def priors(self, faces: dict, texture_map, semantic_ids, semantic_mask):
        """f_prior_align (B, 512) and its parts. `faces` holds `mesh_conv.sample_faces` arrays
        with a batch axis; `texture_map` is T of eq 8 (the caller adds the noise)."""
        f_struc = self.mesh_conv(
            faces["features"], faces["neighbours"], faces["neighbour_mask"], faces["face_mask"]
        )
        f_tex = self.texture_encoder(texture_map)
        s = self.semantic_encoder(semantic_ids, semantic_mask)
        f_sem = self.semantic_gating(s)
        f_prior_align = self.prior_alignment(f_struc, f_tex, f_sem)
        return {
            "f_struc": f_struc,
            "f_tex": f_tex,
            "S": s,
            "f_sem": f_sem,
            "f_prior_align": f_prior_align,
        }

    def __call__(self, batch: dict) -> dict:
        """`batch`: input_ids/attention_mask (CLIP text, B x L), pixel_values (B, H, W, 3 CLIP-
        normalised), semantic_ids/semantic_mask (B x <= 64), texture_map (B, 256, 256, 3),
        faces (dict of sample_faces arrays). Returns f_fusion (B, L, 512) and the parts."""
        priors = self.priors(
            batch["faces"],
            batch["texture_map"],
            batch["semantic_ids"],
            batch["semantic_mask"],
        )
        f_text = self.clip.text_tokens(batch["input_ids"], batch["attention_mask"])
        f_img = self.clip.image_tokens(batch["pixel_values"])
        fused = fuse(
            f_text,
            f_img,
            priors["f_prior_align"],
            batch["attention_mask"],
            self.config.fusion_weights,
        )
        return {**priors, **fused, "f_text": f_text, "f_img": f_img}


def load_pretrained(params: dict, clip_params: dict, resnet_params: dict, config) -> dict:
    """Puts imported CLIP and ResNet weights into a (randomly initialised) Conditioning tree and
    initialises the SemanticEncoder's first layers from CLIP's text encoder."""
    out = dict(params)
    out["clip"] = clip_params
    out["texture_encoder"] = {**params["texture_encoder"], "resnet": resnet_params}
    out["semantic_encoder"] = init_from_clip(
        params["semantic_encoder"], clip_params, config.semantic
    )
    return out


def trainable_mask(params: dict, config: ConditioningConfig) -> dict:
    """True for trained leaves: CLIP frozen; ResNet as `resnet.trainable_mask` (first 10 layers
    and BatchNorm statistics frozen); the rest trains."""
    mask = jax.tree.map(lambda _: True, params)
    mask["clip"] = jax.tree.map(lambda _: False, params["clip"])
    mask["texture_encoder"] = {
        **mask["texture_encoder"],
        "resnet": resnet_lib.trainable_mask(
            params["texture_encoder"]["resnet"], config.frozen_resnet_layers
        ),
    }
    return mask
