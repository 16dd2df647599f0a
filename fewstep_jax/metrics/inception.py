"""The FID Inception-v3 network in Flax, its weights, and image preprocessing.

FID (Heusel et al. 2017) and the Inception Score (Salimans et al. 2016) are defined on one
particular network: the TensorFlow Inception-v3 graph of 2015-12-05 (Szegedy et al. 2016). Its
weights are distributed converted to PyTorch as `pt_inception-2015-12-05-6726825d.pth` (the
pytorch-fid release, also used by torch-fidelity); this module reads that file without PyTorch
(`torch_pickle`) and runs the network in Flax. Four details make the FID network differ from
textbook Inception-v3, and all four are kept:
  - 1008 output classes (`fc`), not 1000;
  - average pools inside the blocks exclude the padding from the count;
  - the last block (Mixed_7c) uses a max pool in its pool branch, the one before an average pool;
  - BatchNorm epsilon 1e-3 with the stored running statistics (inference only).

Preprocessing follows the TF graph, as FID reference implementations do: uint8 RGB in, bilinear
resize to 299x299 with TensorFlow 1.x's legacy sampling (source = dest * in / out, no half-pixel
offset; `resize='tf1'`), then (x - 128) / 128. `resize='pytorch'` selects half-pixel sampling
(PyTorch's F.interpolate(align_corners=False), pytorch-fid's choice) for comparisons with
that tool.

Outputs: 'pool3' [N, 2048] (the FID features) and 'logits' [N, 1008] = pool3 @ W without the
bias ('logits_unbiased' in torch-fidelity), the logits of the original Inception Score code.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fewstep_jax.metrics import torch_pickle
from fewstep_jax.metrics.cache import cached_download, default_cache_dir

Array = jax.Array

WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + WEIGHTS_FILENAME
INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_LOGITS = 1008
BN_EPSILON = 1e-3
RESIZE_MODES = ("tf1", "pytorch")

_HIGHEST = jax.lax.Precision.HIGHEST  # no TF32 / bf16 passes on accelerators: FID is sensitive


class BasicConv(nn.Module):
    """conv (no bias) -> BatchNorm (running statistics, eps 1e-3) -> ReLU, NHWC.

    Parameters mirror the PyTorch names: kernel [kh, kw, in, out] (conv.weight transposed),
    bn_scale / bn_bias / bn_mean / bn_var (bn.weight / bias / running_mean / running_var).
    """

    features: int
    kernel: tuple[int, int] = (1, 1)
    stride: int = 1
    padding: tuple[int, int] = (0, 0)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kh, kw = self.kernel
        init = nn.initializers.lecun_normal()
        w = self.param("kernel", init, (kh, kw, x.shape[-1], self.features), jnp.float32)
        ph, pw = self.padding
        y = jax.lax.conv_general_dilated(
            x, w, (self.stride, self.stride), ((ph, ph), (pw, pw)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=_HIGHEST,
        )
        scale = self.param("bn_scale", nn.initializers.ones, (self.features,), jnp.float32)
        bias = self.param("bn_bias", nn.initializers.zeros, (self.features,), jnp.float32)
        mean = self.param("bn_mean", nn.initializers.zeros, (self.features,), jnp.float32)
        var = self.param("bn_var", nn.initializers.ones, (self.features,), jnp.float32)
        return nn.relu((y - mean) * (scale * jax.lax.rsqrt(var + BN_EPSILON)) + bias)


def _avg_pool_same(x: Array) -> Array:
    """3x3 average pool, stride 1, padding 1, padding excluded from the count."""
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool(x: Array, stride: int, pad: int = 0) -> Array:
    return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=((pad, pad), (pad, pad)))


class InceptionA(nn.Module):
    """Mixed_5b/5c/5d: 1x1 | 1x1 -> 5x5 | 1x1 -> 3x3 -> 3x3 | avg pool -> 1x1."""

    pool_features: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b1 = BasicConv(64, name="branch1x1")(x)
        b5 = BasicConv(48, name="branch5x5_1")(x)
        b5 = BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = BasicConv(64, name="branch3x3dbl_1")(x)
        b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = BasicConv(self.pool_features, name="branch_pool")(_avg_pool_same(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """Mixed_6a (grid reduction): 3x3 stride 2 | 1x1 -> 3x3 -> 3x3 stride 2 | max pool."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b3 = BasicConv(384, (3, 3), stride=2, name="branch3x3")(x)
        bd = BasicConv(64, name="branch3x3dbl_1")(x)
        bd = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = BasicConv(96, (3, 3), stride=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool(x, 2)], axis=-1)


