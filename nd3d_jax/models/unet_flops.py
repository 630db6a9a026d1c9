"""Analytic FLOP count of a UNet forward pass (2 FLOPs per multiply-add).

Counts convolutions, dense layers and the two attention matmuls (QK^T and AV); norms,
activations, softmax and biases are left out (well under 1% at Stable-Diffusion sizes). Walks
the config the way `UNet.__call__` does, skip connections included. Used by the `diffusion`
benchmark to cross-check XLA's `cost_analysis()`.
"""

from __future__ import annotations

from nd3d_jax.models.unet import UNetConfig


def unet_forward_flops(c: UNetConfig, batch: int, height: int, width: int, ctx_len: int) -> int:
    temb = 4 * c.block_out_channels[0]
    total = 0

    def conv(k, cin, cout, hw):
        return 2 * k * k * cin * cout * hw

    def resnet(cin, cout, hw):
        f = conv(3, cin, cout, hw) + conv(3, cout, cout, hw) + 2 * temb * cout
        return f + (conv(1, cin, cout, hw) if cin != cout else 0)

    def transformer(ch, hw):
        proj = 2 * 2 * ch * ch * hw  # proj_in + proj_out (1x1 conv or linear)
        attn1 = 4 * 2 * ch * ch * hw + 2 * 2 * hw * hw * ch
        attn2 = 2 * 2 * ch * ch * hw + 2 * 2 * c.cross_attention_dim * ch * ctx_len
        attn2 += 2 * 2 * hw * ctx_len * ch
        ff = 2 * ch * 8 * ch * hw + 2 * 4 * ch * ch * hw
        return proj + c.transformer_layers_per_block * (attn1 + attn2 + ff)

    ch0 = c.block_out_channels[0]
    total += 2 * ch0 * temb + 2 * temb * temb
    hw = height * width
    total += conv(3, c.in_channels, ch0, hw)
    skips = [ch0]
    cin = ch0
    n = len(c.block_out_channels)
    for i, (kind, ch) in enumerate(zip(c.down_block_types, c.block_out_channels, strict=True)):
        for _ in range(c.layers_per_block):
            total += resnet(cin, ch, hw)
            if kind.startswith("CrossAttn"):
                total += transformer(ch, hw)
            skips.append(ch)
            cin = ch
        if i < n - 1:
            hw //= 4
            total += conv(3, ch, ch, hw)
            skips.append(ch)
    ch = c.block_out_channels[-1]
    total += 2 * resnet(ch, ch, hw) + transformer(ch, hw)
    for i, (kind, ch) in enumerate(
        zip(c.up_block_types, reversed(c.block_out_channels), strict=True)
    ):
        for _ in range(c.layers_per_block + 1):
            total += resnet(cin + skips.pop(), ch, hw)
            if kind.startswith("CrossAttn"):
                total += transformer(ch, hw)
            cin = ch
        if i < n - 1:
            hw *= 4
            total += conv(3, ch, ch, hw)
    total += conv(3, cin, c.out_channels, hw)
    return batch * total
