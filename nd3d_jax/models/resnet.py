"""ResNet image encoder (ResNet-18 by default), laid out like Hugging Face's `ResNetModel`.

The paper (section "Preprocessing of multimodal prior information", texture prior) encodes the
256x256 texture map with a "pre-trained ResNet-18 (with the first 10 layers frozen)" into a
512-D feature. This module reproduces transformers' `ResNetModel` so its checkpoints load
unchanged (see `nd3d_jax.weights.resnet`); `__call__` returns `pooler_output.flatten(1)`.

Layout (NHWC in, parameter names mirror the HF module tree with `.` -> `/` and `x.i` -> `x_i`):

    embedder                   conv 7x7/2 pad 3 + BN + relu, then max-pool 3x3/2 pad 1
    stages_i/layers_j          residual block, i over `hidden_sizes`, j over `depths[i]`
        layer_k                conv + BN (+ relu except the last), k = 0..1 (basic) or 0..2
        shortcut               1x1 conv + BN, only where channels or stride change
    -> global average pool     (B, hidden_sizes[-1])

Basic blocks are two 3x3 convs (stride on the first). Bottleneck blocks are 1x1 (to out/4),
3x3, 1x1 (to out); the stride sits on the 3x3 conv, or on the first 1x1 with
`downsample_in_bottleneck`. Only the first stage's first block keeps stride 1 unless
`downsample_in_first_stage`. Convs have no bias and pad `kernel_size // 2` on every side, as torch.

BatchNorm always runs in inference mode from the checkpoint's statistics (`FrozenBatchNorm`,
after detectron2): the encoder is fine-tuned with a few texture maps per device, far too few
for reliable batch statistics, so running mean/var are constants and no `batch_stats`
collection exists. All four BN vectors live in `params` so `apply({'params': p}, x)` suffices;
`trainable_mask` keeps the optimiser off the statistics and off the frozen layers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from nd3d_jax.models.layers import conv

FROZEN_LAYERS = 10  # "pre-trained ResNet-18 (with the first 10 layers frozen)"
BN_EPS = 1e-5  # torch.nn.BatchNorm2d default
BOTTLENECK_REDUCTION = 4  # HF ResNetBottleNeckLayer's default

CHANNEL_AXES = ("conv_out",)

# transformers' ResNetConfig defaults (ResNet-50), used for keys absent from a config.json.
_HF_DEFAULTS = {
    "num_channels": 3,
    "embedding_size": 64,
    "hidden_sizes": (256, 512, 1024, 2048),
    "depths": (3, 4, 6, 3),
    "layer_type": "bottleneck",
    "hidden_act": "relu",
    "downsample_in_first_stage": False,
    "downsample_in_bottleneck": False,
}


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    """Architecture hyper-parameters; the defaults are ResNet-18."""

    num_channels: int = 3
    embedding_size: int = 64
    hidden_sizes: tuple[int, ...] = (64, 128, 256, 512)
    depths: tuple[int, ...] = (2, 2, 2, 2)
    layer_type: str = "basic"
    hidden_act: str = "relu"
    downsample_in_first_stage: bool = False
    downsample_in_bottleneck: bool = False

    def __post_init__(self):
        object.__setattr__(self, "hidden_sizes", tuple(int(h) for h in self.hidden_sizes))
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
        if self.layer_type not in ("basic", "bottleneck"):
            raise ValueError(f"layer_type must be 'basic' or 'bottleneck', got {self.layer_type!r}")
        if self.hidden_act != "relu":
            raise ValueError(f"only hidden_act='relu' is supported, got {self.hidden_act!r}")
        if not self.depths or len(self.depths) != len(self.hidden_sizes):
            raise ValueError(
                f"depths {self.depths} and hidden_sizes {self.hidden_sizes} must be non-empty "
                "and of the same length (one entry per stage)"
            )
        if min(self.depths) < 1:
            raise ValueError(f"every stage needs at least one block, got depths {self.depths}")
        sizes = (self.num_channels, self.embedding_size, *self.hidden_sizes)
        if min(sizes) < 1:
            raise ValueError(f"channel counts must be positive, got {sizes}")
        if self.layer_type == "bottleneck" and min(self.hidden_sizes) < BOTTLENECK_REDUCTION:
            raise ValueError(
                f"bottleneck blocks need hidden_sizes >= {BOTTLENECK_REDUCTION}, "
                f"got {self.hidden_sizes}"
            )

    @classmethod
    def from_hf(cls, config: Mapping) -> ResNetConfig:
        """From a transformers `config.json` dict; missing keys take transformers' defaults."""
        model_type = config.get("model_type", "resnet")
        if model_type != "resnet":
            raise ValueError(f"not a ResNet config: model_type={model_type!r}")
        values = {k: config.get(k, default) for k, default in _HF_DEFAULTS.items()}
        for key in ("hidden_sizes", "depths"):
            if not isinstance(values[key], (list, tuple)):
                raise ValueError(f"{key} must be a list, got {values[key]!r}")
        return cls(**values)

    def block_specs(self) -> list[tuple[int, int, int]]:
        """(in_channels, out_channels, stride) of every residual block, stage by stage."""
        specs, in_ch = [], self.embedding_size
        for i, (out_ch, depth) in enumerate(zip(self.hidden_sizes, self.depths, strict=True)):
            first_stride = 2 if (i > 0 or self.downsample_in_first_stage) else 1
            for j in range(depth):
                specs.append((in_ch, out_ch, first_stride if j == 0 else 1))
                in_ch = out_ch
        return specs


