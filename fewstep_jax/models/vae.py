"""The Stable Diffusion kl-f8 autoencoder (AutoencoderKL) in Flax, its weights, and a batched
encode / decode front end for latent datasets and sample decoding.

Model: the KL-regularized autoencoder of Latent Diffusion (Rombach et al. 2022, "High-Resolution
Image Synthesis with Latent Diffusion Models", sec. 3.1 and App. G; CompVis/stable-diffusion
`ldm/modules/diffusionmodules/model.py`, Encoder / Decoder), as packaged by diffusers
(`models/autoencoders/autoencoder_kl.py` AutoencoderKL, `models/autoencoders/vae.py` Encoder /
Decoder, `models/resnet.py`, `models/attention_processor.py`). The released weights are
stabilityai/sd-vae-ft-mse and sd-vae-ft-ema (the SD 1.x encoder with a fine-tuned decoder; the
two share the encoder, so latents are identical and only decoded images differ).

Architecture (NHWC throughout; `VAEConfig`, defaults = kl-f8):
  Resnet(cin -> cout):  h = conv3(SiLU(GN(x))); h = conv3(SiLU(GN(h))); y = h + (conv1(x) if cin != cout else x)
  Downsample:           zero-pad bottom / right by 1, 3x3 conv stride 2 VALID (asymmetric: not "SAME")
  Upsample:             nearest x2, 3x3 conv
  Mid block:            Resnet -> single-head self-attention over all pixels (GN, q / k / v / out with
                        bias, scale C^-1/2, residual) -> Resnet
  Encoder:  conv_in | per level: layers_per_block Resnets (+ Downsample except the last) | mid |
            GN, SiLU, conv -> 2 * latent_channels | quant_conv (1x1) -> moments
  Decoder:  post_quant_conv (1x1) | conv_in | mid | per level, widest first: layers_per_block + 1
            Resnets (+ Upsample except the last) | GN, SiLU, conv -> out_channels
GroupNorm has `norm_groups` groups and eps 1e-6 everywhere (attention included; PyTorch's default
would be 1e-5). kl-f8: 83,653,863 parameters in 248 tensors.

Conventions: images are NHWC floats in [-1, 1] (EDM2 feeds [0, 1], see docs LATENTS sec. 4);
`encode` returns the raw moments (mean channels, then the unclamped log-variance: quant_conv's
output); `posterior` clamps the log-variance to data.formats.LOGVAR_RANGE and returns the std;
`decode` takes raw latents (no 0.18215 or other normalization: that is the caller's preset) and
returns unclipped images. Precision: `dtype` is the computation dtype (float32 default; bfloat16
allowed: GroupNorm statistics and the attention softmax stay in at least float32; float64 stays
float64); matmuls and convolutions use `precision` (HIGHEST by default: no TF32 on GPUs).
Parameters are float32.

Usage:
    vae = VAE.load("diffusion_pytorch_model.safetensors")   # stabilityai/sd-vae-ft-mse
    moments = vae.encode_moments(images)                     # [N, H/8, W/8, 8] float32
    mean, logvar, std = posterior(moments)
    images = vae.decode(latents)                             # raw latents [N, h, w, 4] -> [N, 8h, 8w, 3]

Weights (`load_params`): diffusers' `diffusion_pytorch_model.safetensors` (attention in the legacy
query / key / value / proj_attn spelling of the Hub files or the current to_q / to_k / to_v /
to_out.0), the original LDM layout (`vae-ft-mse-840000-ema-pruned.safetensors` / `.ckpt`) and full
Stable Diffusion checkpoints (the VAE under `first_stage_model.`). PyTorch pickles are read through
an allow-list (metrics.torch_pickle), never unpickled freely. Every name and shape is checked
against the network before anything is converted. See docs/FILES.md.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from fewstep_jax.data.formats import LOGVAR_RANGE
from fewstep_jax.metrics import torch_pickle
from fewstep_jax.metrics.inception import params_fingerprint
from fewstep_jax.models.layers import at_least_float32

Array = jax.Array

WEIGHTS_FILENAME = "diffusion_pytorch_model.safetensors"
WEIGHTS_SOURCE = "the stabilityai/sd-vae-ft-mse or stabilityai/sd-vae-ft-ema Hugging Face repository"
TORCH_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
#: Entries of LDM / Stable Diffusion checkpoints that are not VAE weights: the training loss
#: (LPIPS and discriminator) and the EMA bookkeeping of the LDM trainer.
IGNORED_PREFIXES = ("loss.", "model_ema.")
#: The VAE's prefix inside a full Stable Diffusion checkpoint (LDM's LatentDiffusion).
SD_PREFIX = "first_stage_model."
PROGRESS_SECONDS = 30.0
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")

_HIGHEST = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """AutoencoderKL hyper-parameters (diffusers names). Defaults: SD kl-f8 (LDM ch 128,
    ch_mult (1, 2, 4, 4), num_res_blocks 2, z_channels 4). `scaling_factor` is the SD latent scale
    (0.18215), recorded for callers; encode / decode never apply it."""

    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2  # the decoder uses layers_per_block + 1 Resnets per level
    latent_channels: int = 4
    in_channels: int = 3
    out_channels: int = 3
    norm_groups: int = 32
    norm_eps: float = 1e-6
    scaling_factor: float = 0.18215

    def __post_init__(self):
        sizes = (self.layers_per_block, self.latent_channels, self.in_channels, self.out_channels, self.norm_groups)
        if not self.block_out_channels or min((*self.block_out_channels, *sizes)) < 1:
            raise ValueError(f"VAEConfig sizes must be positive, got {self}")
        if any(c % self.norm_groups for c in self.block_out_channels):
            raise ValueError(
                f"block_out_channels {self.block_out_channels} must be divisible by norm_groups={self.norm_groups}"
            )

    @property
    def downsampling(self) -> int:
        """Image side / latent side (8 for kl-f8)."""
        return 2 ** (len(self.block_out_channels) - 1)


SD_KL_F8 = VAEConfig()
#: A reduced network of the same structure (four levels, two channel changes each way) for tests.
TINY = VAEConfig(block_out_channels=(4, 8, 12, 12), norm_groups=2)


# ---------------------------------------------------------------------------
# The network


class _Layer(nn.Module):
    """Shared fields and layer factories of the autoencoder's modules."""

    config: VAEConfig = SD_KL_F8
    dtype: Any = jnp.float32
    precision: Any = _HIGHEST

    def conv(self, features: int, name: str, kernel: int = 3, stride: int = 1, pad: tuple[int, int] = (1, 1)):
        padding = (pad, pad) if kernel == 3 else ((0, 0), (0, 0))
        return nn.Conv(
            features,
            (kernel, kernel),
            strides=stride,
            padding=padding,
            dtype=self.dtype,
            precision=self.precision,
            name=name,
        )

    def norm(self, name: str) -> nn.GroupNorm:
        # Two-pass variance; statistics in at least float32 (flax promotes), output in dtype.
        return nn.GroupNorm(
            num_groups=self.config.norm_groups,
            epsilon=self.config.norm_eps,
            dtype=self.dtype,
            use_fast_variance=False,
            name=name,
        )

    def child(self, cls: type[_Layer], name: str, **fields) -> _Layer:
        return cls(config=self.config, dtype=self.dtype, precision=self.precision, name=name, **fields)


