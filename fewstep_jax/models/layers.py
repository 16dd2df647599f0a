"""Shared network pieces: embeddings, jvp-safe attention, group normalization.

Everything here is forward-mode (jax.jvp) safe: no jax.custom_vjp anywhere (cuDNN fused attention
is a custom_vjp and cannot be pushed forward), no mutable collections, no BatchNorm. sCM / MeanFlow
differentiate the network with jax.jvp w.r.t. (x, t), so this matters (sCM sec. 4.1, JAX_NOTES).

Precision policy: embeddings of scalar conditioning (t, d, labels) and normalization statistics are
computed in at least float32 (float64 stays float64 so that finite-difference tests are exact);
the computation dtype of the heavy layers (`dtype`, e.g. bfloat16) only applies after them.
Parameters are always stored in float32.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

Array = jax.Array
Dtype = Any

# DDPM / score_sde `default_init`: variance scaling 'fan_avg', uniform (i.e. Xavier uniform),
# the init EDM's DDPM++ ("SongUNet", init_mode='xavier_uniform') uses for every layer.
xavier_uniform = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")


def small_init(weight: float = 1e-5) -> nn.initializers.Initializer:
    """Xavier-uniform init multiplied by `weight` (EDM `init_zero`: init_weight=1e-5; score_sde
    `default_init(scale=0.)` -> 1e-10 variance). Used for the last conv of a residual branch and
    the attention output projection so each block starts close to the identity, while gradients
    still reach the layer's inputs (an exact zero would block them for one step)."""
    return nn.initializers.variance_scaling(weight**2, "fan_avg", "uniform")


def at_least_float32(dtype: Dtype) -> Dtype:
    """float32 for half types, unchanged for float32 / float64."""
    return jnp.promote_types(dtype, jnp.float32)