class InceptionC(nn.Module):
    """Mixed_6b..6e: factorized 7x7 convolutions (1x7 and 7x1) with c7 inner channels."""

    c7: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))  # (kernel, padding) pairs
        b1 = BasicConv(192, name="branch1x1")(x)
        b7 = BasicConv(self.c7, name="branch7x7_1")(x)
        b7 = BasicConv(self.c7, row[0], padding=row[1], name="branch7x7_2")(b7)
        b7 = BasicConv(192, col[0], padding=col[1], name="branch7x7_3")(b7)
        bd = BasicConv(self.c7, name="branch7x7dbl_1")(x)
        for i, (kernel, pad) in enumerate((col, row, col, row)):
            width = 192 if i == 3 else self.c7
            bd = BasicConv(width, kernel, padding=pad, name=f"branch7x7dbl_{i + 2}")(bd)
        bp = BasicConv(192, name="branch_pool")(_avg_pool_same(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """Mixed_7a (grid reduction): 1x1 -> 3x3 stride 2 | 1x1 -> 1x7 -> 7x1 -> 3x3 stride 2 | max pool."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b3 = BasicConv(192, name="branch3x3_1")(x)
        b3 = BasicConv(320, (3, 3), stride=2, name="branch3x3_2")(b3)
        b7 = BasicConv(192, name="branch7x7x3_1")(x)
        b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv(192, (3, 3), stride=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool(x, 2)], axis=-1)


class InceptionE(nn.Module):
    """Mixed_7b / 7c: expanded filter banks (1x3 and 3x1 side by side); the pool branch averages
    (7b) or, in the FID graph's 7c, takes the max."""

    pool: str  # 'avg' or 'max'

    @nn.compact
    def __call__(self, x: Array) -> Array:
        def split(h: Array, prefix: str) -> Array:
            a = BasicConv(384, (1, 3), padding=(0, 1), name=f"{prefix}a")(h)
            b = BasicConv(384, (3, 1), padding=(1, 0), name=f"{prefix}b")(h)
            return jnp.concatenate([a, b], axis=-1)

        b1 = BasicConv(320, name="branch1x1")(x)
        b3 = split(BasicConv(384, name="branch3x3_1")(x), "branch3x3_2")
        bd = BasicConv(448, name="branch3x3dbl_1")(x)
        bd = split(BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd), "branch3x3dbl_3")
        pooled = _avg_pool_same(x) if self.pool == "avg" else _max_pool(x, 1, 1)
        bp = BasicConv(192, name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
    """FID Inception-v3: x [N, 299, 299, 3] in [-1, 1] -> {'pool3': [N, 2048], 'logits': [N, 1008]}."""

    @nn.compact
    def __call__(self, x: Array) -> dict[str, Array]:
        x = BasicConv(32, (3, 3), stride=2, name="Conv2d_1a_3x3")(x)
        x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = _max_pool(x, 2)
        x = BasicConv(80, name="Conv2d_3b_1x1")(x)
        x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = _max_pool(x, 2)
        for name, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
            x = InceptionA(pool_features, name=name)(x)
        x = InceptionB(name="Mixed_6a")(x)
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            x = InceptionC(c7, name=name)(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE("avg", name="Mixed_7b")(x)
        x = InceptionE("max", name="Mixed_7c")(x)
        pool3 = jnp.mean(x, axis=(1, 2))
        w = self.param("fc_kernel", nn.initializers.lecun_normal(), (FEATURE_DIM, NUM_LOGITS), jnp.float32)
        self.param("fc_bias", nn.initializers.zeros, (NUM_LOGITS,), jnp.float32)  # kept for completeness
        return {"pool3": pool3, "logits": jnp.matmul(pool3, w, precision=_HIGHEST)}


# ---------------------------------------------------------------------------
# Preprocessing


def resize_matrix(in_size: int, out_size: int, mode: str = "tf1") -> np.ndarray:
    """[out, in] float64 bilinear interpolation matrix (rows sum to 1).

    'tf1': TensorFlow 1.x resize_bilinear(align_corners=False): source = i * in / out, with the
        ratio in / out rounded to float32 as TensorFlow computes it.
    'pytorch': half-pixel centers, source = (i + 0.5) * in / out - 0.5, clamped at 0.
    The upper neighbour is clamped to the last pixel in both.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {mode!r}")
    i = np.arange(out_size, dtype=np.float64)
    if mode == "tf1":
        src = i * float(np.float32(in_size / out_size))
    else:
        src = np.maximum((i + 0.5) * (in_size / out_size) - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = src - lo
    m = np.zeros((out_size, in_size))
    np.add.at(m, (np.arange(out_size), lo), 1.0 - frac)
    np.add.at(m, (np.arange(out_size), hi), frac)
    return m


def preprocess(images: Array, mode: str = "tf1") -> Array:
    """uint8 (or float in [0, 255]) NHWC RGB or grayscale -> float32 [N, 299, 299, 3] in [-1, 1).

    Bilinear resize to 299x299 (separable: two matrix products) then (x - 128) / 128, as in the
    FID graph. Grayscale images are repeated to three channels.
    """
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"expected NHWC images with 1 or 3 channels, got shape {images.shape}")
    x = jnp.asarray(images).astype(jnp.float32)
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    rows = jnp.asarray(resize_matrix(x.shape[1], INPUT_SIZE, mode), jnp.float32)
    cols = jnp.asarray(resize_matrix(x.shape[2], INPUT_SIZE, mode), jnp.float32)
    x = jnp.einsum("oh,nhwc->nowc", rows, x, precision=_HIGHEST)
    x = jnp.einsum("pw,nowc->nopc", cols, x, precision=_HIGHEST)
    return (x - 128.0) / 128.0


def to_uint8(samples: np.ndarray) -> np.ndarray:
    """Samples in [-1, 1] -> uint8 pixels, rounded as when saving a PNG (round(127.5 (x + 1)))."""
    return np.clip(np.floor((np.asarray(samples, np.float32) + 1.0) * 127.5 + 0.5), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------
# Weights


def _flax_path_to_torch(path: tuple[str, ...]) -> str:
    """('Mixed_5b', 'branch1x1', 'bn_mean') -> 'Mixed_5b.branch1x1.bn.running_mean'."""
    leaf = path[-1]
    prefix = ".".join(path[:-1])
    names = {
        "kernel": "conv.weight",
        "bn_scale": "bn.weight",
        "bn_bias": "bn.bias",
        "bn_mean": "bn.running_mean",
        "bn_var": "bn.running_var",
    }
    if leaf in ("fc_kernel", "fc_bias"):
        return "fc." + leaf[3:].replace("kernel", "weight")
    return f"{prefix}.{names[leaf]}"


#: Flax leaf -> the axis permutation that turns it into PyTorch's layout (others are identical):
#: conv kernels HWIO -> OIHW, the fc kernel [in, out] -> [out, in].
_TORCH_AXES = {"kernel": (3, 2, 0, 1), "fc_kernel": (1, 0)}


def _torch_shape(shape: tuple[int, ...], leaf: str) -> tuple[int, ...]:
    axes = _TORCH_AXES.get(leaf)
    return shape if axes is None else tuple(shape[i] for i in axes)


def _from_torch_layout(array: np.ndarray, leaf: str) -> np.ndarray:
    axes = _TORCH_AXES.get(leaf)
    return array if axes is None else np.transpose(array, np.argsort(axes))


@functools.cache
def _param_shapes() -> dict[tuple[str, ...], tuple[int, ...]]:
    shapes = jax.eval_shape(InceptionV3().init, jax.random.key(0), jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3)))
    flat = jax.tree_util.tree_flatten_with_path(shapes["params"])[0]
    return {tuple(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


def state_dict_shapes() -> dict[str, tuple[int, ...]]:
    """The PyTorch state dict the network expects: {name: shape} (derived from the Flax module)."""
    return {_flax_path_to_torch(path): _torch_shape(shape, path[-1]) for path, shape in _param_shapes().items()}


def params_from_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """A PyTorch-named Inception state dict -> Flax params (float32), every key and shape checked.

    Extra `*.num_batches_tracked` counters are ignored; any other missing, unexpected or
    mis-shaped entry raises ValueError naming it.
    """
    expected = state_dict_shapes()
    given = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    if missing or unexpected:
        raise ValueError(
            "not the FID Inception-v3 state dict: "
            + (f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''} " if missing else "")
            + (f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}" if unexpected else "")
        )
    params: dict[str, Any] = {}
    for path, shape in _param_shapes().items():
        name = _flax_path_to_torch(path)
        array = np.asarray(given[name])
        if array.shape != expected[name]:
            raise ValueError(f"Inception weight {name} has shape {array.shape}, expected {expected[name]}")
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = np.ascontiguousarray(_from_torch_layout(array, path[-1]).astype(np.float32))
        assert node[path[-1]].shape == shape
    return params


def weights_file(source: str = "", cache_dir: str | None = None) -> str:
    """The local path of the Inception weights named by `source`.

    source: a local file path; an http(s) URL (downloaded once into cache_dir and reused); or ''
    for the standard file in cache_dir. Raises FileNotFoundError with what to do when the weights
    are not available locally and no URL was given.
    """
    cache_dir = cache_dir or default_cache_dir()
    if source.startswith(("http://", "https://")):
        return cached_download(source, cache_dir, WEIGHTS_FILENAME)
    path = source or os.path.join(cache_dir, WEIGHTS_FILENAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"FID needs the Inception weights {WEIGHTS_FILENAME}, not found at {path}. Either download\n"
            f"  {WEIGHTS_URL}\n"
            f"and pass its path with --config.eval.fid_weights=PATH (or put it at {path}), or let the suite "
            f"download it once with --config.eval.fid_weights={WEIGHTS_URL}"
        )
    return path


def load_params(source: str = "", cache_dir: str | None = None) -> dict[str, Any]:
    """Flax params of the FID Inception network (see weights_file for `source`).

    The file is the PyTorch state dict (read without PyTorch), or a .npz holding the same
    PyTorch-named arrays (e.g. converted once with `save_state_dict_npz`).
    """
    path = weights_file(source, cache_dir)
    try:
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as f:
                state_dict = {k: f[k] for k in f.files}
        else:
            state_dict = torch_pickle.load(path)
    except (torch_pickle.TorchFileError, OSError, ValueError) as e:
        raise ValueError(f"cannot read Inception weights {path}: {e}") from e
    return params_from_state_dict(state_dict)


def save_state_dict_npz(state_dict: Mapping[str, np.ndarray], path: str) -> None:
    """Writes a PyTorch-named Inception state dict as .npz (checked first), loadable by load_params."""
    params_from_state_dict(state_dict)
    np.savez(path, **{k: np.asarray(v) for k, v in state_dict.items()})


def params_fingerprint(params: Mapping[str, Any]) -> str:
    """A short hash of the weights (keys reference statistics to the network that made them)."""
    digest = hashlib.sha256()
    for path, leaf in sorted(
        (tuple(k.key for k in p), np.asarray(v)) for p, v in jax.tree_util.tree_flatten_with_path(params)[0]
    ):
        digest.update("/".join(path).encode())
        digest.update(np.ascontiguousarray(leaf, np.float32).tobytes())
    return digest.hexdigest()[:12]


def num_params() -> int:
    return int(sum(math.prod(s) for s in _param_shapes().values()))
