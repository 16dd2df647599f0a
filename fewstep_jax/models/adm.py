"""ADM UNet (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis") as EDM
re-implements it (Karras et al. 2022, NVlabs/edm training/networks.py `DhariwalUNet`: the network of
EDM's ImageNet-64 model edm-imagenet-64x64-cond-adm.pkl), written for forward-mode AD.

EDM's ImageNet-64 configuration (train.py --arch=adm) is the default: 192 channels x [1, 2, 3, 4],
3 residual blocks per level, self-attention at 32, 16 and 8 with heads of 64 channels, dropout
0.1, an embedding of 4 x 192 = 768 channels; ~296M parameters with 1000 classes.

  conditioning  positional_embedding(time_scale * t) of `channels` width with ADM's frequencies
                (1 / 10000^(k / half), no endpoint) -> Dense -> SiLU -> Dense, plus a bias-free
                Dense of the plain one-hot label (layers.ConditioningEmbedding, label_embed=
                'onehot_dense'; NULL, the all-zero one-hot, adds nothing), then SiLU.
  ADMBlock      EDM's UNetBlock with DhariwalUNet's settings:
                    h = conv3x3(R(SiLU(GN(x))))
                    scale, shift = Dense(emb);  h = SiLU(GN(h) * (1 + scale) + shift)
                    h = conv3x3_zero(dropout(h));  x = h + skip(x)
                    [x = x + proj_zero(MHA(qkv(GN(x))))]     heads of channels_per_head channels
                R is 'down' / 'up' by 2 with the filter [1, 1] (2x2 average / nearest neighbour,
                layers.resample) in the resampling blocks; skip(x) is R(x) (no projection: EDM's
                resample_proj=False) in those, a 1x1 conv where the width changes, else x. No
                1 / sqrt(2) on the sums (skip_scale 1). GroupNorm eps 1e-5 with min(32, C / 4)
                groups.
  topology      conv_in -> per level: num_blocks blocks [+ attention], a down block except at
                the last level -> middle: block with attention, block -> per level reversed:
                num_blocks + 1 blocks on [h, skip] concatenated [+ attention], an up block except
                at level 0 -> GroupNorm -> SiLU -> conv_out. Every encoder output is a skip.

Initialization as DhariwalUNet: weights and biases U(+-1 / sqrt(fan_in)) (EDM's kaiming_uniform
with weight sqrt(1/3)); the residual branch's last conv, the attention projection and conv_out
start at exactly zero (the untrained network outputs 0); the label map N(0, 1). The time MLP keeps
the suite's ConditioningEmbedding init (Xavier uniform). EDM's augmentation-label map is not part
of the network (EDM samples without augmentation labels).

The suite's interface: x [B, H, W, C] (H == W), t [B] (the method's c_noise, e.g. EDM's
ln(sigma) / 4), optional labels y [B] (id num_classes = NULL) and a second scalar d (use_d) ->
[B, H, W, C]. Attention is layers.attention (einsum, float32 softmax), never a custom_vjp.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fewstep_jax.models import layers

Array = jax.Array

NORM_EPS = 1e-5  # EDM's GroupNorm default, which DhariwalUNet keeps
MIN_GROUP_SIZE = 4  # EDM's GroupNorm: min(32, C // 4) groups

#: DhariwalUNet's weight init (kaiming_uniform, init_weight sqrt(1/3)): U(+-1 / sqrt(fan_in)).
weight_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def bias_init(fan_in: int) -> nn.initializers.Initializer:
    """DhariwalUNet's bias init (init_bias sqrt(1/3) of kaiming_uniform): U(+-1 / sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _conv(features: int, kernel: int, fan_in: int, dtype: Any, name: str, zero: bool = False) -> nn.Conv:
    return nn.Conv(
        features,
        (kernel, kernel),
        padding=((kernel // 2, kernel // 2),) * 2,
        dtype=dtype,
        kernel_init=nn.initializers.zeros if zero else weight_init,
        bias_init=nn.initializers.zeros if zero else bias_init(fan_in),
        name=name,
    )


def _dense(features: int, fan_in: int, dtype: Any, name: str, zero: bool = False) -> nn.Dense:
    return nn.Dense(
        features,
        dtype=dtype,
        kernel_init=nn.initializers.zeros if zero else weight_init,
        bias_init=nn.initializers.zeros if zero else bias_init(fan_in),
        name=name,
    )


def _norm(dtype: Any, name: str) -> layers.GroupNorm:
    return layers.GroupNorm(32, NORM_EPS, dtype, MIN_GROUP_SIZE, name=name)


class ADMBlock(nn.Module):
    """EDM's UNetBlock with DhariwalUNet's settings (see the module docstring).

    out_channels, num_heads (0: no attention), dropout, resample ('keep', 'down', 'up').
    x [B, H, W, Cin], emb_act [B, E] (already SiLU-ed) -> [B, H', W', out_channels].
    """

    out_channels: int
    num_heads: int = 0
    dropout: float = 0.0
    resample: str = "keep"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, emb_act: Array, train: bool) -> Array:
        width, cin = self.out_channels, x.shape[-1]
        h = nn.silu(_norm(self.dtype, "norm_0")(x))
        h = layers.resample(h, self.resample)
        h = _conv(width, 3, 9 * cin, self.dtype, "conv_0")(h)
        params = _dense(2 * width, emb_act.shape[-1], self.dtype, "emb_proj")(emb_act)
        scale, shift = jnp.split(params[:, None, None, :], 2, axis=-1)
        h = nn.silu(_norm(self.dtype, "norm_1")(h) * (1.0 + scale) + shift)
        if self.dropout > 0.0:
            h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = _conv(width, 3, 9 * width, self.dtype, "conv_1", zero=True)(h)
        skip = layers.resample(x, self.resample)
        if cin != width:
            skip = _conv(width, 1, cin, self.dtype, "skip")(skip)
        h = h + skip
        if not self.num_heads:
            return h
        batch, height, wide, _ = h.shape
        a = _norm(self.dtype, "norm_2")(h)
        qkv = _dense(3 * width, width, self.dtype, "qkv")(a)
        qkv = qkv.reshape(batch, height * wide, 3, self.num_heads, width // self.num_heads)
        a = layers.attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]).reshape(batch, height, wide, width)
        return h + _dense(width, width, self.dtype, "proj", zero=True)(a)