def positional_embedding(t: Array, dim: int, max_period: float = 10000.0, *, endpoint: bool = True) -> Array:
    """Sinusoidal positional embedding of a scalar per example (Vaswani et al. 2017; EDM
    `PositionalEmbedding`, Karras et al. 2022 App. F.2; sCM sec. 4.1 uses it for c_noise(t) = t).

    Frequency convention (EDM, endpoint=True): with half = dim // 2 and k = 0..half-1,
        freq_k = max_period ** (-k / (half - 1)),
    so the frequencies run geometrically from exactly 1 down to exactly 1 / max_period.
    With endpoint=False (ADM / DDPM `timestep_embedding`) the exponent is -k / half and the lowest
    frequency stays above 1 / max_period. Output layout: [cos(t f_0..f_{half-1}), sin(t f_0..)].
    The caller scales t beforehand (`time_scale`), e.g. so that TrigFlow t in [0, pi/2] spans
    many periods of the fastest frequency.

    Args:
      t: [B] real scalars.
      dim: embedding width, even, >= 2 (>= 4 when endpoint=True).
      max_period: 1 / lowest frequency.
    Returns:
      [B, dim], dtype at least float32 (float64 input stays float64).
    """
    if dim % 2 != 0 or dim < 2:
        raise ValueError(f"positional_embedding needs an even dim >= 2, got {dim}")
    half = dim // 2
    if endpoint and half < 2:
        raise ValueError(f"positional_embedding(endpoint=True) needs dim >= 4, got {dim}")
    t = jnp.asarray(t)
    dtype = at_least_float32(t.dtype if jnp.issubdtype(t.dtype, jnp.floating) else jnp.float32)
    t = t.astype(dtype)
    denominator = (half - 1) if endpoint else half
    exponents = jnp.arange(half, dtype=dtype) / denominator
    freqs = jnp.exp(-math.log(max_period) * exponents)
    angles = t[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


def fourier_embedding(t: Array, freqs: Array) -> Array:
    """Random Fourier features of a scalar per example (Tancik et al. 2020; score_sde's
    GaussianFourierProjection, EDM's `FourierEmbedding` of NCSN++, Karras et al. 2022 App. F.2):
    [cos(2 pi f_k t), sin(2 pi f_k t)] with fixed frequencies f (drawn N(0, scale^2) once).

    Args:
      t: [B] real scalars.
      freqs: [half] the frequencies f (not multiplied by 2 pi).
    Returns:
      [B, 2 * half], dtype at least float32 (float64 input stays float64), the layout of
      positional_embedding ([cos, sin]).
    """
    t = jnp.asarray(t)
    dtype = at_least_float32(t.dtype if jnp.issubdtype(t.dtype, jnp.floating) else jnp.float32)
    angles = t.astype(dtype)[:, None] * (2.0 * math.pi * jnp.asarray(freqs).astype(dtype))[None, :]
    return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


def attention(q: Array, k: Array, v: Array) -> Array:
    """Multi-head scaled dot-product attention softmax(q k^T / sqrt(D)) v (Vaswani et al. 2017).

    Plain einsum + softmax so that jax.jvp, jax.grad and jax.jit all work (no cuDNN custom_vjp).
    Logits and softmax are computed in at least float32; the weighted sum runs in v's dtype.

    Args:
      q: [B, Lq, H, D]; k, v: [B, Lk, H, D] (the jax.nn.dot_product_attention layout).
    Returns:
      [B, Lq, H, D] in v's dtype.
    """
    if q.shape[-1] != k.shape[-1] or k.shape[:2] != v.shape[:2]:
        raise ValueError(f"attention shape mismatch: q {q.shape}, k {k.shape}, v {v.shape}")
    compute = at_least_float32(jnp.result_type(q, k))
    scale = 1.0 / math.sqrt(q.shape[-1])
    logits = jnp.einsum("bqhd,bkhd->bhqk", q.astype(compute), k.astype(compute)) * scale
    weights = jax.nn.softmax(logits, axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)


def pixel_norm(a: Array, epsilon: float = 1e-8, axis: int = -1) -> Array:
    """Pixel normalization pnorm(a) = a / sqrt(mean over `axis` of a^2 + epsilon) (Karras et al.
    2018 "PixelNorm"; sCM, Lu & Song 2024 sec. 4.1, adaptive double normalization).

    Invariant to a positive rescaling of `a` up to the epsilon term: pnorm(c a) = pnorm(a) for
    c > 0 when mean(a^2) >> epsilon / c^2. The statistic and the division are computed in at
    least float32 (float64 stays float64); the result has that dtype. pnorm(0) = 0, but its
    derivative there is 1 / sqrt(epsilon), so never feed it an exactly-zero-initialized layer.
    """
    a = jnp.asarray(a)
    a = a.astype(at_least_float32(a.dtype))
    mean_square = jnp.mean(jnp.square(a), axis=axis, keepdims=True)
    return a * jax.lax.rsqrt(mean_square + epsilon)


RESAMPLE_MODES = ("keep", "down", "up")


def resample(x: Array, mode: str, fir: tuple[int, ...] = (1, 1), padding: int | None = None) -> Array:
    """Resample NHWC x by a factor 2 with the separable FIR filter `fir` (normalized to sum 1):
    the resampling of EDM's Conv2d up/down (Karras et al. 2022, App. F.2, resample_filter) and of
    EDM2's `resample` (Karras et al. 2024, Fig. 21).

      'down': depthwise correlation with outer(f, f), stride 2, padding (len(f) - 1) // 2
              -> [B, H/2, W/2, C];  f = (1, 1) is 2x2 average pooling.
      'up':   transposed depthwise convolution with 4 outer(f, f), stride 2, the same padding
              -> [B, 2H, 2W, C];    f = (1, 1) is nearest-neighbour upsampling.
      'keep': x unchanged.
    `padding` replaces (len(f) - 1) // 2 (e.g. 0 for 'down' after a convolution that padded
    for the filter as well: EDM's fused_resample).

    The 2-D filter is separable, so each axis is filtered in turn with len(f) strided slices
    (down) or a zero-interleaving pad and len(f) slices (up), summed with the taps as weights, in
    at least float32 and cast back to x's dtype. This is the same linear map as the depthwise
    (transposed) convolution, but XLA fuses it into elementwise loops: on XLA:CPU a depthwise
    convolution with C groups, and above all the input-dilated one that 'up' and the gradient of
    'down' need, costs about as much as a dense 3x3 convolution of the same width. Slices and
    pads are linear, so jax.jvp and jax.grad go through.
    """
    if mode not in RESAMPLE_MODES:
        raise ValueError(f"resample mode must be one of {RESAMPLE_MODES}, got {mode!r}")
    if mode == "keep":
        return x
    taps = [float(v) for v in fir]
    total = math.fsum(taps)
    if len(taps) % 2 or len(taps) < 2 or total == 0.0:
        raise ValueError(f"the resampling filter must have an even length >= 2 and a nonzero sum, got {fir}")
    size = len(taps)
    pad = (size - 1) // 2 if padding is None else int(padding)
    compute = at_least_float32(x.dtype)
    h = x.astype(compute)
    for axis in (1, 2):
        if mode == "down":
            h = _fir_down(h, [v / total for v in taps], pad, axis)
        else:
            # Transposed convolution = correlation of the 2x-dilated input with the flipped
            # filter (times 2 per axis: 4 outer(f, f) in 2-D), padded by size - 1 - pad.
            h = _fir_up(h, [2.0 * v / total for v in reversed(taps)], size - 1 - pad, axis)
    return h.astype(x.dtype)


def _fir_down(h: Array, taps: list[float], pad: int, axis: int) -> Array:
    """y[i] = sum_k taps[k] h[2 i + k - pad] along `axis` (zero outside h)."""
    size = len(taps)
    widths = [(0, 0, 0)] * h.ndim
    widths[axis] = (pad, pad, 0)
    h = jax.lax.pad(h, jnp.zeros((), h.dtype), widths)
    out_len = (h.shape[axis] - size) // 2 + 1
    return _weighted_slices(h, taps, axis, out_len, stride=2)


def _fir_up(h: Array, taps: list[float], edge: int, axis: int) -> Array:
    """Correlation of h with one zero between neighbours along `axis` (and `edge` zeros at both
    ends) with `taps`: the 1-D transposed convolution with stride 2."""
    size = len(taps)
    widths = [(0, 0, 0)] * h.ndim
    widths[axis] = (edge, edge, 1)
    h = jax.lax.pad(h, jnp.zeros((), h.dtype), widths)
    return _weighted_slices(h, taps, axis, h.shape[axis] - size + 1, stride=1)


def _weighted_slices(h: Array, taps: list[float], axis: int, out_len: int, stride: int) -> Array:
    """sum_k taps[k] h[k + stride * i] along `axis`, i = 0..out_len - 1; zero taps are skipped
    (resample refuses filters that sum to zero, so at least one tap is not)."""
    parts = [
        jax.lax.slice_in_dim(h, k, k + stride * (out_len - 1) + 1, stride, axis) * jnp.asarray(tap, h.dtype)
        for k, tap in enumerate(taps)
        if tap != 0.0
    ]
    return sum(parts[1:], parts[0])


def conv_general_dilated(
    lhs: Array,
    rhs: Array,
    window_strides: Any,
    padding: Any,
    lhs_dilation: Any = None,
    rhs_dilation: Any = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    precision: Any = None,
    **kwargs: Any,
) -> Array:
    """jax.lax.conv_general_dilated, the same function, whose derivative w.r.t. the kernel is
    computed as a matrix product on a CPU (pass it as flax.linen.Conv(conv_general_dilated=...)).

    XLA:CPU computes a kernel gradient as a convolution whose window is the whole image (e.g.
    32x32, the batch as the input's feature axis), which runs at a third of the speed of the
    forward convolution. Written as a matrix product over the kernel taps,
        dW[i, j] = sum over (b, h, w) of x_pad[b, s h + i, s w + j, :]^T g[b, h, w, :],
    it runs at about the speed of a matmul. So on a CPU, for NHWC / HWIO convolutions without
    dilation or groups and with explicit padding, this is a jax.custom_jvp function: its value
    and its tangent w.r.t. the input are lax convolutions (this function again, so that higher
    orders keep the rule); its tangent w.r.t. the kernel is the same convolution written as
    matrix products of the stacked taps (`_conv_taps`), whose transpose is the sum above.
    jax.jvp, jax.grad and their compositions go through (no custom_vjp). Anything else, and
    every other backend, calls lax.conv_general_dilated directly.
    """
    simple = (
        jax.default_backend() == "cpu"
        and not kwargs
        and feature_group_count == 1
        and dimension_numbers in (("NHWC", "HWIO", "NHWC"), _NHWC_DIMS)
        and all(d in (None, 1) for d in tuple(lhs_dilation or ()) + tuple(rhs_dilation or ()))
        and not isinstance(padding, str)
        and lhs.ndim == 4
        and all(lo >= 0 and hi >= 0 for lo, hi in padding)
    )
    if not simple:
        return jax.lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, precision=precision, **kwargs,
        )
    config = (tuple(int(v) for v in window_strides), tuple((int(lo), int(hi)) for lo, hi in padding), precision)
    return _conv_nhwc(config, lhs, rhs)


