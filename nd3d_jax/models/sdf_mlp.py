"""The SDF MLP of the refinement stage (paper section "Coarse 3D prior generation").

"4-layer fully connected + residual connection": the 67-D input [x_coord (3); f_tex (64)] goes
through three hidden layers of 1024 (LeakyReLU, negative slope 0.2) and a fourth of 256 (ReLU),
with residual paths 2nd -> 3rd and 3rd -> 4th; two linear heads give the SDF (1) and the
displacement deviation (3), with no activation.

    h1 = lrelu(W1 v_in + b1)                       67 -> 1024
    h2 = lrelu(W2 h1 + b2)                         1024 -> 1024
    h3 = lrelu(W3 h2 + b3) + h2                    residual 2nd -> 3rd (identity, same width)
    h4 = relu(W4 h3 + b4) + P h3                   residual 3rd -> 4th
    sdf = w_s h4 + b_s,  disp = W_d h4 + b_d

The 3rd -> 4th residual changes width (1024 -> 256), so it goes through `P`, a learned linear
projection without bias (the ResNet "projection shortcut"), added after the ReLU so the path
stays linear.

`num_frequencies > 0` (not in the paper; the faithful refinement recipe, docs/design.md) appends
Fourier features of x_coord to v_in before layer 1: sin and cos of 2^k * frequency_scale * x for
k < num_frequencies, so the MLP can vary at the scale of a tet-grid cell.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

COORD_DIM = 3
FEATURE_DIM = 64  # f_tex from the coarse prior's texture decoder
INPUT_DIM = COORD_DIM + FEATURE_DIM  # 67
HIDDEN_DIM = 1024
OUT_HIDDEN_DIM = 256
LEAKY_SLOPE = 0.2


def sdf_mlp_param_count(
    input_dim: int = INPUT_DIM,
    hidden: int = HIDDEN_DIM,
    out_hidden: int = OUT_HIDDEN_DIM,
    num_frequencies: int = 0,
) -> int:
    """Parameter count by hand: four dense layers, the bias-free projection, two heads."""
    input_dim += 2 * COORD_DIM * num_frequencies
    dense = (input_dim + 1) * hidden + 2 * (hidden + 1) * hidden + (hidden + 1) * out_hidden
    projection = hidden * out_hidden
    heads = (out_hidden + 1) * 1 + (out_hidden + 1) * 3
    return dense + projection + heads


class SDFMLP(nn.Module):
    """Maps `(..., 67)` to `(sdf (..., 1), displacement (..., 3))`."""

    hidden_dim: int = HIDDEN_DIM
    out_hidden_dim: int = OUT_HIDDEN_DIM
    negative_slope: float = LEAKY_SLOPE
    num_frequencies: int = 0  # Fourier features of x_coord (0: the paper's 67-D input)
    frequency_scale: float = 1.0  # angular frequency of the lowest octave
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def _dense(self, features: int, name: str, axes: tuple[str, str], use_bias: bool = True):
        return nn.Dense(
            features,
            use_bias=use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), axes[1:]),
            name=name,
        )

    @nn.compact
    def __call__(self, v_in: jax.Array) -> tuple[jax.Array, jax.Array]:
        if v_in.shape[-1] != INPUT_DIM:
            raise ValueError(
                f"SDFMLP expects [x_coord (3); f_tex (64)] = {INPUT_DIM} features in the last "
                f"axis, got shape {v_in.shape}"
            )
        lrelu = lambda x: nn.leaky_relu(x, self.negative_slope)  # noqa: E731
        if self.num_frequencies:
            octaves = self.frequency_scale * 2.0 ** jnp.arange(self.num_frequencies)
            angles = (v_in[..., :COORD_DIM, None] * octaves).reshape(*v_in.shape[:-1], -1)
            v_in = jnp.concatenate([v_in, jnp.sin(angles), jnp.cos(angles)], axis=-1)
        h1 = lrelu(self._dense(self.hidden_dim, "dense_1", ("embed", "mlp"))(v_in))
        h2 = lrelu(self._dense(self.hidden_dim, "dense_2", ("mlp_in", "mlp"))(h1))
        h3 = lrelu(self._dense(self.hidden_dim, "dense_3", ("mlp_in", "mlp"))(h2)) + h2
        shortcut = self._dense(self.out_hidden_dim, "projection_3_4", ("mlp", "embed"), False)
        h4 = nn.relu(self._dense(self.out_hidden_dim, "dense_4", ("mlp", "embed"))(h3))
        h4 = h4 + shortcut(h3)
        sdf = self._dense(1, "sdf_head", ("embed", "out"))(h4)
        displacement = self._dense(3, "displacement_head", ("embed", "out"))(h4)
        return sdf.astype(jnp.float32), displacement.astype(jnp.float32)


def geometric_init(
    module: SDFMLP,
    params: dict,
    key: jax.Array,
    center: jax.Array,
    radius: float,
    num_directions: int = 4096,
) -> dict:
    """Re-initialises `params` so the MLP starts as the SDF of a sphere (|x - c| - r).

    The geometric initialisation of SAL (Atzmon & Lipman, 2020), adapted to this network: with
    zero hidden biases (bar the centring bias of layer 1), He-normal hidden weights, the f_tex
    inputs, the 3 -> 4 projection and the displacement head at zero, the network is positively
    homogeneous in (x - c), so its SDF output is |x - c| g(direction) for a nearly constant g.
    The SDF head is then scaled so that g averages 1 over random directions, and its bias set to
    -r. The paper fits the MLP in only 50 AdamW steps at lr 1e-4, which from a random
    initialisation leaves floaters far from the surface; from this start it only refines.
    """
    keys = jax.random.split(key, 5)
    center = jnp.asarray(center, jnp.float32)

    def he(k, like):
        return jax.random.normal(k, like.shape, like.dtype) * jnp.sqrt(2.0 / like.shape[1])

    p = jax.tree.map(jnp.asarray, params)
    w1 = he(keys[0], p["dense_1"]["kernel"]).at[COORD_DIM:].set(0.0)
    p["dense_1"] = {"kernel": w1, "bias": -center @ w1[:COORD_DIM]}
    for name, k in zip(("dense_2", "dense_3", "dense_4"), keys[1:4], strict=True):
        p[name] = {"kernel": he(k, p[name]["kernel"]), "bias": jnp.zeros_like(p[name]["bias"])}
    p["projection_3_4"] = {"kernel": jnp.zeros_like(p["projection_3_4"]["kernel"])}
    p["displacement_head"] = jax.tree.map(jnp.zeros_like, p["displacement_head"])
    p["sdf_head"] = {
        "kernel": jnp.ones_like(p["sdf_head"]["kernel"]),
        "bias": jnp.zeros_like(p["sdf_head"]["bias"]),
    }
    d = jax.random.normal(keys[4], (num_directions, COORD_DIM))
    d = d / jnp.linalg.norm(d, axis=-1, keepdims=True)
    v_in = jnp.concatenate([center + d, jnp.zeros((num_directions, FEATURE_DIM))], axis=-1)
    g = jnp.mean(module.apply({"params": p}, v_in)[0])
    p["sdf_head"] = {
        "kernel": p["sdf_head"]["kernel"] / g,
        "bias": jnp.full_like(p["sdf_head"]["bias"], -radius),
    }
    return p
