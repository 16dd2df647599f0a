"""Diffusion Transformer, DiT (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers"),
with adaLN-Zero conditioning, written for forward-mode AD.

Architecture (DiT sec. 3.2, Fig. 3):
  x [B, H, W, C] -> patchify (conv, kernel = stride = patch) -> + fixed 2-D sin-cos positional
  embedding -> `depth` adaLN-Zero blocks -> final adaLN + LayerNorm + zero-init Dense to
  patch * patch * C -> unpatchify -> [B, H, W, C].

Differences from the reference DiT, on purpose (the suite's network interface), each with an
option that restores the reference (used for the official DiT / SiT weights,
models/pretrained/dit.py):
  - One output per input channel: the few-step methods regress a single field (velocity / x0 /
    average velocity). learn_sigma=True keeps the reference's learned-sigma head (2 C outputs per
    pixel, the first C the prediction, the last C the variance interpolation of Nichol & Dhariwal
    2021 eq. 15); the network still returns the first C, and all 2 C with `with_sigma=True`.
  - Time is embedded as positional_embedding(time_scale * t) with the suite's frequency convention
    (layers.positional_embedding: frequencies from 1 to exactly 1/10000), with an optional second
    scalar d (shortcut level k, MeanFlow interval t - r) that has its own sinusoidal embedding +
    MLP; see layers.ConditioningEmbedding. time_endpoint=False gives the reference's
    `timestep_embedding` frequencies 10000 ** (-k / 128), k = 0..127 (DiT models.py, from GLIDE).
  - Label dropout for classifier-free guidance is left to the methods; the label table always has
    the NULL row (num_classes + 1 rows).
  - The fixed positional embedding is a constant, not a (frozen) parameter as in the reference
    state dict's `pos_embed`.
Kept from DiT: 256-wide frequency embedding of t, adaLN-Zero (modulation Dense zero-initialized so
every block starts as the identity), LayerNorm without affine params (eps 1e-6), qkv with bias,
MLP ratio 4 with tanh-GELU, Xavier-uniform Linear / patch-embedding init, zero-init output layer
(so the untrained network outputs exactly 0), model sizes S / B / L / XL (DiT Table 1).

Attention is models.attention.attention of the kind `attention` ('auto': the fused kernel, with a
blockwise jvp rule that jax.jvp can push forward at O(tokens) memory); `remat` rematerializes each
block (models.remat).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fewstep_jax.models import attention as attention_lib
from fewstep_jax.models import layers
from fewstep_jax.models import remat as remat_lib

Array = jax.Array

#: DiT Table 1 configurations: size -> (hidden, depth, num_heads).
DIT_SIZES: dict[str, tuple[int, int, int]] = {
    "S": (384, 12, 6),
    "B": (768, 12, 12),
    "L": (1024, 24, 16),
    "XL": (1152, 28, 16),
}

#: Width of the sinusoidal embedding of t (and d) before its MLP (DiT `frequency_embedding_size`).
FREQ_DIM = 256

LN_EPS = 1e-6  # DiT LayerNorm eps

# Xavier-uniform over (fan_in = patch * patch * C, fan_out = hidden), i.e. the patch-embedding conv
# initialized as the Linear layer it is (DiT initializes it on the flattened [hidden, p*p*C] weight;
# Flax's conv default would count fan_out as p*p*hidden).
_patch_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=(0, 1, 2), out_axis=3)


def sincos_2d_embedding(grid_h: int, grid_w: int, dim: int) -> np.ndarray:
    """Fixed 2-D sin-cos positional embedding of a grid_h x grid_w patch grid (DiT (Peebles & Xie
    2023) sec. 3.2, "frequency-based positional embeddings (the sine-cosine version)", as in MAE).

    Token n = i * grid_w + j (row-major, the patchify order) gets
        [emb_1d(j), emb_1d(i)],  emb_1d(p) = [sin(p w_0..w_{K-1}), cos(p w_0..w_{K-1})],
    with K = dim / 4 and w_k = 10000 ** (-k / K): the first half encodes the column, the second
    half the row (the reference's meshgrid order). Returned as a float64 numpy constant (not a
    parameter; callers cast it to their computation dtype).

    Returns: [grid_h * grid_w, dim].
    """
    if dim % 4 != 0 or dim <= 0:
        raise ValueError(f"2-D sin-cos positional embedding needs dim divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000.0 ** (np.arange(quarter, dtype=np.float64) / quarter)

    def emb_1d(pos: np.ndarray) -> np.ndarray:
        angles = pos.astype(np.float64)[:, None] * omega[None, :]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
    return np.concatenate([emb_1d(cols.reshape(-1)), emb_1d(rows.reshape(-1))], axis=1)


def layer_norm(x: Array, epsilon: float = LN_EPS) -> Array:
    """LayerNorm over the last axis without affine parameters (DiT's elementwise_affine=False: the
    adaLN shift / scale take their place). Statistics in at least float32; returns that dtype."""
    h = x.astype(layers.at_least_float32(x.dtype))
    mean = jnp.mean(h, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(h - mean), axis=-1, keepdims=True)  # two-pass: no cancellation
    return (h - mean) * jax.lax.rsqrt(var + epsilon)


def modulate(normed: Array, shift: Array, scale: Array, dtype: Any) -> Array:
    """adaLN modulation normed * (1 + scale) + shift, shift / scale [B, D] broadcast over tokens
    (DiT `modulate`). Computed in normed's (>= float32) dtype, returned in `dtype`."""
    stat = normed.dtype
    out = normed * (1.0 + scale.astype(stat)[:, None, :]) + shift.astype(stat)[:, None, :]
    return out.astype(dtype)


