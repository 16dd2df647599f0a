"""The DINOv2 ViT-L/14 feature network of FD-DINOv2 in Flax, its weights, and EDM2's preprocessing.

FD-DINOv2 (Stein et al. 2023, "Exposing flaws of generative model evaluation metrics"; the second
headline metric of EDM2, Karras et al. 2024) is the Frechet distance between Gaussians fitted to
DINOv2 features instead of Inception ones. EDM2 (`calculate_metrics.py`, `DINOv2Detector`) defines
it on one network and one preprocessing, both kept here:

  - the network: `torch.hub.load('facebookresearch/dinov2:main', 'dinov2_vitl14')`, weights
    `dinov2_vitl14_pretrain.pth` (LVD-142M), feature = the final-LayerNorm CLS token [N, 1024];
  - uint8 RGB -> `F.interpolate(x.float(), size=224, mode='bicubic', antialias=True)` (not
    clamped) -> / 255 -> ImageNet mean / std.

Network (facebookresearch/dinov2 `models/vision_transformer.py`, `layers/{block,attention,mlp,
layer_scale,patch_embed}.py`, built by `hub/backbones.py` with img_size 518, LayerScale 1.0, no
registers, interpolate_offset 0.1): a 14x14 / stride 14 patch conv (with bias), a CLS token,
learned position embeddings stored for a 37x37 grid (518 / 14), then 24 pre-norm blocks
x += ls1 * Attn(LN(x)); x += ls2 * MLP(LN(x)) with a fused qkv projection (rows q | k | v, with
bias), 16 heads of 64, an MLP 1024 -> 4096 -> 1024 with the exact (erf) GELU, LayerNorm eps 1e-6,
and a final LayerNorm. 304,368,640 parameters, the unused `mask_token` included.

Two resamplings with different kernels:
  - images: PyTorch's antialiased bicubic (`_upsample_bicubic2d_aa`; Keys' cubic with a = -0.5,
    support 2 * max(scale, 1), weights renormalized to sum 1 at the borders), as per-axis float64
    matrices built once per input size (`resize_matrix`);
  - position embeddings (37x37 -> 16x16 at 224 input): `interpolate(scale_factor=16.1 / 37)`
    (the "+0.1" offset of DINO's historical fix), i.e. the sampling ratio 37 / 16.1, not 37 / 16;
    plain bicubic with a = -0.75, taps clamped at the edges, no renormalization, computed in
    float32 as the hub model always does (`pos_embed_matrix`). Hugging Face's Dinov2Model
    (size=16, ratio 37 / 16) and its Flax port (scale_and_translate, a = -0.5) differ from it.

Compute dtype: float32 with `Precision.HIGHEST` (no TF32 / bf16 passes on accelerators) by
default; float64 under jax_enable_x64 for parity checks (the position-embedding term stays float32,
as in the reference). Parameters are float32, cast to the compute dtype where used.

Weights: `load_params` reads the hub file through `torch_pickle` (never plain pickle) or Hugging
Face's `facebook/dinov2-large` `model.safetensors` (its query / key / value are concatenated into
qkv). Flax names mirror the hub's: `blocks.3.attn.qkv.weight` -> `blocks_3/attn/qkv/kernel`
(transposed), `norm1.weight` -> `norm1/scale`, `ls1.gamma` -> `ls1/gamma`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fewstep_jax.metrics import inception, torch_pickle
from fewstep_jax.metrics.cache import cached_download, default_cache_dir

Array = jax.Array

WEIGHTS_FILENAME = "dinov2_vitl14_pretrain.pth"
WEIGHTS_URL = "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/" + WEIGHTS_FILENAME
HF_REPO = "facebook/dinov2-large"
HF_WEIGHTS_URL = f"https://huggingface.co/{HF_REPO}/resolve/main/model.safetensors"
INPUT_SIZE = 224
FEATURE_DIM = 1024
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LN_EPSILON = 1e-6
IMAGE_CUBIC_A = -0.5  # PyTorch's antialiased bicubic (PIL's choice)
POS_CUBIC_A = -0.75  # PyTorch's plain bicubic (OpenCV's choice)
POS_OFFSET = 0.1  # dinov2 `interpolate_offset`: scale_factor = (grid + 0.1) / stored grid

_HIGHEST = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class DINOv2Config:
    """A DINOv2 ViT without registers, with LayerScale and an MLP feed-forward (hub ViT-L/14 by default)."""

    dim: int = 1024
    depth: int = 24
    heads: int = 16
    mlp_dim: int = 4096
    patch: int = 14
    pos_grid: int = 37  # stored position embeddings: img_size 518 / patch 14
    input_size: int = INPUT_SIZE  # images are resized to this (EDM2: 224, a 16 x 16 patch grid)


VIT_L14 = DINOv2Config()
#: The parity tests' network: ViT-L's structure (518-px position grid included) at 64 wide.
REDUCED = DINOv2Config(dim=64, depth=2, heads=4, mlp_dim=256)


# ---------------------------------------------------------------------------
# The network


class LayerNorm(nn.Module):
    """LayerNorm over the last axis, eps 1e-6, two-pass variance in >= float32; scale / bias are
    PyTorch's weight / bias."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        d = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (d,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (d,), jnp.float32)
        h = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        mean = h.mean(-1, keepdims=True)
        var = jnp.square(h - mean).mean(-1, keepdims=True)
        h = (h - mean) * jax.lax.rsqrt(var + LN_EPSILON)
        return (h * scale.astype(h.dtype) + bias.astype(h.dtype)).astype(x.dtype)


