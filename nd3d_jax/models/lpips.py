"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric"), version 0.1 of the `lpips` package, with AlexNet or VGG-16 backbones.

    d(x0, x1) = sum_l mean_hw  w_l . (n(f_l(s(x0))) - n(f_l(s(x1))))^2

s: the ScalingLayer ((x - shift) / scale, ImageNet statistics in [-1, 1] units); f_l: the
backbone's ReLU output at tap l; n: unit length over channels, x / (sqrt(sum_c x^2) + 1e-10);
w_l: the 1x1 linear head `lin{l}` (no bias; its dropout is inactive at evaluation).

The backbone is torchvision's `features` stack, with parameters named by its index
(`features_0/kernel` is `features.0.weight`), NHWC, torch's padding and `ceil_mode=False`
max-pooling. Taps (the `lpips` package's slices):
    alex  relu1..relu5 after features.1, 4, 7, 9, 11           channels 64, 192, 384, 256, 256
    vgg   relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 after features.3, 8, 15, 22, 29
                                                               channels 64, 128, 256, 512, 512
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

SHIFT = (-0.030, -0.088, -0.188)  # lpips ScalingLayer
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10  # lpips.normalize_tensor


@dataclasses.dataclass(frozen=True)
class Conv:
    index: int  # torchvision `features` index
    out: int
    kernel: int
    stride: int
    pad: int


@dataclasses.dataclass(frozen=True)
class Pool:
    kernel: int
    stride: int


def _vgg_layers():
    layers, taps, i = [], [], 0
    for stage, (width, convs) in enumerate(((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))):
        if stage:
            layers.append(Pool(2, 2))
            i += 1
        for _ in range(convs):
            layers.append(Conv(i, width, 3, 1, 1))
            i += 2  # conv, relu
        taps.append(len(layers) - 1)
    return tuple(layers), tuple(taps)


# Each net: its layers in order (a Conv is followed by its ReLU) and the indices (into that
# tuple) of the convs whose ReLU outputs are the taps.
NETS = {
    "alex": (
        (
            Conv(0, 64, 11, 4, 2),
            Pool(3, 2),
            Conv(3, 192, 5, 1, 2),
            Pool(3, 2),
            Conv(6, 384, 3, 1, 1),
            Conv(8, 256, 3, 1, 1),
            Conv(10, 256, 3, 1, 1),
        ),
        (0, 2, 4, 5, 6),
    ),
    "vgg": _vgg_layers(),
}
CHANNELS = {net: tuple(layers[t].out for t in taps) for net, (layers, taps) in NETS.items()}


def out_size(net: str, size: int) -> int:
    """Spatial size of the last tap for an input side of `size` (< 1: the image is too small)."""
    layers, taps = NETS[net]
    for layer in layers[: taps[-1] + 1]:
        if isinstance(layer, Conv):
            size = (size + 2 * layer.pad - layer.kernel) // layer.stride + 1
        else:
            size = (size - layer.kernel) // layer.stride + 1
        if size < 1:
            return 0
    return size


def min_size(net: str) -> int:
    """Smallest image side every tap has at least one pixel for (alex 31, vgg 16); torch's
    max-pool raises below it."""
    size = 1
    while out_size(net, size) < 1:
        size += 1
    return size


def normalize(x: jax.Array) -> jax.Array:
    """lpips.normalize_tensor over the channel (last) axis."""
    return x / (jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True)) + EPS)


class LPIPS(nn.Module):
    """(B,) LPIPS distances between NHWC images in [-1, 1] (`normalize=True`: in [0, 1])."""

    net: str = "alex"
    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

    def features(self, x: jax.Array) -> list[jax.Array]:
        """The five tap activations of `x` (already scaled)."""
        layers, taps = NETS[self.net]
        outs = []
        for i, layer in enumerate(layers[: taps[-1] + 1]):
            if isinstance(layer, Conv):
                x = nn.Conv(
                    layer.out,
                    (layer.kernel, layer.kernel),
                    strides=layer.stride,
                    padding=((layer.pad, layer.pad), (layer.pad, layer.pad)),
                    precision=self.precision,
                    name=f"features_{layer.index}",
                )(x)
                x = nn.relu(x)
            else:
                x = nn.max_pool(x, (layer.kernel,) * 2, (layer.stride,) * 2, padding="VALID")
            if i in taps:
                outs.append(x)
        return outs

    @nn.compact
    def __call__(self, x0: jax.Array, x1: jax.Array, normalize_input: bool = False) -> jax.Array:
        if self.net not in NETS:
            raise ValueError(f"LPIPS net must be one of {sorted(NETS)}, got {self.net!r}")
        x0, x1 = x0.astype(jnp.float32), x1.astype(jnp.float32)
        if normalize_input:  # lpips `normalize=True`: [0, 1] -> [-1, 1]
            x0, x1 = 2 * x0 - 1, 2 * x1 - 1
        shift, scale = jnp.asarray(SHIFT), jnp.asarray(SCALE)
        # One backbone pass over both images (the same weights, twice the batch).
        feats = self.features((jnp.concatenate([x0, x1]) - shift) / scale)
        b = x0.shape[0]
        total = jnp.zeros((b,), jnp.float32)
        for k, f in enumerate(feats):
            diff = (normalize(f[:b]) - normalize(f[b:])) ** 2
            head = nn.Conv(1, (1, 1), use_bias=False, precision=self.precision, name=f"lin{k}")
            total = total + jnp.mean(head(diff), axis=(1, 2, 3))  # spatial average
        return total