#: ("NHWC", "HWIO", "NHWC") as the ConvDimensionNumbers flax.linen.Conv passes.
_NHWC_DIMS = jax.lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))


@partial(jax.custom_jvp, nondiff_argnums=(0,))
def _conv_nhwc(config: tuple, x: Array, w: Array) -> Array:
    strides, padding, precision = config
    return jax.lax.conv_general_dilated(
        x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision
    )


def _conv_nhwc_jvp(config: tuple, primals: tuple, tangents: tuple) -> tuple[Array, Array]:
    x, w = primals
    dx, dw = tangents
    out = _conv_nhwc(config, x, w)
    parts = []
    if not isinstance(dx, SymbolicZero):
        parts.append(_conv_nhwc(config, dx, w))
    if not isinstance(dw, SymbolicZero):
        parts.append(_conv_taps(config, x, dw))
    if not parts:
        return out, jnp.zeros_like(out)
    return out, parts[0] if len(parts) == 1 else parts[0] + parts[1]


_conv_nhwc.defjvp(_conv_nhwc_jvp, symbolic_zeros=True)


@partial(jax.checkpoint, static_argnums=(0,))
def _conv_taps(config: tuple, x: Array, w: Array) -> Array:
    """The convolution as matrix products, one per kernel row i: the row's taps' shifted views of
    the padded input, x_pad[:, s h + i, s w + j, :] for every j, side by side on the channel axis
    ([B, H', W', kw Cin], im2col along the row), times w[i] as a [kw Cin, Cout] matrix, summed
    over i in at least float32. Its transpose w.r.t. w is the kernel gradient as kh products
    [kw Cin, B H' W'] x [B H' W', Cout]. The rows are a lax.scan with a checkpointed body and the
    whole is checkpointed, so reverse mode keeps only x and builds one row's views at a time
    (kh copies of the input at once would double the step's temporary memory)."""
    strides, padding, precision = config
    xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    kh, kw, cin, cout = w.shape
    out_h = (xp.shape[1] - kh) // strides[0] + 1
    out_w = (xp.shape[2] - kw) // strides[1] + 1
    accumulate = at_least_float32(jnp.result_type(x, w))
    rows_w = w.reshape(kh, kw * cin, cout)

    @jax.checkpoint
    def row(total: Array, i: Array) -> tuple[Array, None]:
        band = jax.lax.dynamic_slice_in_dim(xp, i, strides[0] * (out_h - 1) + 1, axis=1)[:, :: strides[0]]
        cols = jnp.concatenate(
            [jax.lax.slice_in_dim(band, j, j + strides[1] * (out_w - 1) + 1, strides[1], axis=2) for j in range(kw)],
            axis=-1,
        )
        product = jax.lax.dot_general(
            cols, rows_w[i], (((3,), (0,)), ((), ())), precision=precision, preferred_element_type=accumulate
        )
        return total + product, None

    total = jnp.zeros((x.shape[0], out_h, out_w, cout), accumulate)
    total, _ = jax.lax.scan(row, total, jnp.arange(kh))
    return total.astype(jnp.result_type(x, w))