class Dense(nn.Module):
    """y = x W + b, W [in, out] = PyTorch's Linear weight transposed (float32 params, cast to x's dtype)."""

    features: int
    precision: Any = _HIGHEST

    @nn.compact
    def __call__(self, x: Array) -> Array:
        w = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features), jnp.float32)
        b = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        return jnp.matmul(x, w.astype(x.dtype), precision=self.precision) + b.astype(x.dtype)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (dinov2 layers/attention.py `Attention`;
    `MemEffAttention` computes the same without xFormers). qkv's output rows are q | k | v, each
    split into heads; softmax(q k^T / sqrt(head_dim)) in >= float32."""

    heads: int
    precision: Any = _HIGHEST

    @nn.compact
    def __call__(self, x: Array) -> Array:
        n, t, d = x.shape
        qkv = Dense(3 * d, self.precision, name="qkv")(x).reshape(n, t, 3, self.heads, d // self.heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        logits = jnp.einsum("nqhc,nkhc->nhqk", q, k, precision=self.precision) * (d // self.heads) ** -0.5
        weights = jax.nn.softmax(logits.astype(jnp.promote_types(x.dtype, jnp.float32)), axis=-1)
        out = jnp.einsum("nhqk,nkhc->nqhc", weights.astype(x.dtype), v, precision=self.precision)
        return Dense(d, self.precision, name="proj")(out.reshape(n, t, d))


class Mlp(nn.Module):
    """fc1 -> exact (erf) GELU -> fc2 (dinov2 layers/mlp.py, nn.GELU's default)."""

    hidden: int
    precision: Any = _HIGHEST

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h = jax.nn.gelu(Dense(self.hidden, self.precision, name="fc1")(x), approximate=False)
        return Dense(x.shape[-1], self.precision, name="fc2")(h)


class LayerScale(nn.Module):
    """x * gamma per channel (dinov2 layers/layer_scale.py)."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        gamma = self.param("gamma", nn.initializers.ones, (x.shape[-1],), jnp.float32)
        return x * gamma.astype(x.dtype)


class Block(nn.Module):
    """x += ls1 * attn(norm1(x)); x += ls2 * mlp(norm2(x)) (dinov2 layers/block.py `Block`)."""

    config: DINOv2Config
    precision: Any = _HIGHEST

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        x = x + LayerScale(name="ls1")(Attention(cfg.heads, self.precision, name="attn")(LayerNorm(name="norm1")(x)))
        return x + LayerScale(name="ls2")(Mlp(cfg.mlp_dim, self.precision, name="mlp")(LayerNorm(name="norm2")(x)))


class PatchConv(nn.Module):
    """patch x patch convolution with stride patch and bias, NHWC; kernel [p, p, C, dim] is PyTorch's
    [dim, C, p, p] permuted."""

    dim: int
    patch: int
    precision: Any = _HIGHEST

    @nn.compact
    def __call__(self, x: Array) -> Array:
        p = self.patch
        w = self.param("kernel", nn.initializers.lecun_normal(), (p, p, x.shape[-1], self.dim), jnp.float32)
        b = self.param("bias", nn.initializers.zeros, (self.dim,), jnp.float32)
        y = jax.lax.conv_general_dilated(
            x, w.astype(x.dtype), (p, p), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=self.precision
        )
        return y + b.astype(x.dtype)


class PatchEmbed(nn.Module):
    """[N, S, S, C] -> tokens [N, (S/p)^2, dim] in row-major patch order (dinov2 layers/patch_embed.py)."""

    dim: int
    patch: int
    precision: Any = _HIGHEST

    @nn.compact
    def __call__(self, x: Array) -> Array:
        y = PatchConv(self.dim, self.patch, self.precision, name="proj")(x)
        return y.reshape(x.shape[0], -1, self.dim)


class DINOv2(nn.Module):
    """DINOv2 ViT: x [N, S, S, 3] (preprocessed, S a multiple of the patch) -> CLS features [N, dim].

    dtype: the compute dtype (float32; float64 under jax_enable_x64 for parity checks; bfloat16
    possible, with LayerNorm and softmax kept in float32). The position-embedding resampling is
    float32 whatever the dtype, as in the reference (`pos_embed.float()`).
    """

    config: DINOv2Config = VIT_L14
    dtype: Any = jnp.float32
    precision: Any = _HIGHEST

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        n, h, w, _ = x.shape
        if h != w or h % cfg.patch:
            raise ValueError(f"DINOv2 takes square inputs whose side is a multiple of {cfg.patch}, got {x.shape}")
        init = nn.initializers.normal(0.02)
        cls_token = self.param("cls_token", init, (1, 1, cfg.dim), jnp.float32)
        pos_embed = self.param("pos_embed", init, (1, 1 + cfg.pos_grid**2, cfg.dim), jnp.float32)
        self.param("mask_token", nn.initializers.zeros, (1, cfg.dim), jnp.float32)  # masked training only
        tokens = PatchEmbed(cfg.dim, cfg.patch, self.precision, name="patch_embed")(x.astype(self.dtype))
        cls = jnp.broadcast_to(cls_token.astype(self.dtype), (n, 1, cfg.dim))
        x = jnp.concatenate([cls, tokens], axis=1) + interpolate_pos_embed(pos_embed, h // cfg.patch).astype(self.dtype)
        for i in range(cfg.depth):
            x = Block(cfg, self.precision, name=f"blocks_{i}")(x)
        return LayerNorm(name="norm")(x[:, 0])


def interpolate_pos_embed(pos_embed: Array, grid: int) -> Array:
    """Position embeddings [1, 1 + P^2, D] stored for a P x P grid -> [1, 1 + grid^2, D] in float32.

    dinov2 `interpolate_pos_encoding`: unchanged when grid == P, else the P x P part is resampled
    along both axes with pos_embed_matrix (the CLS entry is kept).
    """
    pos = jnp.asarray(pos_embed, jnp.float32)
    stored = math.isqrt(pos.shape[1] - 1)
    if stored**2 != pos.shape[1] - 1:
        raise ValueError(f"position embeddings {pos.shape} do not hold a square grid plus the CLS entry")
    if grid == stored:
        return pos
    m = jnp.asarray(pos_embed_matrix(stored, grid), jnp.float32)
    patch = pos[0, 1:].reshape(stored, stored, -1)
    patch = jnp.einsum("ij,jkc->ikc", m, patch, precision=_HIGHEST)
    patch = jnp.einsum("lk,ikc->ilc", m, patch, precision=_HIGHEST)
    return jnp.concatenate([pos[:, :1], patch.reshape(1, grid * grid, -1)], axis=1)


# ---------------------------------------------------------------------------
# Resampling matrices and preprocessing


def _cubic_inner(x: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic for |x| <= 1, ((a + 2) x - (a + 3)) x^2 + 1, in x's dtype (UpSample.h cubic_convolution1)."""
    f = x.dtype.type
    return ((f(a) + f(2)) * x - (f(a) + f(3))) * x * x + f(1)


def _cubic_outer(x: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic for 1 <= |x| <= 2, ((a x - 5a) x + 8a) x - 4a, in x's dtype (cubic_convolution2)."""
    f, a = x.dtype.type, x.dtype.type(a)
    return ((a * x - f(5) * a) * x + f(8) * a) * x - f(4) * a


def _keys_cubic(x: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel K(x) (zero for |x| >= 2)."""
    x = np.abs(x)
    return np.where(x < 1, _cubic_inner(x, a), np.where(x < 2, _cubic_outer(x, a), 0.0)).astype(x.dtype)


@functools.cache
def resize_matrix(in_size: int, out_size: int = INPUT_SIZE) -> np.ndarray:
    """[out, in] float64 matrix of PyTorch's antialiased bicubic resize (read-only, cached).

    `F.interpolate(mode='bicubic', antialias=True, align_corners=False)` (UpSampleKernel.cpp,
    `_compute_indices_min_size_weights_aa`): scale s = in / out; output i is centred at s (i + 0.5)
    in input coordinates and takes inputs j in [int(c - support + 0.5), int(c + support + 0.5))
    clipped to the image, support = 2 max(s, 1), with weights K((j - c + 0.5) / max(s, 1)),
    K = Keys' cubic with a = -0.5, normalized to sum 1 (so rows near the border renormalize
    instead of clamping). Upsampling (s < 1) is plain bicubic with those border weights.
    """
    scale = in_size / out_size
    stretch = max(scale, 1.0)
    support = 2.0 * stretch
    m = np.zeros((out_size, in_size))
    for i in range(out_size):
        center = scale * (i + 0.5)
        lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), in_size)
        w = _keys_cubic((np.arange(lo, hi) - center + 0.5) / stretch, IMAGE_CUBIC_A)
        m[i, lo:hi] = w / w.sum() if w.sum() != 0 else w
    m.setflags(write=False)
    return m


@functools.cache
def pos_embed_matrix(in_grid: int, out_grid: int, offset: float = POS_OFFSET, dtype: Any = np.float32) -> np.ndarray:
    """[out, in] matrix of dinov2's position-embedding resampling (read-only, cached).

    `F.interpolate(scale_factor=(out + offset) / in, mode='bicubic', antialias=False)`: PyTorch
    samples at src = r (i + 0.5) - 0.5 with r = 1 / scale_factor (= 37 / 16.1 for ViT-L at 224,
    not 37 / 16), and blends the taps floor(src) - 1 .. floor(src) + 2, clamped to [0, in - 1],
    with Keys' cubic at a = -0.75 (not renormalized; the four weights sum to 1). Computed in
    `dtype` in PyTorch's operation order: float32 is what the reference runs (it casts the
    embeddings to float32 first), float64 the exact operator.
    """
    f = np.dtype(dtype).type
    ratio = f(1.0 / ((out_grid + offset) / in_grid))
    src = ratio * (np.arange(out_grid).astype(dtype) + f(0.5)) - f(0.5)
    lower = np.minimum(np.floor(src).astype(np.int64), in_grid - 1)
    t = np.clip(src - lower.astype(dtype), f(0), f(1))
    a = POS_CUBIC_A
    weights = (
        _cubic_outer(t + f(1), a),
        _cubic_inner(t, a),
        _cubic_inner(f(1) - t, a),
        _cubic_outer((f(1) - t) + f(1), a),
    )
    m = np.zeros((out_grid, in_grid), dtype)
    for k, w in enumerate(weights):
        np.add.at(m, (np.arange(out_grid), np.clip(lower - 1 + k, 0, in_grid - 1)), w)
    m.setflags(write=False)
    return m


def preprocess(images: Array, size: int = INPUT_SIZE, dtype: Any = jnp.float32) -> Array:
    """EDM2's DINOv2 input: uint8 (or float in [0, 255]) NHWC RGB or grayscale -> [N, size, size, 3].

    Antialiased bicubic resize to size x size (two matrix products with resize_matrix, in `dtype`;
    values are not clamped), then x / 255, then (x - mean) / std with ImageNet's statistics.
    Grayscale images are repeated to three channels.
    """
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"expected NHWC images with 1 or 3 channels, got shape {images.shape}")
    x = jnp.asarray(images).astype(dtype)
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    rows = jnp.asarray(resize_matrix(x.shape[1], size), dtype)
    cols = jnp.asarray(resize_matrix(x.shape[2], size), dtype)
    x = jnp.einsum("oh,nhwc->nowc", rows, x, precision=_HIGHEST)
    x = jnp.einsum("pw,nowc->nopc", cols, x, precision=_HIGHEST)
    x = x / 255.0
    return (x - jnp.asarray(IMAGENET_MEAN, dtype)) / jnp.asarray(IMAGENET_STD, dtype)


def features(
    params: Any, images: Array, config: DINOv2Config = VIT_L14, dtype: Any = jnp.float32, precision: Any = _HIGHEST
) -> Array:
    """uint8 images [N, H, W, C] -> CLS features [N, dim] (EDM2's DINOv2Detector); jit it.

    precision: of the network's matrix products (HIGHEST: no TF32 / bf16 passes on accelerators;
    the resize always uses HIGHEST).
    """
    net = DINOv2(config, dtype, precision)
    return net.apply({"params": params}, preprocess(images, config.input_size, dtype))


# ---------------------------------------------------------------------------
# Weights


def _hub_name(path: tuple[str, ...]) -> str:
    """('blocks_3', 'attn', 'qkv', 'kernel') -> 'blocks.3.attn.qkv.weight'."""
    parts = [p.replace("blocks_", "blocks.") if p.startswith("blocks_") else p for p in path]
    if parts[-1] in ("kernel", "scale"):
        parts[-1] = "weight"
    return ".".join(parts)


def _torch_axes(path: tuple[str, ...], ndim: int) -> tuple[int, ...] | None:
    """Permutation from the Flax layout to PyTorch's: linear [in, out] -> [out, in], conv HWIO -> OIHW."""
    if path[-1] != "kernel":
        return None
    return (3, 2, 0, 1) if ndim == 4 else (1, 0)


@functools.cache
def _param_shapes(config: DINOv2Config) -> dict[tuple[str, ...], tuple[int, ...]]:
    x = jax.ShapeDtypeStruct((1, config.input_size, config.input_size, 3), jnp.float32)
    shapes = jax.eval_shape(DINOv2(config).init, jax.random.key(0), x)
    flat = jax.tree_util.tree_flatten_with_path(shapes["params"])[0]
    return {tuple(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


def state_dict_shapes(config: DINOv2Config = VIT_L14) -> dict[str, tuple[int, ...]]:
    """The hub state dict the network expects: {name: shape} (derived from the Flax module)."""
    out = {}
    for path, shape in _param_shapes(config).items():
        axes = _torch_axes(path, len(shape))
        out[_hub_name(path)] = shape if axes is None else tuple(shape[i] for i in axes)
    return out


def num_params(config: DINOv2Config = VIT_L14) -> int:
    return int(sum(math.prod(s) for s in _param_shapes(config).values()))


#: Hugging Face Dinov2Model names of the hub names (blocks.{i} -> encoder.layer.{i}); qkv is three tensors.
_HF_PREFIXES = (
    ("cls_token", "embeddings.cls_token"),
    ("mask_token", "embeddings.mask_token"),
    ("pos_embed", "embeddings.position_embeddings"),
    ("patch_embed.proj.", "embeddings.patch_embeddings.projection."),
    ("norm.", "layernorm."),
)
_HF_BLOCK = (
    ("attn.proj.", "attention.output.dense."),
    ("ls1.gamma", "layer_scale1.lambda1"),
    ("ls2.gamma", "layer_scale2.lambda1"),
)
_HF_QKV = ("query", "key", "value")


def _hf_names(hub: str) -> tuple[str, ...]:
    """The Hugging Face name(s) holding hub tensor `hub` (three, q | k | v, for attn.qkv)."""
    if hub.startswith("blocks."):
        _, index, rest = hub.split(".", 2)
        base = f"encoder.layer.{index}."
        if rest.startswith("attn.qkv."):
            leaf = rest.rsplit(".", 1)[1]
            return tuple(f"{base}attention.attention.{part}.{leaf}" for part in _HF_QKV)
        for old, new in _HF_BLOCK:
            if rest.startswith(old):
                return (base + new + rest[len(old) :],)
        return (base + rest,)
    for old, new in _HF_PREFIXES:
        if hub.startswith(old):
            return (new + hub[len(old) :],)
    raise KeyError(hub)


def hf_state_dict_shapes(config: DINOv2Config = VIT_L14) -> dict[str, tuple[int, ...]]:
    """The Hugging Face Dinov2Model state dict the network expects: {name: shape}."""
    out = {}
    for hub, shape in state_dict_shapes(config).items():
        names = _hf_names(hub)
        for name in names:
            out[name] = (shape[0] // len(names), *shape[1:])
    return out


def _check_names(given: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]], what: str) -> None:
    """One ValueError listing the missing, unexpected and mis-shaped entries (first five of each)."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    misshaped = sorted(
        f"{k} {tuple(np.shape(given[k]))} (expected {expected[k]})"
        for k in set(given) & set(expected)
        if tuple(np.shape(given[k])) != tuple(expected[k])
    )
    problems = [
        f"{label} {len(names)}: {', '.join(names[:5])}{', ...' if len(names) > 5 else ''}"
        for label, names in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
        if names
    ]
    if problems:
        raise ValueError(f"not a {what} state dict: " + "; ".join(problems))


def _describe(config: DINOv2Config) -> str:
    return "DINOv2 ViT-L/14" if config == VIT_L14 else f"DINOv2 {config}"


def hub_state_dict_from_hf(
    state_dict: Mapping[str, np.ndarray], config: DINOv2Config = VIT_L14
) -> dict[str, np.ndarray]:
    """Hugging Face Dinov2Model tensors -> hub names (query, key, value concatenated into qkv, in that
    order, as convert_dinov2_to_hf.py split them). Every name and shape is checked first."""
    _check_names(state_dict, hf_state_dict_shapes(config), f"Hugging Face {_describe(config)}")
    out = {}
    for hub in state_dict_shapes(config):
        parts = [np.asarray(state_dict[name]) for name in _hf_names(hub)]
        out[hub] = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
    return out


def params_from_state_dict(state_dict: Mapping[str, np.ndarray], config: DINOv2Config = VIT_L14) -> dict[str, Any]:
    """A hub-named DINOv2 state dict -> Flax params (float32), every name and shape checked."""
    _check_names(state_dict, state_dict_shapes(config), _describe(config))
    params: dict[str, Any] = {}
    for path, shape in _param_shapes(config).items():
        array = np.asarray(state_dict[_hub_name(path)])
        axes = _torch_axes(path, array.ndim)
        if axes is not None:
            array = np.transpose(array, np.argsort(axes))
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = np.ascontiguousarray(array, np.float32)
        assert node[path[-1]].shape == shape
    return params


def weights_file(source: str = "", cache_dir: str | None = None) -> str:
    """The local path of the DINOv2 weights named by `source`.

    source: a local file (the hub's .pth or Hugging Face's model.safetensors); an http(s) URL
    (downloaded once into cache_dir and reused: the explicit opt-in to a download); or '' for
    dinov2_vitl14_pretrain.pth in cache_dir. A missing file raises FileNotFoundError saying where
    to get it.
    """
    cache_dir = cache_dir or default_cache_dir()
    if source.startswith(("http://", "https://")):
        # Hugging Face's model.safetensors is too generic a name for the cache.
        prefix = "dinov2-large-" if source.startswith("https://huggingface.co/") else ""
        return cached_download(source, cache_dir, WEIGHTS_FILENAME, prefix)
    path = source or os.path.join(cache_dir, WEIGHTS_FILENAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"FD-DINOv2 needs the DINOv2 ViT-L/14 weights, not found at {path}. Download either\n"
            f"  {WEIGHTS_URL}\n"
            f"or model.safetensors of https://huggingface.co/{HF_REPO} ({HF_WEIGHTS_URL})\n"
            f"and give its path (or put the .pth at {os.path.join(cache_dir, WEIGHTS_FILENAME)}), or give one "
            "of these URLs instead of a path to download it once into the cache"
        )
    return path


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """The tensors of a DINOv2 weights file: `.safetensors` through the safetensors numpy API, anything
    else as a PyTorch file through torch_pickle (an allow-list unpickler: no code runs)."""
    import safetensors
    from safetensors.numpy import load_file

    try:
        return load_file(path) if path.endswith(".safetensors") else torch_pickle.load(path)
    except (torch_pickle.TorchFileError, safetensors.SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"cannot read DINOv2 weights {path}: {e}") from e


HEAD_DIM = 64  # every released DINOv2 ViT (S/14, B/14, L/14, g/14) uses 64-wide attention heads


def config_from_state_dict(state_dict: Mapping[str, np.ndarray]) -> DINOv2Config:
    """The DINOv2Config of a hub- or Hugging-Face-named state dict, read off its shapes (the head
    count as width / 64, the rule of every released DINOv2)."""
    hf = any(k.startswith(("embeddings.", "encoder.")) for k in state_dict)
    names = (
        (
            "embeddings.cls_token",
            "embeddings.position_embeddings",
            "embeddings.patch_embeddings.projection.weight",
            "encoder.layer.{}.norm1.weight",
            "encoder.layer.0.mlp.fc1.weight",
        )
        if hf
        else ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.{}.norm1.weight", "blocks.0.mlp.fc1.weight")
    )
    cls, pos, patch, block, fc1 = names
    missing = [n for n in (cls, pos, patch, block.format(0), fc1) if n not in state_dict]
    if missing:
        raise ValueError(f"not a DINOv2 state dict: no {missing}")
    dim = int(np.shape(state_dict[cls])[-1])
    depth = 0
    while block.format(depth) in state_dict:
        depth += 1
    grid = int(round((np.shape(state_dict[pos])[1] - 1) ** 0.5))
    if dim % HEAD_DIM:
        raise ValueError(f"a DINOv2 of width {dim} is not a multiple of the {HEAD_DIM}-wide heads of every release")
    return DINOv2Config(
        dim=dim,
        depth=depth,
        heads=dim // HEAD_DIM,
        mlp_dim=int(np.shape(state_dict[fc1])[0]),
        patch=int(np.shape(state_dict[patch])[-1]),
        pos_grid=grid,
    )


def load(source: str = "", cache_dir: str | None = None) -> tuple[dict[str, Any], DINOv2Config]:
    """(params, config) of a DINOv2 weights file in whatever size it holds (config_from_state_dict)."""
    path = weights_file(source, cache_dir)
    state_dict = read_state_dict(path)
    try:
        config = config_from_state_dict(state_dict)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return _params(path, state_dict, config), config


def load_params(source: str = "", cache_dir: str | None = None, config: DINOv2Config = VIT_L14) -> dict[str, Any]:
    """Flax params of DINOv2 from the hub's `dinov2_vitl14_pretrain.pth` or Hugging Face's
    `model.safetensors` (see weights_file for `source`); the naming is recognized from the tensor
    names (Hugging Face's start with `embeddings.` / `encoder.`), whatever the file format."""
    path = weights_file(source, cache_dir)
    return _params(path, read_state_dict(path), config)


def _params(path: str, state_dict: Mapping[str, np.ndarray], config: DINOv2Config) -> dict[str, Any]:
    try:
        if any(k.startswith(("embeddings.", "encoder.")) for k in state_dict):
            state_dict = hub_state_dict_from_hf(state_dict, config)
        return params_from_state_dict(state_dict, config)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def params_fingerprint(params: Mapping[str, Any]) -> str:
    """A short hash of the weights, keying reference statistics to the network that made them (EDM2
    loads the unpinned `dinov2:main`; the fingerprint records which weights were used)."""
    return inception.params_fingerprint(params)
