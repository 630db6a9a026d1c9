"""The Semantic Encoder of eq 9: S = SemanticEncoder(T_input), a 256-D semantic vector.

Paper section "Multimodal knowledge generation": a 6-layer transformer encoder (width 512,
8 heads) over the tokenised text (at most 64 tokens), then a semantic adaptation layer (FC
512 -> 256, tanh, LayerNorm). The first 4 layers reuse the CLIP text encoder's (`init_from_clip`),
the last 2 and the adaptation layer start at random.

Decisions the paper leaves open: the layers keep CLIP's causal + padding mask (the reused layers
were trained with it), a fresh final LayerNorm closes the pre-LN stack, and the sequence is
pooled at the end-of-text token as CLIP pools, so S sees the whole text.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from nd3d_jax.models.clip import (
    CLIPEncoderLayer,
    CLIPTextConfig,
    CLIPTextEmbeddings,
    eos_positions,
    text_attention_mask,
)
from nd3d_jax.models.layers import dense, layer_norm

NUM_LAYERS = 6  # eq 9: "6-layer Transformer encoder"
WIDTH = 512  # "hidden dimension of 512"
NUM_HEADS = 8  # "8 attention heads"
MAX_LENGTH = 64  # "maximum length of 64"
OUT_DIM = 256  # adaptation layer "input 512D, output 256D"
NUM_CLIP_LAYERS = 4  # "the first 4 layers of the CLIP model's text encoder are reused"


@dataclasses.dataclass(frozen=True)
class SemanticEncoderConfig:
    vocab_size: int = 49408
    width: int = WIDTH
    num_layers: int = NUM_LAYERS
    num_heads: int = NUM_HEADS
    mlp_dim: int = 4 * WIDTH
    max_length: int = MAX_LENGTH
    out_dim: int = OUT_DIM
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: int = 49407
    num_clip_layers: int = NUM_CLIP_LAYERS

    @classmethod
    def from_clip(cls, text: CLIPTextConfig, **overrides) -> SemanticEncoderConfig:
        """Width, heads, MLP, vocabulary and activation of the CLIP text encoder it reuses."""
        c = cls(
            vocab_size=text.vocab_size,
            width=text.hidden_size,
            num_heads=text.num_attention_heads,
            mlp_dim=text.intermediate_size,
            max_length=min(MAX_LENGTH, text.max_position_embeddings),
            hidden_act=text.hidden_act,
            layer_norm_eps=text.layer_norm_eps,
            eos_token_id=text.eos_token_id,
        )
        return dataclasses.replace(c, **overrides)


class SemanticEncoder(nn.Module):
    config: SemanticEncoderConfig = SemanticEncoderConfig()
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, return_hidden: bool = False):
        """(B, L <= max_length) token ids -> S (B, out_dim); with `return_hidden` also the
        hidden states (embeddings first, then after each layer)."""
        c = self.config
        if input_ids.ndim != 2 or input_ids.shape[1] > c.max_length:
            raise ValueError(
                f"SemanticEncoder takes (batch, length <= {c.max_length}) token ids (paper: max "
                f"length 64; tokenize with max_length={c.max_length}), got {input_ids.shape}"
            )
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        x = CLIPTextEmbeddings(c.vocab_size, c.width, c.max_length, self.dtype, name="embeddings")(
            input_ids
        )
        mask = text_attention_mask(attention_mask)
        states = [x]
        for i in range(c.num_layers):
            layer = CLIPEncoderLayer(
                c.width,
                c.num_heads,
                c.mlp_dim,
                c.hidden_act,
                c.layer_norm_eps,
                self.dtype,
                name=f"layers_{i}",
            )
            x = layer(x, mask)
            states.append(x)
        x = layer_norm(name="final_layer_norm", eps=c.layer_norm_eps, dtype=self.dtype)(x)
        pooled = x[jnp.arange(x.shape[0]), eos_positions(input_ids, c.eos_token_id)]
        # Semantic adaptation layer: FC 512 -> 256, tanh, LayerNorm.
        h = jnp.tanh(
            dense(c.out_dim, ("embed", "prior"), name="adapt_fc", dtype=self.dtype)(pooled)
        )
        s = layer_norm("prior", name="adapt_norm", eps=c.layer_norm_eps, dtype=self.dtype)(h)
        return (s, tuple(states)) if return_hidden else s


def init_from_clip(params: dict, clip_params: dict, config: SemanticEncoderConfig) -> dict:
    """Copies CLIP's token embeddings, the first `max_length` positions and the first
    `num_clip_layers` text layers into a (randomly initialised) SemanticEncoder tree."""
    text = clip_params["text_model"]
    emb = text["embeddings"]
    clip_width = emb["token_embedding"]["embedding"].shape[1]
    clip_layers = len([k for k in text["encoder"] if k.startswith("layers_")])
    if (
        clip_width != config.width
        or emb["token_embedding"]["embedding"].shape[0] != config.vocab_size
    ):
        raise ValueError(
            f"CLIP text encoder (width {clip_width}) does not fit the SemanticEncoder "
            f"(width {config.width}, vocab {config.vocab_size}); build its config with "
            "SemanticEncoderConfig.from_clip"
        )
    if clip_layers < config.num_clip_layers:
        raise ValueError(f"CLIP has {clip_layers} text layers, {config.num_clip_layers} wanted")
    out = jax.tree.map(lambda a: a, dict(params))
    out["embeddings"] = {
        "token_embedding": {"embedding": emb["token_embedding"]["embedding"]},
        "position_embedding": {
            "embedding": emb["position_embedding"]["embedding"][: config.max_length]
        },
    }
    for i in range(config.num_clip_layers):
        out[f"layers_{i}"] = text["encoder"][f"layers_{i}"]
    return out