def check_square_input(x: Array, levels: int, network: str) -> None:
    """A multi-resolution network's input: NHWC, square, H divisible by 2**(levels - 1)."""
    if x.ndim != 4:
        raise ValueError(f"{network} expects NHWC input [B, H, W, C], got shape {x.shape}")
    if x.shape[1] != x.shape[2] or x.shape[1] % 2 ** (levels - 1):
        raise ValueError(
            f"{network} input must be square with H divisible by 2**(len(channel_mult)-1) = "
            f"{2 ** (levels - 1)}, got {x.shape[1]}x{x.shape[2]}"
        )


def group_count(channels: int, requested: int = 32, min_group_size: int = 1) -> int:
    """Number of GroupNorm groups actually used: gcd(requested, channels), i.e. the largest group
    count that divides both, so small or odd widths (8, 16, 48) work with the default 32.

    min_group_size > 1 first caps the request at channels // min_group_size (EDM's GroupNorm,
    Karras et al. 2022: min(32, C // 4) groups, so narrow layers keep >= 4 channels per group).
    """
    if min_group_size > 1:
        requested = max(1, min(int(requested), int(channels) // int(min_group_size)))
    return math.gcd(int(requested), int(channels))


class GroupNorm(nn.Module):
    """Group normalization (Wu & He 2018), per example, statistics in at least float32.

    Per-example statistics keep examples independent in a batch (what BatchNorm breaks) and need no
    mutable state, so the norm is safe under jax.jvp. The group count is clamped with
    `group_count` so any channel width works. Affine scale/bias are float32 params.

    Input [..., C] (NHWC or [B, C]); reduction over all non-batch axes within each group.
    """

    num_groups: int = 32
    epsilon: float = 1e-5  # GroupNorm eps (EDM's SongUNet DDPM++ blocks use 1e-6)
    dtype: Dtype = jnp.float32
    min_group_size: int = 1  # see group_count

    @nn.compact
    def __call__(self, x: Array) -> Array:
        channels = x.shape[-1]
        groups = group_count(channels, self.num_groups, self.min_group_size)
        stat_dtype = at_least_float32(x.dtype)
        h = x.astype(stat_dtype)
        grouped = h.reshape(*h.shape[:-1], groups, channels // groups)
        axes = tuple(range(1, grouped.ndim - 2)) + (grouped.ndim - 1,)
        mean = jnp.mean(grouped, axis=axes, keepdims=True)
        # Two-pass variance: E[(x - mu)^2] avoids the cancellation of E[x^2] - mu^2.
        var = jnp.mean(jnp.square(grouped - mean), axis=axes, keepdims=True)
        normed = ((grouped - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(h.shape)
        scale = self.param("scale", nn.initializers.ones, (channels,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
        out = normed * scale.astype(stat_dtype) + bias.astype(stat_dtype)
        return out.astype(self.dtype)


#: How TimestepEmbedder turns the scalar into features (see TimestepEmbedder).
TIME_EMBEDDINGS = ("positional", "fourier")


class TimestepEmbedder(nn.Module):
    """Scalar conditioning embedding: features(time_scale * t) -> Dense -> SiLU -> Dense.

    EDM DDPM++ (Karras et al. 2022, App. F.2: `map_noise` positional embedding then `map_layer0`,
    `map_layer1`) and sCM sec. 4.1 (c_noise(t) = t, positional, no random Fourier features).
    `embedding` (TIME_EMBEDDINGS) picks the features: 'positional' (positional_embedding) or
    'fourier' (fourier_embedding, EDM's NCSN++ `FourierEmbedding`): its freq_dim / 2 frequencies
    are a parameter `freqs` drawn N(0, fourier_scale^2) at init (EDM draws them when it builds the
    network and stores them; an imported network carries the file's), which gradients never
    reach (stop_gradient; Adam-type updates then leave them unchanged, weight decay would not).
    Computed in at least float32 regardless of the network's computation dtype.

    __call__(t [B], pre [B, freq_dim] | None) -> [B, features].
    """

    features: int
    freq_dim: int = 256
    time_scale: float = 1.0
    max_period: float = 10000.0
    endpoint: bool = True
    embedding: str = "positional"
    fourier_scale: float = 16.0

    @nn.compact
    def __call__(self, t: Array, pre: Array | None = None) -> Array:
        """`pre` [B, freq_dim], optional, is added to the positional embedding before the MLP
        (EDM's SongUNet adds its label projection there)."""
        t = jnp.asarray(t)
        dtype = at_least_float32(t.dtype if jnp.issubdtype(t.dtype, jnp.floating) else jnp.float32)
        if t.ndim != 1:
            raise ValueError(f"expected a [B] vector of scalar conditioning, got shape {t.shape}")
        if self.embedding not in TIME_EMBEDDINGS:
            raise ValueError(f"embedding must be one of {TIME_EMBEDDINGS}, got {self.embedding!r}")
        if self.embedding == "fourier":
            if self.freq_dim % 2 or self.freq_dim < 2:
                raise ValueError(f"a Fourier embedding needs an even freq_dim >= 2, got {self.freq_dim}")
            freqs = self.param("freqs", nn.initializers.normal(self.fourier_scale), (self.freq_dim // 2,), jnp.float32)
            h = fourier_embedding(self.time_scale * t.astype(dtype), jax.lax.stop_gradient(freqs))
        else:
            h = positional_embedding(
                self.time_scale * t.astype(dtype), self.freq_dim, self.max_period, endpoint=self.endpoint
            )
        if pre is not None:
            h = h + pre.astype(dtype)
        h = nn.Dense(self.features, dtype=dtype, kernel_init=xavier_uniform, name="dense_0")(h)
        h = nn.silu(h)
        return nn.Dense(self.features, dtype=dtype, kernel_init=xavier_uniform, name="dense_1")(h)


class LabelEmbedding(nn.Module):
    """Class-label embedding table with num_classes + 1 rows; row `num_classes` is the NULL class.

    The learned null row is what classifier-free guidance (Ho & Salimans 2022) and label dropout
    (DiT, Peebles & Xie 2023; sCM App. G) condition on for the unconditional branch.

    __call__(y int [B] in 0..num_classes) -> [B, features] float32.
    Ids outside 0..num_classes (including negatives such as a -1 "no label" sentinel, which plain
    indexing would wrap onto the null row) produce NaN rows: a bad label is loud, not silent.
    """

    num_classes: int
    features: int

    @nn.compact
    def __call__(self, y: Array) -> Array:
        table = self.param(
            "embedding",
            nn.initializers.normal(stddev=1.0),
            (self.num_classes + 1, self.features),
            jnp.float32,
        )
        y = jnp.asarray(y)
        if not jnp.issubdtype(y.dtype, jnp.integer):
            raise ValueError(f"labels y must be integers, got dtype {y.dtype}")
        valid = (y >= 0) & (y <= self.num_classes)
        rows = jnp.take(table, jnp.where(valid, y, 0), axis=0)
        return jnp.where(valid[:, None], rows, jnp.nan)


def second_scalar(t: Array, d: Array | None, use_d: bool) -> Array | None:
    """The second scalar conditioning of a network built with `use_d`: d (zeros when None, same
    shape as t). None for a network without it; passing a d to such a network raises, so a
    misconfigured method fails loudly instead of being ignored."""
    if not use_d:
        if d is not None:
            raise ValueError(
                "the network received a d (second scalar conditioning) but was built with "
                "use_d=False; set model.use_d=True in the config"
            )
        return None
    d = jnp.zeros_like(t) if d is None else jnp.asarray(d)
    if d.shape != t.shape:
        raise ValueError(f"d must have the shape of t {t.shape}, got {d.shape}")
    return d


#: How a network's ConditioningEmbedding takes class labels (see ConditioningEmbedding).
LABEL_EMBEDS = ("table", "onehot_linear", "onehot_dense")

#: What a network feeds its noise embedding, given the method's time t (`map_time`).
TIME_MAPS = ("identity", "edm_as_trigflow")


def onehot(y: Array, num_classes: int, dtype: Dtype = jnp.float32, scale: float = 1.0) -> Array:
    """One-hot labels times `scale`; the NULL id num_classes is the all-zero vector (EDM's and
    EDM2's input without a label). Ids outside 0..num_classes give NaN rows, so a bad label is
    loud. y int [B] -> [B, num_classes] `dtype`."""
    y = jnp.asarray(y)
    if not jnp.issubdtype(y.dtype, jnp.integer):
        raise ValueError(f"labels y must be integers, got dtype {y.dtype}")
    valid = (y >= 0) & (y <= num_classes)
    out = jax.nn.one_hot(y, num_classes, dtype=dtype)
    if scale != 1.0:
        out = out * jnp.asarray(scale, dtype)
    return jnp.where(valid[:, None], out, jnp.nan)


def scaled_onehot(y: Array, num_classes: int, dtype: Dtype = jnp.float32) -> Array:
    """One-hot labels scaled by sqrt(num_classes) (unit magnitude; EDM's SongUNet and EDM2's
    label input): `onehot` with scale sqrt(num_classes)."""
    return onehot(y, num_classes, dtype, math.sqrt(num_classes))


def map_time(t: Array, time_map: str, sigma_d: float) -> Array:
    """The scalar a network embeds for the method's time t (TIME_MAPS):

      'identity'         t itself (the network's time_scale multiplies it afterwards);
      'edm_as_trigflow'  c_noise = ln(sigma_d tan t) / 4: an EDM-preconditioned network
                         (Karras et al. 2022, Table 1) used as a TrigFlow one (sCM, Lu & Song
                         2024, sec. 3); with `map_output` negating its output this is exact.

    Why it is exact: with sigma = sigma_d tan t and x_t = cos(t) x_sigma, EDM's c_in x_sigma =
    x_t / sigma_d (TrigFlow's input), c_skip = cos^2 t, c_out = sigma_d sin t, so EDM's denoiser
    D = cos(t) x_t + sigma_d sin(t) F_edm(x_t / sigma_d, c_noise) equals TrigFlow's
    f = cos(t) x_t - sigma_d sin(t) F_trig(x_t / sigma_d, t) when F_trig = -F_edm.
    t must lie in (0, pi/2) for that map (c_noise is infinite at the ends)."""
    if time_map not in TIME_MAPS:
        raise ValueError(f"time_map must be one of {TIME_MAPS}, got {time_map!r}")
    if time_map == "identity":
        return t
    t = jnp.asarray(t)
    t = t.astype(at_least_float32(t.dtype if jnp.issubdtype(t.dtype, jnp.floating) else jnp.float32))
    return jnp.log(sigma_d * jnp.tan(t)) / 4.0


def map_output(out: Array, time_map: str) -> Array:
    """The network output under `time_map`: negated for 'edm_as_trigflow' (see map_time)."""
    return -out if time_map == "edm_as_trigflow" else out


def labels_or_null(y: Array | None, batch: int, num_classes: int) -> Array:
    """Labels [B] for a conditional network: y, or all NULL (id num_classes) when None."""
    y = jnp.full((batch,), num_classes, jnp.int32) if y is None else jnp.asarray(y)
    if y.shape != (batch,):
        raise ValueError(f"y must have shape [B] = ({batch},), got {y.shape}")
    return y


class ConditioningEmbedding(nn.Module):
    """The network-wide conditioning vector: time embedding (+ d embedding) (+ label embedding).

    Shared by every network so the interface rules live in one place:
      - y=None with num_classes > 0 means all-NULL labels (id == num_classes); y is ignored when
        num_classes == 0.
      - `label_embed` (LABEL_EMBEDS) says how labels enter: 'table' (LabelEmbedding: a learned
        row per class and one for NULL, added to the time embedding), 'onehot_linear' (EDM's
        SongUNet, Karras et al. 2022: a Dense map, with bias, of sqrt(num_classes) * one-hot to
        the positional width, added to the positional embedding before the time MLP; NULL is the
        all-zero one-hot, EDM's input without a label) or 'onehot_dense' (ADM as EDM's
        DhariwalUNet has it: a bias-free Dense map of the plain one-hot to the embedding width,
        initialized N(0, 1), added to the time embedding after its MLP; NULL adds nothing).
      - `time_embedding` / `fourier_scale`: TimestepEmbedder.embedding / fourier_scale.
      - d is a second scalar (shortcut step size, MeanFlow interval t - r) with its own embedder,
        summed with the time embedding; d=None means zeros. Passing d to a network built with
        use_d=False raises, so a misconfigured method fails loudly instead of being ignored.
      - time_endpoint is TimestepEmbedder.endpoint for t and d (False: DiT's frequencies).

    __call__(t [B], y [B] | None, d [B] | None) -> [B, features], dtype at least float32.
    """

    features: int
    freq_dim: int
    time_scale: float = 1.0
    num_classes: int = 0
    use_d: bool = False
    time_endpoint: bool = True
    label_embed: str = "table"
    time_embedding: str = "positional"
    fourier_scale: float = 16.0

    @nn.compact
    def __call__(self, t: Array, y: Array | None = None, d: Array | None = None) -> Array:
        t = jnp.asarray(t)
        if t.ndim != 1:
            raise ValueError(f"t must have shape [B], got {t.shape}")
        if self.label_embed not in LABEL_EMBEDS:
            raise ValueError(f"label_embed must be one of {LABEL_EMBEDS}, got {self.label_embed!r}")
        batch = t.shape[0]
        pre = None
        if self.num_classes > 0 and self.label_embed == "onehot_linear":
            dtype = at_least_float32(t.dtype if jnp.issubdtype(t.dtype, jnp.floating) else jnp.float32)
            scaled = scaled_onehot(labels_or_null(y, batch, self.num_classes), self.num_classes, dtype)
            pre = nn.Dense(self.freq_dim, dtype=dtype, kernel_init=xavier_uniform, name="label")(scaled)
        embedder = partial(
            TimestepEmbedder,
            self.features,
            self.freq_dim,
            self.time_scale,
            endpoint=self.time_endpoint,
            embedding=self.time_embedding,
            fourier_scale=self.fourier_scale,
        )
        emb = embedder(name="time")(t, pre)
        d = second_scalar(t, d, self.use_d)
        if d is not None:
            emb = emb + embedder(name="d")(d)
        if self.num_classes > 0 and self.label_embed == "table":
            y = labels_or_null(y, batch, self.num_classes)
            emb = emb + LabelEmbedding(self.num_classes, self.features, name="label")(y).astype(emb.dtype)
        if self.num_classes > 0 and self.label_embed == "onehot_dense":
            labels = onehot(labels_or_null(y, batch, self.num_classes), self.num_classes, emb.dtype)
            dense = nn.Dense(
                self.features, use_bias=False, dtype=emb.dtype, kernel_init=nn.initializers.normal(1.0), name="label"
            )
            emb = emb + dense(labels)
        return emb