class FrozenBatchNorm(nn.Module):
    """Inference-mode BatchNorm: y = (x - mean) / sqrt(var + eps) * scale + bias.

    `mean` and `var` are params (so loading needs no `batch_stats`) behind `stop_gradient`, so
    they never receive a gradient; `trainable_mask` also masks them out of the optimiser.
    """

    features: int
    eps: float = BN_EPS
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        def vec(name, init):
            return self.param(
                name,
                nn.with_logical_partitioning(init, CHANNEL_AXES),
                (self.features,),
                self.param_dtype,
            )

        scale = vec("scale", nn.initializers.ones_init())
        bias = vec("bias", nn.initializers.zeros_init())
        mean = jax.lax.stop_gradient(vec("mean", nn.initializers.zeros_init()))
        var = jax.lax.stop_gradient(vec("var", nn.initializers.ones_init()))
        # Fold into one multiply-add, in float32 whatever the compute dtype.
        mul = scale.astype(jnp.float32) * jax.lax.rsqrt(var.astype(jnp.float32) + self.eps)
        add = bias.astype(jnp.float32) - mean.astype(jnp.float32) * mul
        return (x * mul.astype(self.dtype) + add.astype(self.dtype)).astype(self.dtype)


class ConvLayer(nn.Module):
    """conv (no bias) + FrozenBatchNorm (+ relu): HF `ResNetConvLayer` / `ResNetShortCut`."""

    features: int
    kernel_size: int = 3
    stride: int = 1
    activation: bool = True
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = conv(
            self.features,
            self.kernel_size,
            "convolution",
            self.stride,
            dtype=self.dtype,
            use_bias=False,
            param_dtype=self.param_dtype,
            # torch ResNet init (kaiming normal, fan_out); checkpoints overwrite it anyway.
            kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
        )(x)
        x = FrozenBatchNorm(
            self.features, dtype=self.dtype, param_dtype=self.param_dtype, name="normalization"
        )(x)
        return nn.relu(x) if self.activation else x


class ResidualBlock(nn.Module):
    """HF `ResNetBasicLayer` or `ResNetBottleNeckLayer`: relu(layers(x) + shortcut(x))."""

    in_channels: int
    out_channels: int
    stride: int
    layer_type: str = "basic"
    downsample_in_bottleneck: bool = False
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        out, s = self.out_channels, self.stride
        if self.layer_type == "basic":
            plan = [(out, 3, s), (out, 3, 1)]
        else:
            mid = out // BOTTLENECK_REDUCTION
            s1, s3 = (s, 1) if self.downsample_in_bottleneck else (1, s)
            plan = [(mid, 1, s1), (mid, 3, s3), (out, 1, 1)]
        h = x
        for k, (features, kernel, stride) in enumerate(plan):
            last = k == len(plan) - 1
            h = ConvLayer(features, kernel, stride, not last, **kw, name=f"layer_{k}")(h)
        if self.in_channels != out or s != 1:
            x = ConvLayer(out, 1, s, False, **kw, name="shortcut")(x)
        return nn.relu(h + x)


class ResNetStage(nn.Module):
    """HF `ResNetStage`: blocks `layers_0..` given as (in_channels, out_channels, stride)."""

    blocks: tuple[tuple[int, int, int], ...]
    layer_type: str = "basic"
    downsample_in_bottleneck: bool = False
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for j, (in_ch, out_ch, stride) in enumerate(self.blocks):
            x = ResidualBlock(
                in_ch,
                out_ch,
                stride,
                self.layer_type,
                self.downsample_in_bottleneck,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=f"layers_{j}",
            )(x)
        return x