class Resnet(_Layer):
    """diffusers ResnetBlock2D / LDM ResnetBlock without time embedding or dropout."""

    features: int = 0

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h = self.conv(self.features, "conv1")(nn.silu(self.norm("norm1")(x)))
        h = self.conv(self.features, "conv2")(nn.silu(self.norm("norm2")(h)))
        if x.shape[-1] != self.features:
            x = self.conv(self.features, "conv_shortcut", kernel=1)(x)
        return x + h


class Downsample(_Layer):
    """Zero padding (0, 1) on height and width, then a 3x3 stride-2 conv (diffusers Downsample2D
    with padding=0; LDM Downsample(with_conv=True))."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return self.conv(x.shape[-1], "conv", stride=2, pad=(0, 1))(x)


class Upsample(_Layer):
    """Nearest-neighbour x2, then a 3x3 conv (diffusers Upsample2D, LDM Upsample)."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return self.conv(x.shape[-1], "conv")(x)


class Attention(_Layer):
    """Single-head self-attention over all pixels with a residual (diffusers Attention with the
    classic AttnProcessor, heads = 1, residual_connection; LDM AttnBlock). Logits and softmax in
    at least float32."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        batch, height, width, channels = x.shape
        h = self.norm("group_norm")(x).reshape(batch, height * width, channels)
        dense = lambda name: nn.Dense(channels, dtype=self.dtype, precision=self.precision, name=name)
        q, k, v = dense("to_q")(h), dense("to_k")(h), dense("to_v")(h)
        compute = at_least_float32(q.dtype)
        logits = jnp.einsum("bqc,bkc->bqk", q.astype(compute), k.astype(compute), precision=self.precision)
        weights = jax.nn.softmax(logits * channels**-0.5, axis=-1)
        out = jnp.einsum("bqk,bkc->bqc", weights.astype(v.dtype), v, precision=self.precision)
        return x + dense("to_out")(out).reshape(x.shape)


class MidBlock(_Layer):
    """Resnet -> Attention -> Resnet at the lowest resolution (diffusers UNetMidBlock2D)."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        channels = x.shape[-1]
        x = self.child(Resnet, "resnets_0", features=channels)(x)
        x = self.child(Attention, "attentions_0")(x)
        x = self.child(Resnet, "resnets_1", features=channels)(x)
        self.sow("intermediates", "output", x)
        return x


