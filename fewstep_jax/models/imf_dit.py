"""The improved MeanFlow DiT (iMF; Geng et al. 2025, arXiv 2512.02012, sec. 4 and the official JAX
code Lyy-iiis/imeanflow `models/imfDiT.py`), written for forward-mode AD.

Architecture:
  - In-context conditioning instead of adaLN-Zero: learned tokens plus a broadcast embedding of
    each condition are prepended to the patch tokens: 8 class tokens (label), 4 CFG-scale tokens
    (1 - 1/omega), 2 + 2 interval tokens (t_min, t_max) and 4 time tokens (h = t - r); with
    `condition_on_t` 4 more for t (the paper writes u(z, r, t); the code conditions on h only,
    the default here). Every condition has its own timestep embedder (ADM sinusoids of width
    256, Linear -> SiLU -> Linear); the label table has a NULL row.
  - No absolute position embedding: rotary embeddings (RoPE, Su et al. 2021) over the whole
    token sequence, prefix included, on interleaved pairs of each head's channels.
  - Pre-norm blocks with RMSNorm, attention with RMS-normalized queries and keys (QK-norm),
    SwiGLU MLP of width 8/3 H, each residual branch scaled by a zero-initialized per-channel gate.
  - A shared trunk of depth - aux_depth blocks, then two heads of aux_depth blocks each: u (the
    average velocity) and the auxiliary v (the instantaneous velocity, trained only, never needed
    to sample), each with RMSNorm and a zero-initialized linear output layer.
Initialization as the code: linear weights N(0, (c / sqrt(fan_in))^2) with c = 0.32 in the
blocks (variance 0.1 / fan_in) and c = 1 in the embedders, tokens and label table
N(0, 1 / H), the patch embedding Xavier-uniform, output layers and gates zero (the untrained
network outputs exactly 0). Attention is layers.attention (einsum, float32 softmax), which
jax.jvp can push forward.

Interface (the suite's, plus the guidance inputs): __call__(x, t, y, d, train, extra, heads) with
d = h = t - r, extra [B, 3] = (1 - 1/omega, t_min, t_max) (None: omega = 1 on [0, 1]); returns u
(heads='u'), v ('v': the u head is not computed) or (u, v) ('uv').
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fewstep_jax.models import layers
from fewstep_jax.models.dit import rms_norm

Array = jax.Array

#: iMF sizes (paper Table 4 / the code's imfDiT_*_2): size -> (hidden, depth, num_heads).
IMF_DIT_SIZES: dict[str, tuple[int, int, int]] = {
    "B": (768, 12, 12),
    "M": (768, 24, 12),
    "L": (1024, 32, 16),
    "XL": (1024, 48, 16),
}

FREQ_DIM = 256
RMS_EPS = 1e-6

_xavier_patch = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=(0, 1, 2), out_axis=3)


def scaled_normal(constant: float) -> nn.initializers.Initializer:
    """N(0, (constant / sqrt(fan_in))^2) for a [fan_in, fan_out] kernel (the code's 'scaled_variance')."""
    return nn.initializers.variance_scaling(constant**2, "fan_in", "normal")


def rope_angles(head_dim: int, length: int, theta: float = 10000.0) -> np.ndarray:
    """Rotary angles [length, head_dim / 2]: position p times theta^(-2k / head_dim) (float64)."""
    freqs = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    return np.outer(np.arange(length, dtype=np.float64), freqs)


def apply_rope(x: Array, angles: Array) -> Array:
    """Rotate each interleaved channel pair (x_2k, x_2k+1) of x [B, L, H, D] by angles [L, D / 2]."""
    dtype = layers.at_least_float32(x.dtype)
    pairs = x.astype(dtype).reshape(*x.shape[:-1], x.shape[-1] // 2, 2)
    cos = jnp.cos(angles).astype(dtype)[None, :, None, :]
    sin = jnp.sin(angles).astype(dtype)[None, :, None, :]
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = jnp.stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1)
    return rotated.reshape(x.shape).astype(x.dtype)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * scale over the last axis (statistics in at least float32)."""

    epsilon: float = RMS_EPS

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return rms_norm(x, self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32), self.epsilon)


class Embedder(nn.Module):
    """A scalar condition -> [B, H]: ADM sinusoids of width 256, Linear -> SiLU -> Linear (float32)."""

    features: int
    init_constant: float = 1.0

    @nn.compact
    def __call__(self, s: Array) -> Array:
        s = jnp.asarray(s)
        dtype = layers.at_least_float32(s.dtype if jnp.issubdtype(s.dtype, jnp.floating) else jnp.float32)
        h = layers.positional_embedding(s.astype(dtype), FREQ_DIM, endpoint=False)
        init = scaled_normal(self.init_constant)
        h = nn.Dense(self.features, dtype=dtype, kernel_init=init, name="dense_0")(h)
        return nn.Dense(self.features, dtype=dtype, kernel_init=init, name="dense_1")(nn.silu(h))


class Block(nn.Module):
    """x + gate_a * Attn(RMSNorm(x)); x + gate_m * SwiGLU(RMSNorm(x)); gates zero-initialized."""

    num_heads: int
    mlp_ratio: float
    init_constant: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, angles: Array) -> Array:
        batch, length, width = x.shape
        head_dim = width // self.num_heads
        init = scaled_normal(self.init_constant)

        def dense(features: int, name: str) -> nn.Dense:
            return nn.Dense(features, use_bias=False, dtype=self.dtype, kernel_init=init, name=name)

        h = RMSNorm(name="norm1")(x)
        q, k, v = (dense(width, n)(h).reshape(batch, length, self.num_heads, head_dim) for n in ("q", "k", "v"))
        q = apply_rope(RMSNorm(name="q_norm")(q), angles)
        k = apply_rope(RMSNorm(name="k_norm")(k), angles)
        a = layers.attention(q, k, v).reshape(batch, length, width)
        a = dense(width, "out")(a)
        gate_a = self.param("attn_gate", nn.initializers.zeros, (width,), jnp.float32)
        x = x + gate_a.astype(x.dtype) * a.astype(x.dtype)

        h = RMSNorm(name="norm2")(x)
        hidden = int(width * self.mlp_ratio)
        h = dense(width, "w2")(nn.silu(dense(hidden, "w1")(h)) * dense(hidden, "w3")(h))
        gate_m = self.param("mlp_gate", nn.initializers.zeros, (width,), jnp.float32)
        return x + gate_m.astype(x.dtype) * h.astype(x.dtype)


class IMFDiT(nn.Module):
    """The iMF DiT (see the module docstring): x [B, H, W, C] -> u, v or (u, v) (`heads`)."""

    hidden: int = 768
    depth: int = 12
    num_heads: int = 12
    patch: int = 2
    mlp_ratio: float = 8.0 / 3.0
    aux_depth: int = 8
    num_classes: int = 0
    class_tokens: int = 8
    omega_tokens: int = 4
    interval_tokens: int = 2
    time_tokens: int = 4
    condition_on_t: bool = False
    init_constant: float = 0.32
    dtype: Any = jnp.float32

    takes_guidance_inputs = True  # the iMF method's test for a network with these inputs
    use_d = True  # d = h = t - r

    @property
    def prefix(self) -> int:
        """Number of condition tokens in front of the patches."""
        n = self.omega_tokens + 2 * self.interval_tokens + self.time_tokens * (2 if self.condition_on_t else 1)
        return n + (self.class_tokens if self.num_classes else 0)

    @nn.compact
    def __call__(self, x, t, y=None, d=None, train: bool = False, extra: Array | None = None, heads: str = "u"):
        del train  # no dropout
        check_heads(heads)
        if x.ndim != 4 or x.shape[1] % self.patch or x.shape[2] % self.patch:
            raise ValueError(f"IMFDiT expects [B, H, W, C] with H, W divisible by patch={self.patch}, got {x.shape}")
        batch, height, width, channels = x.shape
        p, hid = self.patch, self.hidden
        grid_h, grid_w = height // p, width // p
        out_dtype = layers.at_least_float32(x.dtype)
        h_in = jnp.zeros_like(t) if d is None else d
        if extra is None:
            extra = jnp.broadcast_to(jnp.asarray([0.0, 0.0, 1.0], jnp.float32), (batch, 3))

        token_init = nn.initializers.normal(1.0 / math.sqrt(hid))

        def tokens(name: str, count: int, embedding: Array) -> Array:
            learned = self.param(name, token_init, (count, hid), jnp.float32)
            return learned[None] + embedding[:, None, :].astype(jnp.float32)

        parts = []
        if self.num_classes:
            y = layers.labels_or_null(y, batch, self.num_classes)
            table = self.param("label_embedding", token_init, (self.num_classes + 1, hid), jnp.float32)
            parts.append(tokens("class_tokens", self.class_tokens, jnp.take(table, y, axis=0)))
        parts.append(tokens("omega_tokens", self.omega_tokens, Embedder(hid, name="omega_embed")(extra[:, 0])))
        parts.append(tokens("t_min_tokens", self.interval_tokens, Embedder(hid, name="t_min_embed")(extra[:, 1])))
        parts.append(tokens("t_max_tokens", self.interval_tokens, Embedder(hid, name="t_max_embed")(extra[:, 2])))
        parts.append(tokens("h_tokens", self.time_tokens, Embedder(hid, name="h_embed")(h_in)))
        if self.condition_on_t:
            parts.append(tokens("t_tokens", self.time_tokens, Embedder(hid, name="t_embed")(t)))

        patches = nn.Conv(
            hid,
            (p, p),
            strides=(p, p),
            padding="VALID",
            dtype=self.dtype,
            kernel_init=_xavier_patch,
            bias_init=nn.initializers.zeros,
            name="patch_embed",
        )(x.astype(self.dtype)).reshape(batch, grid_h * grid_w, hid)
        seq = jnp.concatenate([*(part.astype(self.dtype) for part in parts), patches], axis=1)
        angles = jnp.asarray(rope_angles(hid // self.num_heads, seq.shape[1]), jnp.float32)

        def block(name: str) -> Block:
            return Block(self.num_heads, self.mlp_ratio, self.init_constant, self.dtype, name=name)

        shared = self.depth - self.aux_depth
        for i in range(shared):
            seq = block(f"block_{i}")(seq, angles)

        def head(prefix: str, h: Array) -> Array:
            for i in range(self.aux_depth):
                h = block(f"{prefix}_block_{i}")(h, angles)
            h = RMSNorm(name=f"{prefix}_norm")(h[:, self.prefix :])
            h = nn.Dense(p * p * channels, dtype=self.dtype, kernel_init=nn.initializers.zeros, name=f"{prefix}_out")(h)
            h = h.reshape(batch, grid_h, grid_w, p, p, channels).transpose(0, 1, 3, 2, 4, 5)
            return h.reshape(batch, height, width, channels).astype(out_dtype)

        outputs = {name: head(name, seq) for name in heads}
        return outputs[heads] if len(heads) == 1 else (outputs["u"], outputs["v"])


#: The outputs a network with an auxiliary velocity head can return.
HEADS = ("u", "v", "uv")


def check_heads(heads: str) -> None:
    if heads not in HEADS:
        raise ValueError(f"heads must be one of {HEADS} (average velocity, auxiliary velocity, both), got {heads!r}")


DEFAULTS: dict[str, Any] = dict(
    name="imf_dit",
    size=None,
    hidden=None,
    depth=None,
    num_heads=None,
    patch=2,
    mlp_ratio=8.0 / 3.0,
    aux_depth=8,
    class_tokens=8,
    omega_tokens=4,
    interval_tokens=2,
    time_tokens=4,
    condition_on_t=False,
    init_constant=0.32,
    dtype="float32",
)


def make(cfg: Mapping[str, Any], data_shape: tuple[int, ...], num_classes: int, dtypes: Mapping[str, Any]) -> IMFDiT:
    """The iMF DiT of a model config (DEFAULTS' keys), checked: `size` fills hidden / depth /
    num_heads left at None; the trunk keeps at least one block (aux_depth < depth)."""
    if len(data_shape) != 3:
        raise ValueError(f"imf_dit needs a 3-D data_shape (H, W, C), got {data_shape}")
    cfg = dict(cfg)
    if cfg["size"] is not None:
        if cfg["size"] not in IMF_DIT_SIZES:
            raise ValueError(f"model.size must be one of {list(IMF_DIT_SIZES)} (iMF), got {cfg['size']!r}")
        for key, value in zip(("hidden", "depth", "num_heads"), IMF_DIT_SIZES[cfg["size"]]):
            if cfg[key] is None:
                cfg[key] = value
    missing = [k for k in ("hidden", "depth", "num_heads") if cfg[k] is None]
    if missing:
        raise ValueError(f"imf_dit needs model.size (one of {list(IMF_DIT_SIZES)}) or explicit values for {missing}")
    ints = {k: cfg[k] for k in ("hidden", "depth", "num_heads", "patch", "class_tokens", "omega_tokens",
                                "interval_tokens", "time_tokens")}  # fmt: skip
    bad = [f"{k}={v!r}" for k, v in ints.items() if isinstance(v, bool) or not isinstance(v, int) or v < 1]
    if bad:
        raise ValueError(f"imf_dit: these model keys must be ints >= 1: {', '.join(bad)}")
    if cfg["hidden"] % cfg["num_heads"] or (cfg["hidden"] // cfg["num_heads"]) % 2:
        raise ValueError(
            f"imf_dit: model.num_heads={cfg['num_heads']} must divide model.hidden={cfg['hidden']} into even "
            "head widths (RoPE rotates channel pairs)"
        )
    if not 0 <= cfg["aux_depth"] < cfg["depth"]:
        raise ValueError(f"imf_dit: need 0 <= model.aux_depth < model.depth, got {cfg['aux_depth']} of {cfg['depth']}")
    if data_shape[0] % cfg["patch"] or data_shape[1] % cfg["patch"]:
        raise ValueError(f"imf_dit needs H and W divisible by model.patch={cfg['patch']}; got {data_shape}")
    if cfg["dtype"] not in dtypes:
        raise ValueError(f"model.dtype must be one of {sorted(dtypes)}, got {cfg['dtype']!r}")
    return IMFDiT(
        hidden=cfg["hidden"], depth=cfg["depth"], num_heads=cfg["num_heads"], patch=cfg["patch"],
        mlp_ratio=float(cfg["mlp_ratio"]), aux_depth=int(cfg["aux_depth"]), num_classes=num_classes,
        class_tokens=cfg["class_tokens"], omega_tokens=cfg["omega_tokens"], interval_tokens=cfg["interval_tokens"],
        time_tokens=cfg["time_tokens"], condition_on_t=bool(cfg["condition_on_t"]),
        init_constant=float(cfg["init_constant"]), dtype=dtypes[cfg["dtype"]],
    )  # fmt: skip
