"""EDM2 magnitude-preserving UNet (Karras et al. 2024, "Analyzing and Improving the Training
Dynamics of Diffusion Models", config G: sec. 2, Fig. 21), written for forward-mode AD.

Every layer keeps the expected magnitude (RMS) of its activations at one:
  - MPConv: the stored weights are normalized per output channel in every forward pass and
    scaled by gain / sqrt(fan_in) (EDM2 sec. 2.2, eq. 47), so the output does not depend on the
    stored weights' scale. Forced weight normalization (sec. 2.3, eq. 66) keeps the stored
    weights themselves at unit magnitude: in this suite a projection after each optimizer step
    (`project_params`, called by the training loop through models.param_projection), never
    inside the loss.
  - Sec. 2.4-2.5: mp_silu (eq. 81), mp_sum (eq. 88) for residual / attention / label sums with a
    balance t, mp_cat (eq. 103) for the decoder skips, pixel normalization of the encoder
    activations and of q, k, v per head, MPFourier time features with fixed random frequencies
    and phases (eq. 75; constants, not parameters), clipping of block outputs to [-256, 256].
  - No biases, no GroupNorm; the learned gains (embedding gain of each block, output gain) start at
    zero, so the untrained network outputs exactly zero.
Blocks (Fig. 21): encoder blocks resample, project to the new width and pixel-normalize the main
path before the residual branch; decoder blocks take mp_cat(x, skip) and project at the end.
Resampling is layers.resample with the filter [1, 1] (average pool / nearest neighbour).

Sizes (EDM2 Table 2, ImageNet-512 latents, 1000 classes): XS / S / M / L / XL / XXL at 128 / 192 /
256 / 320 / 384 / 448 channels, 125M / 280M / 498M / 778M / 1.12B / 1.52B parameters.

The suite's network interface on top of EDM2's: t is c_noise (the method decides: ln(sigma) / 4
for EDM preconditioning, TrigFlow t for sCM) scaled by time_scale before MPFourier; labels are
one-hot (times sqrt(num_classes)), and the NULL id num_classes maps to the all-zero vector, EDM2's
input for "no label", so the label layer has exactly EDM2's shape; an optional second scalar d gets
its own MPFourier + MPConv, mp_sum-ed with the time embedding; `dropout_res` restricts dropout to
resolutions <= dropout_res (ECT's ImageNet-64 networks, Geng et al. 2024). Attention is
models.attention.attention of the kind `attention` (jvp-safe; 'auto' runs the fused kernel with a
blockwise jvp rule); `remat` rematerializes each block (models.remat).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fewstep_jax.models import attention as attention_lib
from fewstep_jax.models import layers
from fewstep_jax.models import remat as remat_lib

Array = jax.Array

#: EDM2 Table 2 model sizes: size -> base channels.
EDM2_SIZES: dict[str, int] = {"XS": 128, "S": 192, "M": 256, "L": 320, "XL": 384, "XXL": 448}

#: Name of the stored weight of every magnitude-preserving layer; `project_params` normalizes
#: exactly the leaves of this name (no other network of the suite uses it).
WEIGHT = "weight"

NORM_EPS = 1e-4  # EDM2's eps in normalize(): x / (eps + rms(x))
SILU_MAGNITUDE = 0.596  # RMS of SiLU(x) for x ~ N(0, 1) (eq. 81)

# Seeds of the fixed MPFourier frequencies / phases, one per embedded scalar.
TIME_SEED, D_SEED, LOGVAR_SEED = 0, 1, 2


def normalize(x: Array, axis: int | Sequence[int] = -1, eps: float = NORM_EPS) -> Array:
    """x / (eps + rms(x)) with the RMS over `axis` (EDM2 sec. 2.2-2.4, `normalize`): unit
    magnitude along those axes. Statistics in at least float32; returns that dtype."""
    x = x.astype(layers.at_least_float32(x.dtype))
    rms = jnp.sqrt(jnp.mean(jnp.square(x), axis=axis, keepdims=True))
    return x / (eps + rms)


def mp_silu(x: Array) -> Array:
    """Magnitude-preserving SiLU, SiLU(x) / 0.596 (EDM2 eq. 81)."""
    return nn.silu(x) / SILU_MAGNITUDE


def mp_sum(a: Array, b: Array, t: float = 0.5) -> Array:
    """Magnitude-preserving weighted sum ((1 - t) a + t b) / sqrt((1 - t)^2 + t^2) (EDM2 eq. 88):
    unit magnitude for independent unit-magnitude a, b; t = 0 gives a, t = 1 gives b."""
    return ((1.0 - t) * a + t * b) / math.sqrt((1.0 - t) ** 2 + t**2)


def mp_cat(a: Array, b: Array, t: float = 0.5) -> Array:
    """Magnitude-preserving concatenation on the last axis (EDM2 eq. 103): [w_a a, w_b b] with
    w_a = C (1 - t) / sqrt(N_a), w_b = C t / sqrt(N_b), C = sqrt((N_a + N_b) / ((1 - t)^2 + t^2)),
    so unit-magnitude inputs give a unit-magnitude output in which a holds the share
    (1 - t)^2 / ((1 - t)^2 + t^2) of the energy, whatever the widths N_a, N_b."""
    na, nb = a.shape[-1], b.shape[-1]
    c = math.sqrt((na + nb) / ((1.0 - t) ** 2 + t**2))
    return jnp.concatenate([(c * (1.0 - t) / math.sqrt(na)) * a, (c * t / math.sqrt(nb)) * b], axis=-1)


def fourier_constants(channels: int, bandwidth: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """MPFourier's fixed frequencies 2 pi bandwidth N(0, 1) and phases 2 pi U[0, 1) (EDM2 eq. 75),
    drawn from numpy with a fixed seed: constants of the architecture, not parameters."""
    rng = np.random.default_rng(seed)
    freqs = 2.0 * np.pi * bandwidth * rng.standard_normal(channels)
    phases = 2.0 * np.pi * rng.uniform(size=channels)
    return freqs, phases


def mp_fourier(x: Array, channels: int, bandwidth: float = 1.0, seed: int = TIME_SEED) -> Array:
    """Magnitude-preserving Fourier features sqrt(2) cos(x f + phi) (EDM2 eq. 75): [B] ->
    [B, channels], unit magnitude over random phases. At least float32."""
    x = jnp.asarray(x)
    x = x.astype(layers.at_least_float32(x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32))
    freqs, phases = fourier_constants(channels, bandwidth, seed)
    angles = x[:, None] * jnp.asarray(freqs, x.dtype) + jnp.asarray(phases, x.dtype)
    return math.sqrt(2.0) * jnp.cos(angles)


def project_params(params: Any) -> Any:
    """Forced weight normalization (EDM2 sec. 2.3, eq. 66), the projection applied after every
    optimizer update and at init: every magnitude-preserving weight (leaves named WEIGHT, layout
    [*kernel, in, out]) is rescaled per output channel to unit magnitude, mean(w_i^2) = 1 over its
    fan-in, i.e. ||w_i|| = sqrt(fan_in); a zero row stays zero. Every other leaf is returned as is,
    so this is the identity on trees without MP layers. Idempotent; float32 statistics."""

    def project(path, leaf):
        if not path or getattr(path[-1], "key", None) != WEIGHT:
            return leaf
        w = leaf.astype(layers.at_least_float32(leaf.dtype))
        axes = tuple(range(w.ndim - 1))
        rms = jnp.sqrt(jnp.mean(jnp.square(w), axis=axes, keepdims=True))
        return (w / jnp.maximum(rms, jnp.finfo(w.dtype).tiny)).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(project, params)


class MPConv(nn.Module):
    """Magnitude-preserving convolution (kernel (k, k)) or linear layer (kernel ()), no bias
    (EDM2 eq. 47): w_hat = normalize(w) * gain / sqrt(fan_in), y = x * w_hat.

    The stored weight [*kernel, in, out] starts N(0, 1). Normalizing it in the forward pass makes
    the output independent of its scale, and for unit-magnitude x and gain 1 each output channel
    has unit expected magnitude. `gain` may be a traced scalar (the learned gains of Fig. 21).
    x [..., in] (linear) or [B, H, W, in] (conv, 'same' padding) -> [..., features].
    """

    features: int
    kernel: tuple[int, ...] = ()
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, gain: Array | float = 1.0) -> Array:
        fan_in = x.shape[-1] * math.prod(self.kernel)
        w = self.param(
            WEIGHT, nn.initializers.normal(1.0), (*self.kernel, x.shape[-1], self.features), jnp.float32
        )
        w = normalize(w.astype(layers.at_least_float32(self.dtype)), axis=tuple(range(w.ndim - 1)))
        w = (w * (gain / math.sqrt(fan_in))).astype(self.dtype)
        x = x.astype(self.dtype)
        if not self.kernel:
            return x @ w
        pad = tuple((k // 2, k // 2) for k in self.kernel)
        dims = ("NHWC", "HWIO", "NHWC")
        return jax.lax.conv_general_dilated(x, w, (1,) * len(self.kernel), pad, dimension_numbers=dims)


class Block(nn.Module):
    """EDM2 encoder / decoder block (Fig. 21), x [B, H, W, C_in], emb [B, E] -> [B, H', W', out]:

      enc: x = pixel_norm(skip_proj(resample(x)))  (skip_proj = 1x1 MPConv when widths differ)
      y  = MPConv3x3(mp_silu(x));  y = mp_silu(y * (1 + MPLinear(emb, gain=emb_gain)))
      y  = MPConv3x3(dropout(y))
      dec: x = skip_proj(resample(x))
      x  = mp_sum(x, y, res_balance);  [+ attention: x = mp_sum(x, proj(attn), attn_balance)]
      x  = clip(x, -clip_act, clip_act)
    Attention uses out // channels_per_head heads with q, k, v pixel-normalized per head.
    """

    out_channels: int
    flavor: str = "enc"
    resample_mode: str = "keep"
    attention: bool = False
    channels_per_head: int = 64
    dropout: float = 0.0
    res_balance: float = 0.3
    attn_balance: float = 0.3
    clip_act: float = 256.0
    dtype: Any = jnp.float32
    attention_kind: str = "auto"  # attention_lib.ATTENTION_KINDS (`attention` says whether there is one)

    def _conv(self, features: int, kernel: int, name: str) -> MPConv:
        return MPConv(features, (kernel, kernel), self.dtype, name=name)

    @nn.compact
    def __call__(self, x: Array, emb: Array, train: bool) -> Array:
        out = self.out_channels
        x = layers.resample(x, self.resample_mode, (1, 1))
        project_skip = x.shape[-1] != out
        if self.flavor == "enc":
            if project_skip:
                x = self._conv(out, 1, "conv_skip")(x)
            x = normalize(x, axis=-1).astype(self.dtype)

        y = self._conv(out, 3, "conv_res0")(mp_silu(x))
        emb_gain = self.param("emb_gain", nn.initializers.zeros, (), jnp.float32)
        c = MPConv(out, (), emb.dtype, name="emb_linear")(emb, gain=emb_gain) + 1.0
        y = mp_silu(y * c[:, None, None, :].astype(y.dtype))
        if self.dropout > 0.0:
            y = nn.Dropout(self.dropout, deterministic=not train)(y)
        y = self._conv(out, 3, "conv_res1")(y)

        if self.flavor == "dec" and project_skip:
            x = self._conv(out, 1, "conv_skip")(x)
        x = mp_sum(x, y, self.res_balance)

        if self.attention:
            batch, height, width, _ = x.shape
            heads = out // self.channels_per_head
            qkv = self._conv(3 * out, 1, "attn_qkv")(x)
            # Channel layout (head, channel, q/k/v), as EDM2's reshape; pixel norm per head.
            qkv = normalize(qkv.reshape(batch, height * width, heads, self.channels_per_head, 3), axis=3)
            qkv = qkv.astype(self.dtype)
            a = attention_lib.attention(qkv[..., 0], qkv[..., 1], qkv[..., 2], self.attention_kind)
            a = a.reshape(batch, height, width, out)
            x = mp_sum(x, self._conv(out, 1, "attn_proj")(a), self.attn_balance)
        if self.clip_act > 0:
            x = jnp.clip(x, min=-self.clip_act, max=self.clip_act)
        return x


def label_onehot(y: Array, num_classes: int, dtype: Any = jnp.float32) -> Array:
    """EDM2's label input: layers.scaled_onehot (sqrt(num_classes) * one-hot, NULL -> zeros)."""
    return layers.scaled_onehot(y, num_classes, dtype)


