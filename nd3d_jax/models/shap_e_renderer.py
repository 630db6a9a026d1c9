"""Shap-E's implicit field (P1) in Linen: diffusers' `ShapEParamsProjModel` + `MLPNeRSTFModel`
in STF mode, as `ShapERenderer` holds them.

A latent (T tokens x d_latent) *is* an object: consecutive groups of its tokens are projected
(einsum with a per-row weight, LayerNorm, then the bias: diffusers' `ChannelsProj`) into the
weight matrices of the first MLP layers (`nerstf.mlp.0-3.weight`, 256x93 and 3 x 256x256 in the
published renderer). The remaining weights and every bias are the renderer's own.

    x (N, 3) -> NeRF posenc (3 + 3*15*2 = 93) -> 6 hidden SiLU layers (256) -> 12 outputs
    outputs: [sdf, density_coarse, density_fine, stf rgb (3), nerf rgb coarse (3), fine (3)]

In STF mode the direction input of layer 4 is zero, so only that layer's first columns act.
`ShapERenderer.query` returns Shap-E's raw SDF channel (tanh, **positive inside**), the STF
colour (sigmoid, sRGB as Shap-E renders it) and the last hidden activation (the texture
features the refinement reads, see `nd3d_jax.prior.shap_e`).
"""

from __future__ import annotations

import dataclasses
import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp

from nd3d_jax.models.layers import layer_norm

POS_DEGREES = 15  # encode_position: sin/cos at 2^0 .. 2^14
DIR_DEGREES = 8  # encode_direction (zeros in STF mode)
_PARAM_NAME = re.compile(r"^nerstf\.mlp\.(\d+)\.weight$")


def posenc_width(degrees: int) -> int:
    return 3 + 3 * degrees * 2


@dataclasses.dataclass(frozen=True)
class RendererConfig:
    """diffusers' `ShapERenderer` config; defaults are the published renderer's."""

    param_names: tuple[str, ...] = tuple(f"nerstf.mlp.{i}.weight" for i in range(4))
    param_shapes: tuple[tuple[int, int], ...] = ((256, 93), (256, 256), (256, 256), (256, 256))
    d_latent: int = 1024
    d_hidden: int = 256
    n_output: int = 12
    n_hidden_layers: int = 6
    act_fn: str = "swish"
    insert_direction_at: int | None = 4

    @classmethod
    def from_hf(cls, hf: dict) -> RendererConfig:
        if hf.get("act_fn", "swish") != "swish":
            raise ValueError(f"ShapERenderer act_fn={hf['act_fn']!r} is not supported")
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in hf.items() if k in names}
        if "param_names" in kw:
            kw["param_names"] = tuple(kw["param_names"])
        if "param_shapes" in kw:
            kw["param_shapes"] = tuple(tuple(s) for s in kw["param_shapes"])
        c = cls(**kw)
        c.validate()
        return c

    @property
    def widths(self) -> list[tuple[int, int]]:
        """(in, out) of every MLP layer, direction inputs included (as the checkpoint)."""
        hidden = [self.d_hidden] * self.n_hidden_layers
        ins, outs = [posenc_width(POS_DEGREES), *hidden], [*hidden, self.n_output]
        if self.insert_direction_at is not None:
            ins[self.insert_direction_at] += posenc_width(DIR_DEGREES)
        return list(zip(ins, outs, strict=True))

    @property
    def projected(self) -> dict[int, int]:
        """MLP layer index -> its position in `param_names` (weights made from the latent)."""
        return {int(_PARAM_NAME.match(n).group(1)): k for k, n in enumerate(self.param_names)}

    @property
    def num_tokens(self) -> int:
        return sum(v for v, _ in self.param_shapes)

    def validate(self) -> None:
        if len(self.param_names) != len(self.param_shapes):
            raise ValueError("ShapERenderer: param_names and param_shapes differ in length")
        for name, shape in zip(self.param_names, self.param_shapes, strict=True):
            m = _PARAM_NAME.match(name)
            if not m or int(m.group(1)) >= len(self.widths):
                raise ValueError(f"ShapERenderer: unsupported projected parameter {name!r}")
            fan_in, fan_out = self.widths[int(m.group(1))]
            if tuple(shape) != (fan_out, fan_in):
                raise ValueError(
                    f"ShapERenderer: {name} has shape {tuple(shape)}, the MLP needs "
                    f"{(fan_out, fan_in)}"
                )


def sanitize(name: str) -> str:
    return name.replace(".", "__")  # diffusers' `_sanitize_name`


