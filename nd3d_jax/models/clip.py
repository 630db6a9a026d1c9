"""CLIP text and vision transformers in Linen, shaped like Hugging Face's `CLIPModel`.

Module names follow the checkpoint keys (`text_model/encoder/layers_3/self_attn/q_proj`, ...), so
`nd3d_jax.weights.clip` maps a `save_pretrained` folder one to one. ViT-B/32 gives the paper's
512-D text and image features ("Multimodal information fusion and processing").

    encode_text(input_ids, attention_mask)  -> (B, P)     = CLIPModel.get_text_features
    encode_image(pixel_values NHWC)         -> (B, P)     = CLIPModel.get_image_features
    text_tokens(...) / image_tokens(...)    -> (B, L, P)  every token through the final
        LayerNorm and CLIP's projection: the f_text / f_img sequences of eq 10-11.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from nd3d_jax.models.layers import activation, dense, embed, layer_norm


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:  # defaults: transformers' CLIPTextConfig (openai ViT-B/32)
    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: int = 49407


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    text: CLIPTextConfig = CLIPTextConfig()
    vision: CLIPVisionConfig = CLIPVisionConfig()
    projection_dim: int = 512

    @classmethod
    def from_hf(cls, hf: dict) -> CLIPConfig:
        """From a transformers `CLIPConfig` dict (`config.json` of a CLIPModel folder)."""

        def pick(sub: dict | None, target):  # missing fields keep transformers' defaults
            names = {f.name for f in dataclasses.fields(target)}
            return target(**{k: v for k, v in (sub or {}).items() if k in names})

        text = pick(hf.get("text_config"), CLIPTextConfig)
        vision = pick(hf.get("vision_config"), CLIPVisionConfig)
        for name, c in (("text", text), ("vision", vision)):
            if c.hidden_size % c.num_attention_heads:
                raise ValueError(
                    f"CLIP {name}: hidden_size {c.hidden_size} is not divisible by "
                    f"num_attention_heads {c.num_attention_heads}"
                )
            activation(c.hidden_act)  # fails early on an unsupported activation
        return cls(text=text, vision=vision, projection_dim=hf.get("projection_dim", 512))


class CLIPAttention(nn.Module):
    width: int
    num_heads: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        b, n, _ = x.shape
        head_dim = self.width // self.num_heads

        def proj(name):
            y = dense(self.width, ("embed", "heads"), name=name, dtype=self.dtype)(x)
            return y.reshape(b, n, self.num_heads, head_dim)

        q, k, v = proj("q_proj"), proj("k_proj"), proj("v_proj")
        # mask: (B, 1, Lq, Lk) boolean, True = attend. Softmax in float32.
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * head_dim**-0.5
        if mask is not None:
            logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, n, self.width)
        return dense(self.width, ("heads", "embed"), name="out_proj", dtype=self.dtype)(out)


class CLIPEncoderLayer(nn.Module):
    """Pre-LN transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    width: int
    num_heads: int
    mlp_dim: int
    act: str = "quick_gelu"
    eps: float = 1e-5
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        h = layer_norm(name="layer_norm1", eps=self.eps, dtype=self.dtype)(x)
        x = x + CLIPAttention(self.width, self.num_heads, self.dtype, name="self_attn")(h, mask)
        h = layer_norm(name="layer_norm2", eps=self.eps, dtype=self.dtype)(x)
        h = dense(self.mlp_dim, ("embed", "mlp"), name="fc1", dtype=self.dtype)(h)
        h = activation(self.act)(h)
        h = dense(self.width, ("mlp", "embed"), name="fc2", dtype=self.dtype)(h)
        return x + h


def encoder_layer(c: CLIPTextConfig | CLIPVisionConfig, name: str, dtype) -> CLIPEncoderLayer:
    return CLIPEncoderLayer(
        c.hidden_size,
        c.num_attention_heads,
        c.intermediate_size,
        c.hidden_act,
        c.layer_norm_eps,
        dtype,
        name=name,
    )


class CLIPEncoder(nn.Module):
    config: CLIPTextConfig | CLIPVisionConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        """Returns the last state and all hidden states (embeddings first), as transformers."""
        states = [x]
        for i in range(self.config.num_hidden_layers):
            x = encoder_layer(self.config, f"layers_{i}", self.dtype)(x, mask)
            states.append(x)
        return x, tuple(states)


def text_attention_mask(attention_mask: jax.Array) -> jax.Array:
    """Causal mask combined with the key padding mask: (B, L) -> (B, 1, L, L), True = attend."""
    n = attention_mask.shape[-1]
    causal = jnp.tril(jnp.ones((n, n), bool))
    return causal[None, None] & attention_mask[:, None, None, :].astype(bool)


class CLIPTextEmbeddings(nn.Module):
    vocab_size: int
    width: int
    max_positions: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids: jax.Array) -> jax.Array:
        n = input_ids.shape[-1]
        if n > self.max_positions:
            raise ValueError(f"{n} tokens, but the text encoder has {self.max_positions} positions")
        tok = embed(self.vocab_size, self.width, ("vocab", "embed"), name="token_embedding")
        pos = embed(
            self.max_positions, self.width, ("position", "embed"), name="position_embedding"
        )
        return (tok(input_ids) + pos(jnp.arange(n))[None]).astype(self.dtype)