class Level(_Layer):
    """One resolution level: `num_layers` Resnets to `features` channels, then the resampler
    ('down': Downsample, 'up': Upsample, '': none at the last level). diffusers DownEncoderBlock2D
    (encoder, 2 Resnets) and UpDecoderBlock2D (decoder, 3 Resnets)."""

    features: int = 0
    num_layers: int = 2
    resample: str = ""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        for j in range(self.num_layers):
            x = self.child(Resnet, f"resnets_{j}", features=self.features)(x)
        if self.resample:
            x = self.child(Downsample if self.resample == "down" else Upsample, f"{self.resample}samplers_0")(x)
        self.sow("intermediates", "output", x)
        return x


class Encoder(_Layer):
    """Images [B, H, W, in] -> [B, H / f, W / f, 2 * latent] (before quant_conv)."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        h = self.conv(cfg.block_out_channels[0], "conv_in")(x)
        last = len(cfg.block_out_channels) - 1
        for i, channels in enumerate(cfg.block_out_channels):
            resample = "down" if i < last else ""
            h = self.child(
                Level, f"down_blocks_{i}", features=channels, num_layers=cfg.layers_per_block, resample=resample
            )(h)
        h = self.child(MidBlock, "mid_block")(h)
        h = nn.silu(self.norm("conv_norm_out")(h))
        return self.conv(2 * cfg.latent_channels, "conv_out")(h)


class Decoder(_Layer):
    """Latents [B, h, w, latent] (after post_quant_conv) -> images [B, f h, f w, out] (levels widest
    first)."""

    @nn.compact
    def __call__(self, z: Array) -> Array:
        cfg = self.config
        widths = tuple(reversed(cfg.block_out_channels))
        h = self.conv(widths[0], "conv_in")(z)
        h = self.child(MidBlock, "mid_block")(h)
        for i, channels in enumerate(widths):
            resample = "up" if i < len(widths) - 1 else ""
            h = self.child(
                Level, f"up_blocks_{i}", features=channels, num_layers=cfg.layers_per_block + 1, resample=resample
            )(h)
        h = nn.silu(self.norm("conv_norm_out")(h))
        return self.conv(cfg.out_channels, "conv_out")(h)


class AutoencoderKL(nn.Module):
    """The kl-f8 autoencoder: `encode` images -> moments, `decode` latents -> images (NHWC).

    Call with `method='encode'` / `method='decode'`; `__call__(x)` = decode(mean of encode(x)) so
    that `init` builds both halves. Outputs are float32 (float64 when dtype is float64). Each
    block's output is sown as 'output' into the 'intermediates' collection (apply with
    mutable=['intermediates'] to read them; otherwise sowing costs nothing), e.g.
    intermediates['encoder']['down_blocks_1']['output'] = (h,); also mid_block, up_blocks_{i}.
    """

    config: VAEConfig = SD_KL_F8
    dtype: Any = jnp.float32
    precision: Any = _HIGHEST

    def setup(self):
        shared = dict(config=self.config, dtype=self.dtype, precision=self.precision)
        one_by_one = dict(kernel_size=(1, 1), padding="VALID", dtype=self.dtype, precision=self.precision)
        self.encoder = Encoder(**shared)
        self.quant_conv = nn.Conv(2 * self.config.latent_channels, **one_by_one)
        self.post_quant_conv = nn.Conv(self.config.latent_channels, **one_by_one)
        self.decoder = Decoder(**shared)

    def _input(self, x: Array, channels: int, what: str) -> Array:
        if x.ndim != 4 or x.shape[-1] != channels:
            raise ValueError(f"AutoencoderKL.{what} expects NHWC input with {channels} channels, got shape {x.shape}")
        return jnp.asarray(x).astype(self.dtype)

    def encode(self, x: Array) -> Array:
        """Images [B, H, W, in_channels] in [-1, 1] -> moments [B, H/f, W/f, 2 * latent_channels]
        (mean, then the raw log-variance; odd sizes are floored by each Downsample)."""
        h = self.quant_conv(self.encoder(self._input(x, self.config.in_channels, "encode")))
        return h.astype(at_least_float32(self.dtype))

    def decode(self, z: Array) -> Array:
        """Raw latents [B, h, w, latent_channels] -> images [B, f h, f w, out_channels] (unclipped)."""
        h = self.decoder(self.post_quant_conv(self._input(z, self.config.latent_channels, "decode")))
        return h.astype(at_least_float32(self.dtype))

    def __call__(self, x: Array) -> Array:
        mean, _ = jnp.split(self.encode(x), 2, axis=-1)
        return self.decode(mean)


def posterior(moments: Array) -> tuple[Array, Array, Array]:
    """Moments [..., 2 L] -> (mean, logvar clamped to LOGVAR_RANGE, std = exp(logvar / 2)), the
    diagonal Gaussian q(z|x) (diffusers DiagonalGaussianDistribution; LDM sec. 3.1)."""
    moments = jnp.asarray(moments)
    moments = moments.astype(at_least_float32(moments.dtype))
    mean, logvar = jnp.split(moments, 2, axis=-1)
    logvar = jnp.clip(logvar, *LOGVAR_RANGE)
    return mean, logvar, jnp.exp(0.5 * logvar)


def sample_posterior(moments: Array, rng: Array) -> Array:
    """One draw z = mean + std * eps, eps ~ N(0, I), from the posterior of `moments`."""
    mean, _, std = posterior(moments)
    return mean + std * jax.random.normal(rng, mean.shape, mean.dtype)


# ---------------------------------------------------------------------------
# Parameter layout and names


@functools.cache
def param_shapes(config: VAEConfig = SD_KL_F8) -> dict[tuple[str, ...], tuple[int, ...]]:
    """{Flax parameter path: shape}, from jax.eval_shape (nothing is allocated)."""
    size = 2 * config.downsampling
    x = jax.ShapeDtypeStruct((1, size, size, config.in_channels), jnp.float32)
    shapes = jax.eval_shape(AutoencoderKL(config).init, jax.random.key(0), x)
    flat = jax.tree_util.tree_flatten_with_path(shapes["params"])[0]
    return {tuple(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


def num_params(config: VAEConfig = SD_KL_F8) -> int:
    """Parameter count (83,653,863 for kl-f8)."""
    return sum(math.prod(s) for s in param_shapes(config).values())


_INDEXED = re.compile(r"(down_blocks|up_blocks|resnets|attentions|downsamplers|upsamplers)_(\d+)")
_LEGACY_ATTENTION = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
SPELLINGS = ("current", "legacy")


def torch_name(path: tuple[str, ...]) -> str:
    """Flax path -> diffusers' current state-dict name:
    ('decoder', 'up_blocks_2', 'resnets_0', 'conv_shortcut', 'kernel') ->
    'decoder.up_blocks.2.resnets.0.conv_shortcut.weight'."""
    parts = []
    for part in path[:-1]:
        match = _INDEXED.fullmatch(part)
        parts.append("to_out.0" if part == "to_out" else f"{match[1]}.{match[2]}" if match else part)
    return ".".join(parts) + (".bias" if path[-1] == "bias" else ".weight")


#: Flax kernel axes -> PyTorch's, by rank: conv [kh, kw, I, O] -> [O, I, kh, kw], dense [in, out] -> [out, in].
_TO_TORCH = {4: (3, 2, 0, 1), 2: (1, 0)}
_FROM_TORCH = {4: (2, 3, 1, 0), 2: (1, 0)}


def _permute(array: np.ndarray, axes_by_rank: dict[int, tuple[int, ...]]) -> np.ndarray:
    axes = axes_by_rank.get(array.ndim)
    return array if axes is None else np.transpose(array, axes)


def state_dict_shapes(config: VAEConfig = SD_KL_F8) -> dict[str, tuple[int, ...]]:
    """The diffusers state dict (current spelling) the network expects: {name: PyTorch shape}."""
    return {
        torch_name(path): tuple(shape[i] for i in _TO_TORCH.get(len(shape), range(len(shape))))
        for path, shape in param_shapes(config).items()
    }


def legacy_name(name: str) -> str:
    """diffusers' current attention names -> the legacy ones of the sd-vae-ft-* Hub files
    (mid_block.attentions.0.to_q -> .query, to_k -> key, to_v -> value, to_out.0 -> proj_attn)."""
    for current, legacy in _LEGACY_ATTENTION.items():
        name = name.replace(f".attentions.0.{current}.", f".attentions.0.{legacy}.")
    return name


def _current_name(name: str) -> str:
    for current, legacy in _LEGACY_ATTENTION.items():
        name = name.replace(f".attentions.0.{legacy}.", f".attentions.0.{current}.")
    return name


_LDM_RESNET = {"nin_shortcut": "conv_shortcut"}
_LDM_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def ldm_to_diffusers(name: str, num_levels: int) -> str:
    """An original LDM / CompVis state-dict name -> diffusers' current name (unchanged when it is
    not an LDM name). down.{i}.block.{j} -> down_blocks.{i}.resnets.{j}; decoder up.{i} ->
    up_blocks.{num_levels - 1 - i} (LDM numbers the decoder levels from the output side);
    downsample / upsample -> downsamplers.0 / upsamplers.0; mid.block_{1,2} -> mid_block.resnets.{0,1};
    mid.attn_1.{norm,q,k,v,proj_out} -> mid_block.attentions.0.{group_norm,to_q,to_k,to_v,to_out.0};
    norm_out -> conv_norm_out; nin_shortcut -> conv_shortcut."""
    side, _, rest = name.partition(".")
    if side not in ("encoder", "decoder"):
        return name
    if m := re.fullmatch(r"(down|up)\.(\d+)\.block\.(\d+)\.(\w+)\.(weight|bias)", rest):
        level = int(m[2]) if m[1] == "down" else num_levels - 1 - int(m[2])
        layer = _LDM_RESNET.get(m[4], m[4])
        return f"{side}.{m[1]}_blocks.{level}.resnets.{m[3]}.{layer}.{m[5]}"
    if m := re.fullmatch(r"(down|up)\.(\d+)\.(downsample|upsample)\.conv\.(weight|bias)", rest):
        level = int(m[2]) if m[1] == "down" else num_levels - 1 - int(m[2])
        return f"{side}.{m[1]}_blocks.{level}.{m[3]}rs.0.conv.{m[4]}"
    if m := re.fullmatch(r"mid\.block_([12])\.(\w+)\.(weight|bias)", rest):
        return f"{side}.mid_block.resnets.{int(m[1]) - 1}.{_LDM_RESNET.get(m[2], m[2])}.{m[3]}"
    if m := re.fullmatch(r"mid\.attn_1\.(norm|q|k|v|proj_out)\.(weight|bias)", rest):
        return f"{side}.mid_block.attentions.0.{_LDM_ATTENTION[m[1]]}.{m[2]}"
    if m := re.fullmatch(r"norm_out\.(weight|bias)", rest):
        return f"{side}.conv_norm_out.{m[1]}"
    return name


# ---------------------------------------------------------------------------
# Reading weight files


class _Tensors:
    """{name: (shape, dtype)} of a weight file and a reader of single tensors (safetensors files
    are read lazily: names and shapes come from the header, data only after the check)."""

    def __init__(self, shapes: dict[str, tuple[tuple[int, ...], str]], read: Callable[[str], np.ndarray]):
        self.shapes, self.read = shapes, read


def _missing_file(path: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"VAE weights {path} not found: expected {WEIGHTS_FILENAME} from {WEIGHTS_SOURCE} (or the original "
        "vae-ft-mse-840000-ema-pruned.safetensors / .ckpt); pass its path"
    )


def _resolve(path: str | os.PathLike[str]) -> str:
    path = os.path.expanduser(os.fspath(path))
    if os.path.isdir(path):  # a downloaded repository (or a pipeline's vae/ folder)
        for candidate in (os.path.join(path, WEIGHTS_FILENAME), os.path.join(path, "vae", WEIGHTS_FILENAME)):
            if os.path.isfile(candidate):
                return candidate
        raise _missing_file(os.path.join(path, WEIGHTS_FILENAME))
    if not os.path.isfile(path):
        raise _missing_file(path)
    return path


def _open(path: str) -> _Tensors:
    """The tensors of a .safetensors or PyTorch file (safely: no code from the file runs)."""
    if path.endswith(".safetensors"):
        import safetensors

        try:
            handle = safetensors.safe_open(path, framework="np")
            shapes = {}
            for name in handle.keys():
                tensor = handle.get_slice(name)
                shapes[name] = (
                    tuple(tensor.get_shape()),
                    _numpy_dtype_name(tensor.get_dtype()),
                )
        except (safetensors.SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"cannot read VAE weights {path} as safetensors: {e}") from None

        def read(name: str) -> np.ndarray:
            try:
                return handle.get_tensor(name)
            except (safetensors.SafetensorError, TypeError, ValueError) as e:
                raise ValueError(f"cannot read tensor {name} of {path}: {e}") from None

        return _Tensors(shapes, read)
    if path.endswith(TORCH_SUFFIXES):
        try:
            arrays = torch_pickle.load(path)
        except (torch_pickle.TorchFileError, OSError, ValueError, EOFError) as e:
            raise ValueError(f"cannot read VAE weights {path} as a PyTorch file: {e}") from None
        return _Tensors({k: (v.shape, v.dtype.name) for k, v in arrays.items()}, arrays.__getitem__)
    raise ValueError(
        f"VAE weights {path}: unknown file type; expected {WEIGHTS_FILENAME} from {WEIGHTS_SOURCE}, "
        f"an original LDM .safetensors, or a PyTorch {'/'.join(TORCH_SUFFIXES)} checkpoint"
    )


def _numpy_dtype_name(tag: str) -> str:
    """safetensors' dtype tags ('F32', 'BF16', 'I64', 'U8', 'BOOL') -> numpy's names."""
    m = re.fullmatch(r"(BF|F|I|U)(\d+)", tag)
    return f"{dict(BF='bfloat', F='float', I='int', U='uint')[m[1]]}{m[2]}" if m else tag.lower()


def _listing(what: str, items: list[str], limit: int = 5) -> str:
    return f"{len(items)} {what} ({', '.join(items[:limit])}{', ...' if len(items) > limit else ''})"


def _file_names(names: list[str], config: VAEConfig, source: str) -> dict[str, str]:
    """{diffusers current name: the file's name} for the VAE tensors of a file in any accepted
    layout; refuses a file with both attention spellings or with no attention weights."""
    if any(n.startswith(SD_PREFIX) for n in names):  # a full Stable Diffusion checkpoint
        names = [n for n in names if n.startswith(SD_PREFIX)]
        strip = len(SD_PREFIX)
    else:
        names = [n for n in names if not n.startswith(IGNORED_PREFIXES)]
        strip = 0
    mapping: dict[str, str] = {}
    duplicates = []
    for name in names:
        target = _current_name(ldm_to_diffusers(name[strip:], len(config.block_out_channels)))
        if target in mapping:
            duplicates.append(f"{mapping[target]} / {name}")
        mapping[target] = name
    legacy = [n for n in names if _current_name(n) != n]
    current = [n for n in names if re.search(r"\.attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.", n)]
    if legacy and current:
        raise ValueError(
            f"VAE weights {source} hold the mid-block attention in both spellings (legacy {legacy[0]} and "
            f"current {current[0]}); expected one of them"
        )
    if not any(".attentions.0." in n or ".attn_1." in n for n in names):
        raise ValueError(
            f"VAE weights {source} hold no mid-block attention weights (neither query / key / value / proj_attn "
            f"nor to_q / to_k / to_v / to_out.0): expected {WEIGHTS_FILENAME} from {WEIGHTS_SOURCE}"
        )
    if duplicates:
        raise ValueError(f"VAE weights {source} name a tensor twice: {_listing('duplicates', duplicates)}")
    return mapping


def _squeezable(given: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    """LDM stores the attention projections as 1x1 convs: [C, C, 1, 1] for a [C, C] linear."""
    return len(expected) == 2 and given == (*expected, 1, 1)


def _params_from_tensors(tensors: _Tensors, config: VAEConfig = SD_KL_F8, source: str = "state dict") -> dict:
    """Checks every name and shape, then converts: Flax params (float32)."""
    expected = state_dict_shapes(config)
    mapping = _file_names(list(tensors.shapes), config, source)
    missing = sorted(set(expected) - set(mapping))
    unexpected = sorted(mapping[n] for n in set(mapping) - set(expected))
    wrong = []
    for name in sorted(set(mapping) & set(expected)):
        shape, dtype = tensors.shapes[mapping[name]]
        shape = tuple(shape)
        if shape != expected[name] and not _squeezable(shape, expected[name]):
            wrong.append(f"{mapping[name]} {list(shape)}, expected {list(expected[name])}")
        elif dtype not in FLOAT_DTYPES:
            wrong.append(f"{mapping[name]} dtype {dtype}")
    if missing or unexpected or wrong:
        problems = [
            _listing(what, items)
            for what, items in (
                ("missing (diffusers' current names)", missing),
                ("unexpected", unexpected),
                ("mis-shaped or not floating point", wrong),
            )
            if items
        ]
        raise ValueError(
            f"VAE weights {source} do not fit AutoencoderKL(block_out_channels={config.block_out_channels}, "
            f"{len(expected)} tensors): " + "; ".join(problems)
        )
    params: dict[str, Any] = {}
    for path in param_shapes(config):
        name = torch_name(path)
        array = np.asarray(tensors.read(mapping[name]))
        array = array.reshape(expected[name]).astype(np.float32)  # the squeeze of LDM's 1x1 convs
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = np.ascontiguousarray(_permute(array, _FROM_TORCH))
    return params


def params_from_state_dict(
    state_dict: Mapping[str, np.ndarray], config: VAEConfig = SD_KL_F8, source: str = "state dict"
) -> dict:
    """A state dict in any accepted layout (diffusers legacy / current, LDM, `first_stage_model.`
    prefixed) -> Flax params (float32), every name and shape checked."""
    arrays = {k: np.asarray(v) for k, v in state_dict.items()}
    return _params_from_tensors(
        _Tensors({k: (v.shape, v.dtype.name) for k, v in arrays.items()}, arrays.__getitem__), config, source
    )


def load_params(path: str | os.PathLike[str], config: VAEConfig = SD_KL_F8) -> dict:
    """Flax params of the autoencoder from a weight file (or a folder holding
    diffusion_pytorch_model.safetensors, directly or under vae/).

    Accepted: diffusers' safetensors (legacy or current attention names), the original LDM layout
    (.safetensors or a PyTorch .ckpt, whose `loss.*` / `model_ema.*` entries are ignored), a full
    Stable Diffusion checkpoint (its `first_stage_model.*` entries). Raises FileNotFoundError for a
    missing path and ValueError, before converting anything, for a file that is not one of those or
    whose tensors do not match `config` (missing, unexpected and mis-shaped names listed).
    """
    path = _resolve(path)
    return _params_from_tensors(_open(path), config, path)


def to_state_dict(params: Mapping[str, Any], spelling: str = "current") -> dict[str, np.ndarray]:
    """Flax params -> a diffusers state dict (float32, PyTorch layouts) in the `spelling` of the
    attention names ('current' or 'legacy')."""
    if spelling not in SPELLINGS:
        raise ValueError(f"spelling must be one of {SPELLINGS}, got {spelling!r}")
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = torch_name(tuple(k.key for k in path))
        array = _permute(np.asarray(leaf, np.float32), _TO_TORCH)
        out[legacy_name(name) if spelling == "legacy" else name] = np.ascontiguousarray(array)
    return out


CONFIG_METADATA = "fewstep_vae_config"


def save_safetensors(
    params: Mapping[str, Any], path: str, spelling: str = "current", config: VAEConfig | None = None
) -> None:
    """Writes params as a diffusers-named safetensors file (loadable by load_params and diffusers).
    With `config`, the file records it in its metadata, and file_config() reads it back."""
    import json

    import safetensors.numpy

    metadata = {"format": "pt"}
    if config is not None:
        metadata[CONFIG_METADATA] = json.dumps(dataclasses.asdict(config))
    safetensors.numpy.save_file(to_state_dict(params, spelling), path, metadata=metadata)


def file_config(path: str | os.PathLike[str]) -> VAEConfig:
    """The configuration a weight file was written with (save_safetensors(..., config=...)), or
    SD_KL_F8 for every other file, the released VAEs included."""
    import json

    path = _resolve(path)
    if not path.endswith(".safetensors"):
        return SD_KL_F8
    import safetensors

    try:
        with safetensors.safe_open(path, framework="np") as f:
            recorded = (f.metadata() or {}).get(CONFIG_METADATA)
    except Exception:  # an unreadable file: load_params names the problem
        return SD_KL_F8
    if recorded is None:
        return SD_KL_F8
    fields = json.loads(recorded)
    fields["block_out_channels"] = tuple(fields["block_out_channels"])
    return VAEConfig(**fields)


# ---------------------------------------------------------------------------
# Batched front end


class VAE:
    """Encode images to moments and decode latents to images in batches, each batch sharded over
    all local devices along its leading axis (parameters replicated). Jitted once per batch shape;
    inputs and outputs are host numpy arrays (float32; float64 for dtype float64).

        vae = VAE.load(path)                   # or VAE(params, config)
        moments = vae.encode_moments(images)   # NHWC floats in [-1, 1]
        images = vae.decode(latents)           # raw latents (divide by the scale first)

    `fingerprint` is a short hash of the weights, to record which VAE produced a dataset.
    """

    def __init__(
        self,
        params: Any,
        config: VAEConfig = SD_KL_F8,
        *,
        dtype: Any = jnp.float32,
        precision: Any = _HIGHEST,
        batch_size: int = 32,
    ):
        devices = jax.local_devices()
        self.config = config
        self.batch_size = -(-int(batch_size) // len(devices)) * len(devices)  # a multiple of the device count
        self._devices = len(devices)
        mesh = jax.sharding.Mesh(np.array(devices), ("batch",))
        self._batch = NamedSharding(mesh, P("batch"))
        self._params = jax.device_put(params, NamedSharding(mesh, P()))
        net = AutoencoderKL(config, dtype=jnp.dtype(dtype), precision=precision)
        self._host_dtype = np.dtype(at_least_float32(jnp.dtype(dtype)))  # float32, or float64 for float64
        self._encode = jax.jit(lambda p, x: net.apply({"params": p}, x, method=AutoencoderKL.encode))
        self._decode = jax.jit(lambda p, z: net.apply({"params": p}, z, method=AutoencoderKL.decode))
        self.fingerprint = params_fingerprint(params)

    @classmethod
    def load(cls, path: str | os.PathLike[str], config: VAEConfig = SD_KL_F8, **kwargs) -> VAE:
        return cls(load_params(path, config), config, **kwargs)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **kwargs) -> VAE:
        """The VAE of a weight file in the configuration the file records (file_config)."""
        return cls.load(path, file_config(path), **kwargs)

    def encode_moments(self, images: np.ndarray | Array) -> np.ndarray:
        """Images [N, H, W, in_channels] (floats in [-1, 1]) -> moments [N, H/f, W/f, 2 * latent]."""
        images = np.asarray(images)
        if not np.issubdtype(images.dtype, np.floating):
            raise ValueError(f"VAE.encode_moments takes float images in [-1, 1], got {images.dtype}")
        if images.size and np.abs(images).max() > 2.0:
            raise ValueError("VAE.encode_moments takes images in [-1, 1]; these look like [0, 255] pixels")
        return self._map(self._encode, images, self.config.in_channels, "encode")

    def decode(self, latents: np.ndarray | Array) -> np.ndarray:
        """Raw latents [N, h, w, latent_channels] -> images [N, f h, f w, out_channels] (unclipped)."""
        return self._map(self._decode, np.asarray(latents), self.config.latent_channels, "decode")

    def _map(self, fn: Callable, x: np.ndarray, channels: int, what: str) -> np.ndarray:
        if x.ndim != 4 or x.shape[-1] != channels or not len(x):
            raise ValueError(f"VAE.{what} expects NHWC arrays with {channels} channels, got shape {x.shape}")
        # Short inputs run as one batch padded to the device count, longer ones in full batches.
        size = min(self.batch_size, -(-len(x) // self._devices) * self._devices)
        outputs, start = [], time.perf_counter()
        last = start
        for begin in range(0, len(x), size):
            chunk = x[begin : begin + size]
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], size - len(chunk), axis=0)])
            out = fn(self._params, jax.device_put(padded.astype(self._host_dtype), self._batch))
            outputs.append(np.asarray(out)[: len(chunk)])
            if time.perf_counter() - last > PROGRESS_SECONDS:
                done, last = begin + len(chunk), time.perf_counter()
                rate = done / (last - start)
                logging.info(
                    "VAE %s: %d / %d (%.1f img/s, ETA %.0f s)", what, done, len(x), rate, (len(x) - done) / rate
                )
        return np.concatenate(outputs)