def encode_position(x: jax.Array) -> jax.Array:
    """NeRF positional encoding (..., 3) -> (..., 93): [x, sin(2^k x), sin(2^k x + pi/2)]."""
    scales = 2.0 ** jnp.arange(POS_DEGREES, dtype=x.dtype)
    xb = (x[..., None, :] * scales[:, None]).reshape(*x.shape[:-1], -1)
    return jnp.concatenate([x, jnp.sin(jnp.concatenate([xb, xb + math.pi / 2], -1))], -1)


class ChannelsProj(nn.Module):
    """diffusers' `ChannelsProj`: (B, v, d) latent rows -> (B, v, c) weights."""

    vectors: int
    channels: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(
                nn.initializers.variance_scaling(1.0, "fan_avg", "normal", in_axis=2, out_axis=1),
                ("vectors", "channels", "embed"),
            ),
            (self.vectors, self.channels, d),
        )
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(nn.initializers.zeros_init(), ("vectors", "channels")),
            (self.vectors, self.channels),
        )
        h = jnp.einsum("bvd,vcd->bvc", x.astype(self.dtype), kernel.astype(self.dtype))
        h = layer_norm("channels", name="norm", dtype=self.dtype)(h)
        return h + bias.astype(self.dtype)


class ParamsProj(nn.Module):
    """Latents (B, T, d_latent) -> one (B, out, in) weight per projected MLP layer."""

    config: RendererConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, latents: jax.Array) -> tuple[jax.Array, ...]:
        c, start, out = self.config, 0, []
        if latents.shape[1:] != (c.num_tokens, c.d_latent):
            raise ValueError(
                f"Shap-E latents must be (batch, {c.num_tokens}, {c.d_latent}); got "
                f"{tuple(latents.shape)}"
            )
        for name, (vectors, channels) in zip(c.param_names, c.param_shapes, strict=True):
            proj = ChannelsProj(vectors, channels, self.dtype, name=sanitize(name))
            out.append(proj(latents[:, start : start + vectors]))
            start += vectors
        return tuple(out)


class NeRSTF(nn.Module):
    """The STF MLP with per-object weights for the projected layers.

    `(weights from ParamsProj, points (B, N, 3)) -> (raw sdf (B, N), rgb (B, N, 3), hidden
    (B, N, d_hidden))`: tanh SDF (positive inside), sigmoid STF colour, last hidden activation.
    """

    config: RendererConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, weights: tuple[jax.Array, ...], points: jax.Array):
        c = self.config
        projected, layers = c.projected, c.widths
        h = encode_position(points.astype(jnp.float32)).astype(self.dtype)
        hidden = h
        for i, (fan_in, fan_out) in enumerate(layers):
            bias = _param(self, f"mlp_{i}_bias", (fan_out,), ("mlp",), nn.initializers.zeros_init())
            used = h.shape[-1]  # STF: the zero direction features of layer 4 add nothing
            if i in projected:
                w = weights[projected[i]][..., :used].astype(self.dtype)  # (B, out, in)
                h = jnp.einsum("bni,boi->bno", h, w)
            else:
                kernel = _param(
                    self,
                    f"mlp_{i}_kernel",
                    (fan_in, fan_out),
                    ("embed", "mlp"),
                    nn.initializers.lecun_normal(),
                )
                h = jnp.dot(h, kernel[:used].astype(self.dtype))
            h = h + bias.astype(self.dtype)
            if i < len(layers) - 1:
                h = jax.nn.silu(h)
                hidden = h
        h = h.astype(jnp.float32)
        return jnp.tanh(h[..., 0]), jax.nn.sigmoid(h[..., 3:6]), hidden.astype(jnp.float32)


def _param(module: nn.Module, name: str, shape, axes, init):
    return module.param(name, nn.with_logical_partitioning(init, axes), shape)


class ShapERenderer(nn.Module):
    """`project(latents) -> weights`; `query(weights, points)`; `__call__` does both."""

    config: RendererConfig
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.params_proj = ParamsProj(self.config, self.dtype)
        self.mlp = NeRSTF(self.config, self.dtype)

    def project(self, latents: jax.Array) -> tuple[jax.Array, ...]:
        return self.params_proj(latents)

    def query(self, weights: tuple[jax.Array, ...], points: jax.Array):
        return self.mlp(weights, points)

    def __call__(self, latents: jax.Array, points: jax.Array):
        return self.query(self.project(latents), points)