class CLIPTextTransformer(nn.Module):
    config: CLIPTextConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids, attention_mask=None):
        """-> (last_hidden_state (B, L, D), pooled EOS state (B, D), hidden states)."""
        c = self.config
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be (batch, length), got shape {input_ids.shape}")
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        x = CLIPTextEmbeddings(
            c.vocab_size, c.hidden_size, c.max_position_embeddings, self.dtype, name="embeddings"
        )(input_ids)
        mask = text_attention_mask(attention_mask)
        x, states = CLIPEncoder(c, self.dtype, name="encoder")(x, mask)
        x = layer_norm(name="final_layer_norm", eps=c.layer_norm_eps, dtype=self.dtype)(x)
        pooled = x[jnp.arange(x.shape[0]), eos_positions(input_ids, c.eos_token_id)]
        return x, pooled, states


def eos_positions(input_ids: jax.Array, eos_token_id: int) -> jax.Array:
    """Where CLIP pools: the first EOS token (old configs with eos id 2: the largest id)."""
    if eos_token_id == 2:  # transformers keeps this legacy rule for pre-2023 configs
        return jnp.argmax(input_ids, axis=-1)
    return jnp.argmax(input_ids == eos_token_id, axis=-1)


class CLIPVisionTransformer(nn.Module):
    config: CLIPVisionConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, pixel_values):
        """NHWC pixels -> (last_hidden_state (B, 1+N, D), pooled CLS (B, D), hidden states,
        post-LayerNormed tokens (B, 1+N, D))."""
        c = self.config
        want = (c.image_size, c.image_size, c.num_channels)
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != want:
            raise ValueError(
                f"pixel_values must be (batch, {c.image_size}, {c.image_size}, {c.num_channels}) "
                f"NHWC, CLIP-normalised; got shape {tuple(pixel_values.shape)}"
            )
        x = CLIPVisionEmbeddings(c, self.dtype, name="embeddings")(pixel_values.astype(self.dtype))
        x = layer_norm(name="pre_layrnorm", eps=c.layer_norm_eps, dtype=self.dtype)(x)
        x, states = CLIPEncoder(c, self.dtype, name="encoder")(x)
        # post_layernorm acts per token: on the CLS token it is the pooled output; on all tokens
        # it gives the sequence that the projection turns into f_img.
        normed = layer_norm(name="post_layernorm", eps=c.layer_norm_eps, dtype=self.dtype)(x)
        return x, normed[:, 0], states, normed


class CLIPVisionEmbeddings(nn.Module):
    config: CLIPVisionConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, pixels: jax.Array) -> jax.Array:
        c = self.config
        patches = nn.Conv(
            c.hidden_size,
            (c.patch_size, c.patch_size),
            strides=(c.patch_size, c.patch_size),
            padding="VALID",
            use_bias=False,
            dtype=self.dtype,
            kernel_init=nn.with_logical_partitioning(
                nn.initializers.lecun_normal(), ("conv_h", "conv_w", "conv_in", "embed")
            ),
            name="patch_embedding",
        )(pixels)
        b = patches.shape[0]
        patches = patches.reshape(b, -1, c.hidden_size)  # row-major, as torch's flatten(2)
        cls = self.param(
            "class_embedding",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), ("embed",)),
            (c.hidden_size,),
        )
        x = jnp.concatenate(
            [jnp.broadcast_to(cls, (b, 1, c.hidden_size)).astype(self.dtype), patches], 1
        )
        num_positions = (c.image_size // c.patch_size) ** 2 + 1
        pos = embed(num_positions, c.hidden_size, ("position", "embed"), name="position_embedding")
        return x + pos(jnp.arange(num_positions))[None].astype(self.dtype)


class CLIPModel(nn.Module):
    """Both towers and their projections; use through the methods below."""

    config: CLIPConfig = CLIPConfig()
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        c = self.config
        self.text_model = CLIPTextTransformer(c.text, self.dtype)
        self.vision_model = CLIPVisionTransformer(c.vision, self.dtype)
        self.text_projection = dense(
            c.projection_dim,
            ("embed", "proj"),
            name="text_projection",
            use_bias=False,
            dtype=self.dtype,
        )
        self.visual_projection = dense(
            c.projection_dim,
            ("embed", "proj"),
            name="visual_projection",
            use_bias=False,
            dtype=self.dtype,
        )
        self.logit_scale = self.param("logit_scale", nn.initializers.constant(2.6592), ())

    def __call__(self, input_ids, attention_mask, pixel_values):
        """(text features, image features, logit scale): used for init and the CLIP score."""
        return (
            self.encode_text(input_ids, attention_mask),
            self.encode_image(pixel_values),
            self.logit_scale,
        )

    def encode_text(self, input_ids, attention_mask=None) -> jax.Array:
        """Projected pooled text features, as `CLIPModel.get_text_features`."""
        return self.text_projection(self.text_model(input_ids, attention_mask)[1])

    def encode_image(self, pixel_values) -> jax.Array:
        """Projected pooled image features, as `CLIPModel.get_image_features`."""
        return self.visual_projection(self.vision_model(pixel_values)[1])

    def text_tokens(self, input_ids, attention_mask=None) -> jax.Array:
        """f_text of eq 10: every token after the final LayerNorm, projected (B, L, P)."""
        return self.text_projection(self.text_model(input_ids, attention_mask)[0])

    def image_tokens(self, pixel_values) -> jax.Array:
        """f_img of eq 10: every token through post_layernorm and the projection (B, 1+N, P)."""
        return self.visual_projection(self.vision_model(pixel_values)[3])

    def text_outputs(self, input_ids, attention_mask=None):
        """(last_hidden_state, pooled, hidden states) of the text tower."""
        return self.text_model(input_ids, attention_mask)

    def vision_outputs(self, pixel_values):
        """(last_hidden_state, pooled, hidden states) of the vision tower."""
        return self.vision_model(pixel_values)[:3]