def rms_norm(x: Array, scale: Array, epsilon: float = LN_EPS) -> Array:
    """x / sqrt(mean(x^2) + eps) * scale over the last axis (statistics in at least float32), in x's dtype."""
    h = x.astype(layers.at_least_float32(x.dtype))
    h = h * jax.lax.rsqrt(jnp.mean(jnp.square(h), axis=-1, keepdims=True) + epsilon)
    return (h * scale.astype(h.dtype)).astype(x.dtype)


def _dense(features: int, dtype: Any, name: str, init=layers.xavier_uniform) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, kernel_init=init, bias_init=nn.initializers.zeros, name=name)


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block (DiT (Peebles & Xie 2023) sec. 3.2, Fig. 3):

        shift1, scale1, gate1, shift2, scale2, gate2 = Dense_zero(SiLU(c))
        x = x + gate1 * dropout(MHA(modulate(LN(x), shift1, scale1)))
        x = x + gate2 * dropout(MLP(modulate(LN(x), shift2, scale2)))

    The modulation Dense is zero-initialized, so the gates start at 0 and the block is the identity.
    x [B, L, D], c_act [B, E] (already SiLU-ed) -> [B, L, D].
    """

    num_heads: int
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    dtype: Any = jnp.float32
    attention: str = "auto"  # attention_lib.ATTENTION_KINDS
    qk_norm: bool = False  # RMSNorm of queries and keys per head (scales start at 1; DMF at 512 px)

    @nn.compact
    def __call__(self, x: Array, c_act: Array, train: bool) -> Array:
        batch, length, width = x.shape
        if width % self.num_heads != 0:
            raise ValueError(f"DiT width {width} not divisible by num_heads {self.num_heads}")
        head_dim = width // self.num_heads
        mod = _dense(6 * width, self.dtype, "adaLN_modulation", init=nn.initializers.zeros)(c_act)
        shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(mod, 6, axis=-1)

        h = modulate(layer_norm(x), shift1, scale1, self.dtype)
        qkv = _dense(3 * width, self.dtype, "qkv")(h).reshape(batch, length, 3, self.num_heads, head_dim)
        q, k = qkv[:, :, 0], qkv[:, :, 1]
        if self.qk_norm:
            q = rms_norm(q, self.param("q_norm", nn.initializers.ones, (head_dim,), jnp.float32))
            k = rms_norm(k, self.param("k_norm", nn.initializers.ones, (head_dim,), jnp.float32))
        a = attention_lib.attention(q, k, qkv[:, :, 2], self.attention)
        a = a.reshape(batch, length, width)
        a = _dense(width, self.dtype, "proj")(a)
        if self.dropout > 0.0:
            a = nn.Dropout(self.dropout, deterministic=not train)(a)
        x = x + gate1[:, None, :].astype(x.dtype) * a.astype(x.dtype)

        h = modulate(layer_norm(x), shift2, scale2, self.dtype)
        h = _dense(int(width * self.mlp_ratio), self.dtype, "fc1")(h)
        h = nn.gelu(h, approximate=True)
        h = _dense(width, self.dtype, "fc2")(h)
        if self.dropout > 0.0:
            h = nn.Dropout(self.dropout, deterministic=not train)(h)
        return x + gate2[:, None, :].astype(x.dtype) * h.astype(x.dtype)


class DiT(nn.Module):
    """DiT (Peebles & Xie 2023): x [B, H, W, C] (H, W divisible by patch), t [B] -> [B, H, W, C].

    Fields: hidden (token width), depth (number of adaLN-Zero blocks), num_heads, patch (patch
    side), mlp_ratio, dropout (on attention / MLP outputs, train only), time_scale (t is embedded as
    positional_embedding(time_scale * t)), use_d (accept a second scalar d), num_classes (0 =
    unconditional; id num_classes is NULL), dtype (computation dtype; params float32), attention
    (attention_lib.ATTENTION_KINDS), remat (remat_lib.REMAT_POLICIES, per block). Sizes of
    DiT Table 1 are in DIT_SIZES (e.g. DiT-XL/2: hidden 1152, depth 28, 16 heads, patch 2).

    Conditioning c = emb(t) (+ emb(d)) (+ label table row), layers.ConditioningEmbedding.
    time_endpoint: frequency rule of the time embedding (False: the reference DiT's).
    learn_sigma: the output layer also emits the reference's C learned-sigma channels; the call
    returns them (after the C prediction channels) only when given with_sigma=True.
    """

    hidden: int = 384
    depth: int = 12
    num_heads: int = 6
    patch: int = 2
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    time_scale: float = 1.0
    use_d: bool = False
    num_classes: int = 0
    dtype: Any = jnp.float32
    time_endpoint: bool = True
    learn_sigma: bool = False
    attention: str = "auto"
    remat: str = "none"
    qk_norm: bool = False  # see DiTBlock

    def _check_input(self, x: Array) -> None:
        if x.ndim != 4:
            raise ValueError(f"DiT expects NHWC input [B, H, W, C], got shape {x.shape}")
        if x.shape[1] % self.patch or x.shape[2] % self.patch:
            raise ValueError(
                f"DiT input height and width must be divisible by patch={self.patch}, got "
                f"{x.shape[1]}x{x.shape[2]}"
            )

    @nn.compact
    def __call__(
        self,
        x: Array,
        t: Array,
        y: Array | None = None,
        d: Array | None = None,
        train: bool = False,
        with_sigma: bool = False,
    ) -> Array:
        self._check_input(x)
        if with_sigma and not self.learn_sigma:
            raise ValueError("with_sigma=True needs a DiT built with learn_sigma=True")
        batch, height, width, channels = x.shape
        p = self.patch
        grid_h, grid_w = height // p, width // p
        out_dtype = layers.at_least_float32(x.dtype)

        c = layers.ConditioningEmbedding(
            features=self.hidden,
            freq_dim=FREQ_DIM,
            time_scale=self.time_scale,
            num_classes=self.num_classes,
            use_d=self.use_d,
            time_endpoint=self.time_endpoint,
            name="cond",
        )(t, y, d)
        # Every adaLN modulation acts on SiLU(c) (DiT adaLN_modulation = SiLU -> Linear): apply once.
        c_act = nn.silu(c)

        h = nn.Conv(
            self.hidden, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
            kernel_init=_patch_init, bias_init=nn.initializers.zeros, name="patch_embed",
        )(x.astype(self.dtype))
        h = h.reshape(batch, grid_h * grid_w, self.hidden)
        pos = sincos_2d_embedding(grid_h, grid_w, self.hidden)
        h = h + jnp.asarray(pos, dtype=h.dtype)[None]

        block = remat_lib.remat_block(DiTBlock, self.remat, static_argnums=(3,))  # train is static
        for i in range(self.depth):
            h = block(
                self.num_heads,
                self.mlp_ratio,
                self.dropout,
                self.dtype,
                name=f"block_{i}",
                attention=self.attention,
                qk_norm=self.qk_norm,
            )(h, c_act, train)

        # Final layer: adaLN (shift, scale) + LayerNorm + zero-init Dense to the patch pixels.
        shift, scale = jnp.split(
            _dense(2 * self.hidden, self.dtype, "final_adaLN_modulation", init=nn.initializers.zeros)(c_act),
            2,
            axis=-1,
        )
        h = modulate(layer_norm(h), shift, scale, self.dtype)
        out_channels = 2 * channels if self.learn_sigma else channels
        h = _dense(p * p * out_channels, self.dtype, "final_linear", init=nn.initializers.zeros)(h)
        # Unpatchify: token (i, j) holds its p x p x out_channels patch in the patch-embedding's
        # (row, col, ch) order (the reference's 'nhwpqc->nchpwq').
        h = h.reshape(batch, grid_h, grid_w, p, p, out_channels).transpose(0, 1, 3, 2, 4, 5)
        h = h.reshape(batch, height, width, out_channels).astype(out_dtype)
        return h if with_sigma else h[..., :channels]