class ResNet(nn.Module):
    """NHWC images (B, H, W, num_channels) -> pooled features (B, hidden_sizes[-1])."""

    config: ResNetConfig = ResNetConfig()
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def _check_input(self, pixel_values: jax.Array) -> None:
        c = self.config.num_channels
        shape = tuple(pixel_values.shape)
        if len(shape) == 4 and shape[-1] == c:
            return
        hint = ""
        if len(shape) == 4 and shape[1] == c:
            hint = " (this looks like NCHW: transpose with x.transpose(0, 2, 3, 1))"
        raise ValueError(
            f"ResNet expects pixel_values of shape (batch, height, width, {c}) NHWC, "
            f"got {shape}{hint}"
        )

    @nn.compact
    def features(self, pixel_values: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(last_hidden_state (B, h, w, hidden_sizes[-1]), pooled (B, hidden_sizes[-1]))."""
        self._check_input(pixel_values)
        cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = jnp.asarray(pixel_values, self.dtype)
        x = ConvLayer(cfg.embedding_size, 7, 2, True, **kw, name="embedder")(x)
        # Flax pools pad with the reduction's identity (-inf), as torch's MaxPool2d does.
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        specs = cfg.block_specs()
        for i, depth in enumerate(cfg.depths):
            stage, specs = specs[:depth], specs[depth:]
            x = ResNetStage(
                tuple(stage), cfg.layer_type, cfg.downsample_in_bottleneck, **kw, name=f"stages_{i}"
            )(x)
        pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        return x.astype(jnp.float32), pooled

    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        return self.features(pixel_values)[1]


def conv_layer_names(config: ResNetConfig) -> list[tuple[str, ...]]:
    """Every conv (+ its BN) as a module path, in torchvision forward order.

    The stem first, then per block its own convs followed by its shortcut (torchvision registers
    `downsample` after `conv1`/`conv2`, so it counts after them).
    """
    names: list[tuple[str, ...]] = [("embedder",)]
    per_block = 2 if config.layer_type == "basic" else 3
    specs = iter(config.block_specs())
    for i, depth in enumerate(config.depths):
        for j in range(depth):
            in_ch, out_ch, stride = next(specs)
            block = (f"stages_{i}", f"layers_{j}")
            names += [(*block, f"layer_{k}") for k in range(per_block)]
            if in_ch != out_ch or stride != 1:
                names.append((*block, "shortcut"))
    return names


def frozen_conv_names(
    config: ResNetConfig, num_frozen: int = FROZEN_LAYERS
) -> list[tuple[str, ...]]:
    """Module paths of the first `num_frozen` convs (see `conv_layer_names`).

    For ResNet-18 the default 10 are the stem and the first two stages: conv1, layer1.0.conv1/2,
    layer1.1.conv1/2, layer2.0.conv1/2, layer2.0.downsample, layer2.1.conv1/2 in torchvision terms.
    """
    names = conv_layer_names(config)
    if not 0 <= num_frozen <= len(names):
        raise ValueError(f"num_frozen must be in [0, {len(names)}], got {num_frozen}")
    return names[:num_frozen]


def _conv_layer_names_from_params(params: Mapping) -> list[tuple[str, ...]]:
    """`conv_layer_names` recovered from a parameter tree (no config needed)."""

    def index(name: str) -> int:
        return int(name.rsplit("_", 1)[1])

    def numbered(tree: Mapping, prefix: str) -> list[str]:
        return sorted((k for k in tree if k.startswith(prefix)), key=index)

    if "embedder" not in params:
        raise ValueError("not a ResNet parameter tree: no 'embedder'")
    names: list[tuple[str, ...]] = [("embedder",)]
    for stage in numbered(params, "stages_"):
        for block in numbered(params[stage], "layers_"):
            convs = numbered(params[stage][block], "layer_")
            if "shortcut" in params[stage][block]:
                convs.append("shortcut")
            names += [(stage, block, conv) for conv in convs]
    return names


def trainable_mask(params: Mapping, num_frozen: int = FROZEN_LAYERS) -> dict:
    """Bool tree shaped like `params`: False for the first `num_frozen` convs (with their BN) and
    for every BatchNorm `mean`/`var`; True elsewhere. For `optax.masked` / `multi_transform`.
    """
    names = _conv_layer_names_from_params(params)
    if not 0 <= num_frozen <= len(names):
        raise ValueError(f"num_frozen must be in [0, {len(names)}], got {num_frozen}")
    frozen = names[:num_frozen]
    flat = traverse_util.flatten_dict(params)

    def trainable(path: tuple[str, ...]) -> bool:
        if path[-2:] in (("normalization", "mean"), ("normalization", "var")):
            return False
        return not any(path[: len(f)] == f for f in frozen)

    return traverse_util.unflatten_dict({path: trainable(path) for path in flat})