class ADM(nn.Module):
    """ADM UNet (EDM's DhariwalUNet): x [B, H, W, C] (H == W), t [B] -> [B, H, W, C].

    Fields: channels (base width), channel_mult (per level), num_blocks (encoder blocks per level;
    the decoder has num_blocks + 1), attn_resolutions (absolute spatial sizes with attention; the
    middle always has it), dropout, emb_dim (0 -> 4 * channels), channels_per_head (attention
    heads of that many channels: width / channels_per_head heads), time_scale (t is multiplied
    before the positional embedding), use_d, num_classes (0 = unconditional; id num_classes is
    NULL), dtype (computation dtype; params float32), time_map / time_map_sigma_d
    (layers.map_time: 'edm_as_trigflow' runs an EDM-preconditioned network as a TrigFlow one).
    Parameter names: cond/..., conv_in, enc_{level}_block_{i}, enc_{level}_down, mid_0, mid_1,
    dec_{level}_block_{i}, dec_{level}_up, norm_out, conv_out.
    """

    channels: int = 192
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)
    num_blocks: int = 3
    attn_resolutions: tuple[int, ...] = (32, 16, 8)
    dropout: float = 0.1
    emb_dim: int = 0
    channels_per_head: int = 64
    time_scale: float = 1.0
    use_d: bool = False
    num_classes: int = 0
    dtype: Any = jnp.float32
    time_map: str = "identity"
    time_map_sigma_d: float = 0.5

    def _heads(self, width: int) -> int:
        if width % self.channels_per_head:
            raise ValueError(f"attention width {width} is not a multiple of channels_per_head {self.channels_per_head}")
        return width // self.channels_per_head

    @nn.compact
    def __call__(
        self,
        x: Array,
        t: Array,
        y: Array | None = None,
        d: Array | None = None,
        train: bool = False,
    ) -> Array:
        layers.check_square_input(x, len(self.channel_mult), "ADM")
        out_dtype = layers.at_least_float32(x.dtype)
        emb = layers.ConditioningEmbedding(
            features=self.emb_dim or 4 * self.channels,
            freq_dim=self.channels,
            time_scale=self.time_scale,
            num_classes=self.num_classes,
            use_d=self.use_d,
            time_endpoint=False,
            label_embed="onehot_dense",
            name="cond",
        )(layers.map_time(t, self.time_map, self.time_map_sigma_d), y, d)
        emb_act = nn.silu(emb)

        def block(width: int, name: str, attention: bool = False, resample: str = "keep") -> ADMBlock:
            heads = self._heads(width) if attention else 0
            return ADMBlock(width, heads, self.dropout, resample, self.dtype, name=name)

        levels = len(self.channel_mult)
        resolution = x.shape[1]
        h = _conv(self.channels * self.channel_mult[0], 3, 9 * x.shape[-1], self.dtype, "conv_in")(x.astype(self.dtype))
        skips = [h]
        for level, mult in enumerate(self.channel_mult):
            attention = resolution in self.attn_resolutions
            for i in range(self.num_blocks):
                h = block(self.channels * mult, f"enc_{level}_block_{i}", attention)(h, emb_act, train)
                skips.append(h)
            if level != levels - 1:
                h = block(h.shape[-1], f"enc_{level}_down", resample="down")(h, emb_act, train)
                resolution //= 2
                skips.append(h)

        h = block(h.shape[-1], "mid_0", attention=True)(h, emb_act, train)
        h = block(h.shape[-1], "mid_1")(h, emb_act, train)

        for level in reversed(range(levels)):
            attention = resolution in self.attn_resolutions
            for i in range(self.num_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = block(self.channels * self.channel_mult[level], f"dec_{level}_block_{i}", attention)(
                    h, emb_act, train
                )
            if level != 0:
                h = block(h.shape[-1], f"dec_{level}_up", resample="up")(h, emb_act, train)
                resolution *= 2
        assert not skips, "every encoder activation must be consumed by the decoder"

        h = nn.silu(_norm(self.dtype, "norm_out")(h))
        out = _conv(x.shape[-1], 3, 9 * h.shape[-1], self.dtype, "conv_out", zero=True)(h)
        return layers.map_output(out.astype(out_dtype), self.time_map)
