"""DDPM++ / NCSN++ UNet (Song et al. 2021, score_sde `ncsnpp` DDPM++ configs; EDM "SongUNet"
with DDPM++ or NCSN++ settings, Karras et al. 2022 App. F.2), written for forward-mode AD.

Two topologies share one ResBlock:
  - The default ("DDPM++-style", the network of the digits results): separate resampling layers
    (stride-2 3x3 conv down; nearest x2 + 3x3 conv up, as in DDPM, Ho et al. 2020
    `resamp_with_conv`), attention after every decoder block of an attention level, DDPM++'s
    adaptive scale/shift modulation (emb_norm='adaptive_scale'), GroupNorm eps 1e-5.
  - EDM's DDPM++ exactly (EDM's CIFAR-10 network, ~55.7M parameters unconditional; the config
    preset recipes.ddpmpp_unet()): BigGAN-style resampling residual blocks (resample='residual': a ResBlock whose
    3x3 conv and 1x1 skip projection see the input resampled with the FIR filter [1, 1]),
    attention only on the last decoder block of a level (decoder_attn='last'), the embedding added
    before the second GroupNorm (emb_norm='additive', EDM adaptive_scale=False), GroupNorm eps
    1e-6 with at least 4 channels per group.
EDM's NCSN++ (its "-ve" CIFAR-10 models) is EDM's DDPM++ with three options: random Fourier
features of the noise level (embedding_type='fourier', fourier_scale 16, noise_dim = 2 * channels:
EDM's FourierEmbedding, channel_mult_noise 2), a residual encoder path (encoder_type='residual':
after each downsampling block the downsampled input path, a 3x3 conv resampled by the FIR filter,
is added to the features and scaled by 1 / sqrt(2), EDM's `aux_residual`) and the resampling
filter [1, 3, 3, 1] (~56.4M parameters unconditional; recipes.ddpmpp_unet() with those four keys).
All: conditioning on positional (or Fourier) features of time_scale * t (sCM sec. 4.1: c_noise = t), an
optional second scalar d and a label table with a NULL row for CFG (EDM instead adds a linear map
of the one-hot label to the positional embedding); optional sCM (Lu & Song 2024) sec. 4.1
"adaptive double normalization" (emb_norm='adaptive_double') with either topology. Kept from
DDPM++: skip_scale 1/sqrt(2) on every residual sum, GroupNorm + SiLU pre-activation blocks,
self-attention in the middle, Xavier-uniform init, near-zero init of residual branch ends and
exact-zero init of the output conv (so the untrained network outputs 0; EDM scales a Xavier init by
1e-5 there).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fewstep_jax.models import attention as attention_lib
from fewstep_jax.models import layers
from fewstep_jax.models import remat as remat_lib

Array = jax.Array

SKIP_SCALE = 1.0 / math.sqrt(2.0)  # DDPM++ skip_rescale: keeps the residual sum's variance

# How a ResBlock modulates its second GroupNorm with the embedding (see ResBlock).
EMB_NORMS = ("adaptive_scale", "adaptive_double", "additive")
# How the UNet changes resolution: separate conv layers, or resampling residual blocks (EDM).
RESAMPLINGS = ("conv", "residual")
# Which decoder blocks of an attention level get attention: all of them, or the level's last (EDM).
DECODER_ATTNS = ("all", "last")
# The encoder's input path (EDM's encoder_type): none, or NCSN++'s residual path (see UNet).
ENCODER_TYPES = ("standard", "residual")



def default_noise_dim(channels: int) -> int:
    """The noise embedding's width when noise_dim is 0: the base channel count (EDM's DDPM++,
    channel_mult_noise 1), rounded up to even, and at least 32 (16 sin / cos pairs) so that tiny
    test networks still get a usable time signal."""
    return max(32, 2 * ((channels + 1) // 2))


def visited_resolutions(resolution: int, channel_mult: Sequence[int]) -> tuple[int, ...]:
    """Spatial sizes the UNet works at, finest first: (R, R/2, ..., R / 2**(len(mult)-1))."""
    return tuple(resolution // 2**i for i in range(len(channel_mult)))


def _conv(features: int, kernel: int, dtype: Any, name: str, init=layers.xavier_uniform, pad: int | None = None, **kw):
    """A kernel x kernel convolution padded by `pad` on every side (default kernel // 2: same size)."""
    pad = kernel // 2 if pad is None else pad
    return nn.Conv(
        features,
        (kernel, kernel),
        padding=((pad, pad),) * 2,
        dtype=dtype,
        kernel_init=init,
        name=name,
        conv_general_dilated=layers.conv_general_dilated,
        **kw,
    )


class ResBlock(nn.Module):
    """DDPM++ residual block (score_sde ResnetBlockBigGAN / EDM UNetBlock):

        h = conv3x3(R(SiLU(GN(x))))
        h = SiLU(modulate(h, SiLU(emb)))
        h = conv3x3_small_init(dropout(h))
        out = (skip(x) + h) / sqrt(2)

    R is `resample` ('keep', or 'down' / 'up' by 2 with the FIR filter `resample_filter`,
    layers.resample: EDM's resampling residual blocks). skip = 1x1 conv of R(x) when resampling
    (EDM resample_proj=True) or when the widths differ, else x.

    `emb_norm` picks `modulate` (the projections act on the shared, already SiLU-ed emb):
      - 'adaptive_scale' (DDPM++ / EDM adaptive_scale=True), one Dense `emb_proj` to 2 * width:
            scale, shift = emb_proj(emb);  modulate = GN(h) * (1 + scale) + shift
      - 'additive' (EDM's DDPM++ settings, adaptive_scale=False), one Dense `emb_proj` to width:
            modulate = GN(h + emb_proj(emb))
      - 'adaptive_double' (sCM, Lu & Song 2024 sec. 4.1, adaptive double normalization), two
        separate Dense projections s = `emb_scale`, b = `emb_shift` to the block width:
            modulate = GN(h) * pnorm(s(emb)) + pnorm(b(emb)),
            pnorm(a) = a / sqrt(mean_channels(a^2) + eps)   (`layers.pixel_norm`, float32)
        s and b keep the normal (Xavier-uniform) Dense init: pnorm of a zero-initialized
        projection would be 0 with a 1 / sqrt(eps) derivative. The modulation is invariant to a
        positive rescaling of s's and b's kernels and biases.

    x [B, H, W, Cin], emb_act [B, E] (already SiLU-ed) -> [B, H, W, out_channels].
    """

    out_channels: int
    dropout: float = 0.0
    num_groups: int = 32
    dtype: Any = jnp.float32
    emb_norm: str = "adaptive_scale"
    resample: str = "keep"
    resample_filter: tuple[int, ...] = (1, 1)
    norm_eps: float = 1e-5
    min_group_size: int = 1

    def _norm(self, name: str) -> layers.GroupNorm:
        return layers.GroupNorm(
            self.num_groups, self.norm_eps, self.dtype, self.min_group_size, name=name
        )

    def _dense(self, features: int, name: str) -> nn.Dense:
        return nn.Dense(
            features, dtype=self.dtype, kernel_init=layers.xavier_uniform, name=name
        )

    @nn.compact
    def __call__(self, x: Array, emb_act: Array, train: bool) -> Array:
        if self.emb_norm not in EMB_NORMS:
            raise ValueError(f"emb_norm must be one of {EMB_NORMS}, got {self.emb_norm!r}")
        h = nn.silu(self._norm("norm_0")(x))
        h = layers.resample(h, self.resample, self.resample_filter)
        h = _conv(self.out_channels, 3, self.dtype, "conv_0")(h)
        if self.emb_norm == "additive":
            # EDM adaptive_scale=False: the projection is a per-channel bias before the GroupNorm.
            bias = self._dense(self.out_channels, "emb_proj")(emb_act)[:, None, None, :]
            h = self._norm("norm_1")(h + bias.astype(h.dtype))
        elif self.emb_norm == "adaptive_scale":
            h = self._norm("norm_1")(h)
            params = self._dense(2 * self.out_channels, "emb_proj")(emb_act)
            scale, shift = jnp.split(params[:, None, None, :], 2, axis=-1)
            h = h * (1.0 + scale) + shift
        else:
            h = self._norm("norm_1")(h)
            scale = layers.pixel_norm(self._dense(self.out_channels, "emb_scale")(emb_act))
            shift = layers.pixel_norm(self._dense(self.out_channels, "emb_shift")(emb_act))
            # pnorm and the modulation in float32 (or float64), then back to the compute dtype.
            stat = jnp.result_type(scale, layers.at_least_float32(h.dtype))
            h = h.astype(stat) * scale[:, None, None, :] + shift[:, None, None, :]
            h = h.astype(self.dtype)
        h = nn.silu(h)
        if self.dropout > 0.0:
            h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = _conv(self.out_channels, 3, self.dtype, "conv_1", init=layers.small_init())(h)
        skip = layers.resample(x, self.resample, self.resample_filter)
        if x.shape[-1] != self.out_channels or self.resample != "keep":
            skip = _conv(self.out_channels, 1, self.dtype, "skip")(skip)
        return (skip + h) * SKIP_SCALE


class AttentionBlock(nn.Module):
    """DDPM++ self-attention block: out = (x + proj(MHA(qkv(GN(x))))) / sqrt(2).

    qkv and proj are 1x1 convs (Dense on channels); proj starts near zero so the block starts as
    (scaled) identity. Attention is `attention_lib.attention` of the kind `attention`
    (attention_lib.ATTENTION_KINDS; float32 softmax, jvp-safe).
    x [B, H, W, C] -> [B, H, W, C]; C must be divisible by num_heads.
    """

    num_heads: int = 1
    num_groups: int = 32
    dtype: Any = jnp.float32
    norm_eps: float = 1e-5
    min_group_size: int = 1
    attention: str = "auto"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        batch, height, width, channels = x.shape
        if channels % self.num_heads != 0:
            raise ValueError(
                f"attention width {channels} not divisible by num_heads {self.num_heads}"
            )
        head_dim = channels // self.num_heads
        h = layers.GroupNorm(
            self.num_groups, self.norm_eps, self.dtype, self.min_group_size, name="norm"
        )(x)
        # EDM init_attn: Xavier uniform with weight sqrt(0.2) for qkv.
        qkv = nn.Dense(
            3 * channels, dtype=self.dtype, name="qkv",
            kernel_init=nn.initializers.variance_scaling(0.2, "fan_avg", "uniform"),
        )(h)
        qkv = qkv.reshape(batch, height * width, 3, self.num_heads, head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        a = attention_lib.attention(q, k, v, self.attention).reshape(batch, height, width, channels)
        a = nn.Dense(channels, dtype=self.dtype, kernel_init=layers.small_init(), name="proj")(a)
        return (x + a) * SKIP_SCALE


class Downsample(nn.Module):
    """3x3 conv, stride 2, symmetric padding 1: [B, H, W, C] -> [B, H/2, W/2, C] (DDPM)."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return _conv(x.shape[-1], 3, self.dtype, "conv", strides=(2, 2))(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then 3x3 conv: [B, H, W, C] -> [B, 2H, 2W, C] (DDPM)."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return _conv(x.shape[-1], 3, self.dtype, "conv")(x)


class ResidualDown(nn.Module):
    """NCSN++'s input path step (EDM's `aux_residual`, a Conv2d with down=True and
    fused_resample=True): a 3x3 conv padded for both the kernel and the FIR filter, then the
    filter's depthwise downsampling with stride 2 and no padding. [B, H, W, Cin] ->
    [B, H/2, W/2, features]."""

    features: int
    resample_filter: tuple[int, ...] = (1, 3, 3, 1)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        pad = 1 + (len(self.resample_filter) - 1) // 2
        h = _conv(self.features, 3, self.dtype, "conv", pad=pad)(x)
        return layers.resample(h, "down", self.resample_filter, padding=0)


class UNet(nn.Module):
    """DDPM++ UNet: x [B, H, W, C] (H == W), t [B] -> [B, H, W, C].

    conv_in -> encoder (per level: num_blocks ResBlocks [+ attention], downsample except last)
    -> middle (ResBlock, attention, ResBlock) -> decoder (per level, reversed: num_blocks + 1
    ResBlocks each on [h, skip] concatenated [+ attention], upsample except last)
    -> GroupNorm -> SiLU -> zero-init conv_out. Every encoder output (conv_in, blocks, downsample)
    is a skip; downsample / upsample are conv layers (resample='conv') or ResBlocks that resample
    (resample='residual', EDM's SongUNet). encoder_type='residual' (NCSN++) keeps a second path
    `aux`, starting at the input: after each downsampling, aux = h = (h + ResidualDown(aux)) / sqrt(2)
    (named enc_{level}_aux_residual), and that h is the skip.

    Fields: channels (base width), channel_mult (width multiplier per level), num_blocks,
    attn_resolutions (absolute spatial sizes that get attention), dropout, emb_dim (0 -> 4 *
    channels), time_scale, use_d, num_groups (clamped per width by gcd), num_heads, num_classes
    (0 = unconditional; id num_classes is NULL), dtype (computation dtype; params float32),
    emb_norm (one of EMB_NORMS: 'adaptive_scale' = DDPM++ GN(h) * (1 + scale) + shift;
    'adaptive_double' = sCM (Lu & Song 2024) sec. 4.1, adaptive double normalization,
    GN(h) * pnorm(s(emb)) + pnorm(b(emb)); 'additive' = EDM's DDPM++, GN(h + b(emb)); see
    ResBlock), resample (RESAMPLINGS), resample_filter (FIR taps of resample='residual'),
    decoder_attn (DECODER_ATTNS), norm_eps (GroupNorm eps), min_group_size (GroupNorm channels per
    group at least, layers.group_count), label_embed (layers.LABEL_EMBEDS: 'onehot_linear' is EDM's
    SongUNet label input), time_map / time_map_sigma_d (layers.map_time: 'edm_as_trigflow' runs an
    EDM-preconditioned network as a TrigFlow one), noise_dim (width of the noise features; 0 ->
    max(32, channels rounded up to even)), embedding_type (layers.TIME_EMBEDDINGS: 'fourier' is
    NCSN++'s, with fourier_scale), encoder_type (ENCODER_TYPES), attention
    (attention_lib.ATTENTION_KINDS), remat (remat_lib.REMAT_POLICIES, applied to every residual and
    attention block). The defaults are the DDPM++-style network; recipes.ddpmpp_unet() holds EDM's
    DDPM++ (and, with four keys set, EDM's NCSN++).
    """

    channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_blocks: int = 2
    attn_resolutions: tuple[int, ...] = ()
    dropout: float = 0.0
    emb_dim: int = 0
    time_scale: float = 1.0
    use_d: bool = False
    num_groups: int = 32
    num_heads: int = 1
    num_classes: int = 0
    dtype: Any = jnp.float32
    emb_norm: str = "adaptive_scale"
    resample: str = "conv"
    resample_filter: tuple[int, ...] = (1, 1)
    decoder_attn: str = "all"
    norm_eps: float = 1e-5
    min_group_size: int = 1
    label_embed: str = "table"
    time_map: str = "identity"
    time_map_sigma_d: float = 0.5
    noise_dim: int = 0
    embedding_type: str = "positional"
    fourier_scale: float = 16.0
    encoder_type: str = "standard"
    attention: str = "auto"
    remat: str = "none"

    def _check_input(self, x: Array) -> None:
        layers.check_square_input(x, len(self.channel_mult), "UNet")
        height, width = x.shape[1], x.shape[2]
        visited = visited_resolutions(height, self.channel_mult)
        missing = sorted(set(self.attn_resolutions) - set(visited))
        if missing:
            raise ValueError(
                f"attn_resolutions {missing} are not visited by this UNet at input "
                f"{height}x{width}; visited resolutions are {visited}"
            )

    @nn.compact
    def __call__(
        self,
        x: Array,
        t: Array,
        y: Array | None = None,
        d: Array | None = None,
        train: bool = False,
    ) -> Array:
        self._check_input(x)
        out_dtype = layers.at_least_float32(x.dtype)
        emb_dim = self.emb_dim or 4 * self.channels
        freq_dim = self.noise_dim or default_noise_dim(self.channels)
        emb = layers.ConditioningEmbedding(
            features=emb_dim,
            freq_dim=freq_dim,
            time_scale=self.time_scale,
            num_classes=self.num_classes,
            use_d=self.use_d,
            label_embed=self.label_embed,
            time_embedding=self.embedding_type,
            fourier_scale=self.fourier_scale,
            name="cond",
        )(layers.map_time(t, self.time_map, self.time_map_sigma_d), y, d)
        # Every block projects SiLU(emb); apply it once here (float32), cast in the projections.
        emb_act = nn.silu(emb)

        if (
            self.resample not in RESAMPLINGS
            or self.decoder_attn not in DECODER_ATTNS
            or self.encoder_type not in ENCODER_TYPES
        ):
            raise ValueError(
                f"resample must be one of {RESAMPLINGS}, decoder_attn one of {DECODER_ATTNS} and encoder_type "
                f"one of {ENCODER_TYPES}, got {self.resample!r}, {self.decoder_attn!r}, {self.encoder_type!r}"
            )
        norm = dict(norm_eps=self.norm_eps, min_group_size=self.min_group_size)
        res_cls = remat_lib.remat_block(ResBlock, self.remat, static_argnums=(3,))  # train is static
        attn_cls = remat_lib.remat_block(AttentionBlock, self.remat)

        def res_block(width: int, name: str, resample: str = "keep") -> ResBlock:
            return res_cls(
                width, self.dropout, self.num_groups, self.dtype, self.emb_norm, resample,
                self.resample_filter, name=name, **norm,
            )

        def attn_block(name: str) -> AttentionBlock:
            return attn_cls(
                self.num_heads, self.num_groups, self.dtype, name=name, attention=self.attention, **norm
            )

        def change_resolution(h: Array, mode: str, name: str) -> Array:
            if self.resample == "residual":
                return res_block(h.shape[-1], name, mode)(h, emb_act, train)
            layer = Downsample if mode == "down" else Upsample
            return layer(self.dtype, name=name)(h)

        levels = len(self.channel_mult)
        resolution = x.shape[1]
        aux = x.astype(self.dtype)
        h = _conv(self.channels, 3, self.dtype, "conv_in")(aux)
        skips = [h]
        for level, mult in enumerate(self.channel_mult):
            for block in range(self.num_blocks):
                h = res_block(self.channels * mult, f"enc_{level}_res_{block}")(h, emb_act, train)
                if resolution in self.attn_resolutions:
                    h = attn_block(f"enc_{level}_attn_{block}")(h)
                skips.append(h)
            if level != levels - 1:
                h = change_resolution(h, "down", f"enc_{level}_down")
                resolution //= 2
                if self.encoder_type == "residual":
                    down = ResidualDown(h.shape[-1], self.resample_filter, self.dtype, name=f"enc_{level}_aux_residual")
                    h = aux = (h + down(aux)) * SKIP_SCALE
                skips.append(h)

        h = res_block(h.shape[-1], "mid_res_0")(h, emb_act, train)
        h = attn_block("mid_attn")(h)
        h = res_block(h.shape[-1], "mid_res_1")(h, emb_act, train)

        for level in reversed(range(levels)):
            width = self.channels * self.channel_mult[level]
            for block in range(self.num_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = res_block(width, f"dec_{level}_res_{block}")(h, emb_act, train)
                last = block == self.num_blocks
                if resolution in self.attn_resolutions and (last or self.decoder_attn == "all"):
                    h = attn_block(f"dec_{level}_attn_{block}")(h)
            if level != 0:
                h = change_resolution(h, "up", f"dec_{level}_up")
                resolution *= 2
        assert not skips, "every encoder activation must be consumed by the decoder"

        h = layers.GroupNorm(
            self.num_groups, self.norm_eps, self.dtype, self.min_group_size, name="norm_out"
        )(h)
        h = nn.silu(h)
        out = _conv(x.shape[-1], 3, self.dtype, "conv_out", init=nn.initializers.zeros)(h)
        return layers.map_output(out.astype(out_dtype), self.time_map)