class MPFourier(nn.Module):
    """mp_fourier with its frequencies and phases held as parameters `freqs`, `phases` [channels]
    (initialized to fourier_constants(channels, bandwidth, seed)) instead of constants: how an
    imported EDM2 network carries the ones drawn when it was built (EDM2's MPFourier buffers).
    Gradients never reach them (stop_gradient); with no gradient, Adam-type updates leave them
    unchanged (not weight decay: use them with optimizers without it).
    [B] -> [B, channels], at least float32."""

    channels: int
    bandwidth: float = 1.0
    seed: int = TIME_SEED

    @nn.compact
    def __call__(self, x: Array) -> Array:
        freqs, phases = fourier_constants(self.channels, self.bandwidth, self.seed)
        freqs = self.param("freqs", lambda *_: jnp.asarray(freqs, jnp.float32))
        phases = self.param("phases", lambda *_: jnp.asarray(phases, jnp.float32))
        x = jnp.asarray(x)
        x = x.astype(layers.at_least_float32(x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32))
        freqs, phases = (jax.lax.stop_gradient(v).astype(x.dtype) for v in (freqs, phases))
        return math.sqrt(2.0) * jnp.cos(x[:, None] * freqs + phases)


class EDM2(nn.Module):
    """EDM2 UNet (Fig. 21): x [B, H, W, C] (H == W), t [B] -> [B, H, W, C].

    Fields: channels (base width; EDM2_SIZES), channel_mult (per level), num_blocks (encoder
    blocks per level; the decoder has num_blocks + 1), attn_resolutions, dropout, dropout_res (0:
    dropout in every block; r > 0: only in blocks at resolutions <= r), channels_per_head,
    res_balance, attn_balance, clip_act (0 disables), label_balance, concat_balance,
    fourier_bandwidth (MPFourier frequency scale), time_scale (t is multiplied before MPFourier),
    use_d, num_classes (0 = unconditional; id num_classes is NULL), dtype (computation dtype;
    params float32), fourier_params (the time embedding's MPFourier frequencies and phases are
    parameters `emb_fourier/freqs`, `emb_fourier/phases` (MPFourier) rather than seeded
    constants: imported EDM2 networks carry the released ones), time_map / time_map_sigma_d
    (layers.map_time: 'edm_as_trigflow' runs an EDM-preconditioned network as a TrigFlow one),
    attention (attention_lib.ATTENTION_KINDS), remat (remat_lib.REMAT_POLICIES, per block).
    Embedding widths as EDM2: noise features channels * channel_mult[0], embedding channels *
    max(channel_mult).
    """

    channels: int = 192
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)
    num_blocks: int = 3
    attn_resolutions: tuple[int, ...] = (16, 8)
    dropout: float = 0.0
    dropout_res: int = 0
    channels_per_head: int = 64
    res_balance: float = 0.3
    attn_balance: float = 0.3
    clip_act: float = 256.0
    label_balance: float = 0.5
    concat_balance: float = 0.5
    fourier_bandwidth: float = 1.0
    time_scale: float = 1.0
    use_d: bool = False
    num_classes: int = 0
    dtype: Any = jnp.float32
    fourier_params: bool = False
    time_map: str = "identity"
    time_map_sigma_d: float = 0.5
    attention: str = "auto"
    remat: str = "none"

    # The training loop's post-update projection (models.param_projection).
    project_params = staticmethod(project_params)

    def _embedding(self, t: Array, y: Array | None, d: Array | None) -> Array:
        """mp_silu of the conditioning: MPLinear(MPFourier(c_noise)) [mp_sum d] [mp_sum label]."""
        t = jnp.asarray(t)
        if t.ndim != 1:
            raise ValueError(f"t must have shape [B], got {t.shape}")
        batch = t.shape[0]
        noise_dim = self.channels * self.channel_mult[0]
        emb_dim = self.channels * max(self.channel_mult)
        c_noise = self.time_scale * layers.map_time(t, self.time_map, self.time_map_sigma_d)
        if self.fourier_params:
            features = MPFourier(noise_dim, self.fourier_bandwidth, TIME_SEED, name="emb_fourier")(c_noise)
        else:
            features = mp_fourier(c_noise, noise_dim, self.fourier_bandwidth, TIME_SEED)
        emb = MPConv(emb_dim, (), features.dtype, name="emb_noise")(features)
        d = layers.second_scalar(t, d, self.use_d)
        if d is not None:
            features = mp_fourier(self.time_scale * d, noise_dim, self.fourier_bandwidth, D_SEED)
            emb = mp_sum(emb, MPConv(emb_dim, (), emb.dtype, name="emb_d")(features.astype(emb.dtype)))
        if self.num_classes > 0:
            y = layers.labels_or_null(y, batch, self.num_classes)
            onehot = label_onehot(y, self.num_classes, emb.dtype)
            emb = mp_sum(emb, MPConv(emb_dim, (), emb.dtype, name="emb_label")(onehot), self.label_balance)
        return mp_silu(emb)


    @nn.compact
    def __call__(
        self,
        x: Array,
        t: Array,
        y: Array | None = None,
        d: Array | None = None,
        train: bool = False,
    ) -> Array:
        layers.check_square_input(x, len(self.channel_mult), "EDM2")
        out_dtype = layers.at_least_float32(x.dtype)
        emb = self._embedding(t, y, d)
        widths = [self.channels * m for m in self.channel_mult]
        levels = len(widths)
        resolution = x.shape[1]

        block_cls = remat_lib.remat_block(Block, self.remat, static_argnums=(3,))  # train is static

        def block(width: int, res: int, name: str, flavor: str, **kw) -> Block:
            in_range = self.dropout_res == 0 or res <= self.dropout_res
            return block_cls(
                width, flavor, channels_per_head=self.channels_per_head,
                dropout=self.dropout if in_range else 0.0, res_balance=self.res_balance,
                attn_balance=self.attn_balance, clip_act=self.clip_act, dtype=self.dtype, name=name,
                attention_kind=self.attention, **kw,
            )

        # Encoder: a constant-one channel lets the first conv see the image border.
        h = jnp.concatenate([x, jnp.ones_like(x[..., :1])], axis=-1).astype(self.dtype)
        h = MPConv(widths[0], (3, 3), self.dtype, name="enc_conv")(h)
        skips = [h]
        for level, width in enumerate(widths):
            res = resolution >> level
            if level > 0:
                h = block(h.shape[-1], res, f"enc_{res}_down", "enc", resample_mode="down")(h, emb, train)
                skips.append(h)
            for idx in range(self.num_blocks):
                attn = res in self.attn_resolutions
                h = block(width, res, f"enc_{res}_block{idx}", "enc", attention=attn)(h, emb, train)
                skips.append(h)

        # Decoder.
        for level in reversed(range(levels)):
            res = resolution >> level
            width = widths[level]
            if level == levels - 1:
                h = block(h.shape[-1], res, f"dec_{res}_in0", "dec", attention=True)(h, emb, train)
                h = block(h.shape[-1], res, f"dec_{res}_in1", "dec")(h, emb, train)
            else:
                h = block(h.shape[-1], res, f"dec_{res}_up", "dec", resample_mode="up")(h, emb, train)
            for idx in range(self.num_blocks + 1):
                h = mp_cat(h, skips.pop(), self.concat_balance).astype(self.dtype)
                attn = res in self.attn_resolutions
                h = block(width, res, f"dec_{res}_block{idx}", "dec", attention=attn)(h, emb, train)
        assert not skips, "every encoder activation must be consumed by the decoder"

        out_gain = self.param("out_gain", nn.initializers.zeros, (), jnp.float32)
        out = MPConv(x.shape[-1], (3, 3), self.dtype, name="out_conv")(h, gain=out_gain)
        return layers.map_output(out.astype(out_dtype), self.time_map)
