"""Network registry: `build(model_cfg, data_shape=..., num_classes=...) -> flax.linen.Module`.

Every network is called as
    net.apply({'params': params}, x, t, y=None, d=None, train=False, rngs={'dropout': key})
with x [B, *data_shape] float, t [B] float (raw time, embedded as positional(time_scale * t)),
y [B] int labels in 0..num_classes (num_classes = NULL; None = all NULL) or None, d [B] float or
None (only when use_d), and returns an array of x's shape (float32, or float64 for float64 x).

`build` validates the config eagerly in Python, before any tracing, so a typo or an impossible
architecture fails with a message instead of a shape error deep inside jit.

A network may define `project_params(params) -> params`, a projection the training loop applies
to its parameters at init and after every optimizer update (EDM2's forced weight normalization);
`param_projection(net)` returns it, or the identity for networks without one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fewstep_jax.models import imf_dit
from fewstep_jax.models.adm import ADM
from fewstep_jax.models.attention import ATTENTION_KINDS
from fewstep_jax.models.dit import DIT_SIZES, DiT
from fewstep_jax.models.edm2 import EDM2, EDM2_SIZES
from fewstep_jax.models.layers import LABEL_EMBEDS, TIME_EMBEDDINGS, TIME_MAPS
from fewstep_jax.models.mlp import MLP
from fewstep_jax.models.remat import REMAT_POLICIES
from fewstep_jax.models.unet import (
    DECODER_ATTNS,
    EMB_NORMS,
    ENCODER_TYPES,
    RESAMPLINGS,
    UNet,
    visited_resolutions,
)

__all__ = [
    "REGISTRY", "build", "count_params", "param_projection", "ADM", "DiT", "DIT_SIZES", "EDM2",
    "EDM2_SIZES", "MLP", "UNet",
]

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
    """Accepted config keys with their defaults, and the constructor that validates them."""

    defaults: Mapping[str, Any]
    make: Callable[[dict[str, Any], tuple[int, ...], int], nn.Module]


def _positive_int(cfg: Mapping[str, Any], key: str, minimum: int = 1) -> int:
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"model.{key} must be an int >= {minimum}, got {value!r}")
    return value


def _dropout(cfg: Mapping[str, Any]) -> float:
    rate = float(cfg["dropout"])
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"model.dropout must be in [0, 1), got {rate}")
    return rate


def _dtype(cfg: Mapping[str, Any]) -> Any:
    name = cfg["dtype"]
    if name not in _DTYPES:
        raise ValueError(f"model.dtype must be one of {sorted(_DTYPES)}, got {name!r}")
    return _DTYPES[name]


def _memory_options(cfg: Mapping[str, Any]) -> dict[str, str]:
    """model.attention (ATTENTION_KINDS) and model.remat (REMAT_POLICIES) of a network with
    attention blocks, checked."""
    if cfg["attention"] not in ATTENTION_KINDS:
        raise ValueError(f"model.attention must be one of {list(ATTENTION_KINDS)}, got {cfg['attention']!r}")
    if cfg["remat"] not in REMAT_POLICIES:
        raise ValueError(f"model.remat must be one of {list(REMAT_POLICIES)}, got {cfg['remat']!r}")
    return dict(attention=cfg["attention"], remat=cfg["remat"])


def _make_mlp(cfg: dict[str, Any], data_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if len(data_shape) != 1:
        raise ValueError(f"mlp needs a 1-D data_shape (C,), got {data_shape}")
    emb_dim = _positive_int(cfg, "emb_dim", 4)
    if emb_dim % 2:
        raise ValueError(f"model.emb_dim must be even (sin/cos pairs), got {emb_dim}")
    return MLP(
        hidden=_positive_int(cfg, "hidden"),
        depth=_positive_int(cfg, "depth", 0),
        emb_dim=emb_dim,
        time_scale=float(cfg["time_scale"]),
        use_d=bool(cfg["use_d"]),
        dropout=_dropout(cfg),
        num_classes=num_classes,
        dtype=_dtype(cfg),
    )


def _levels(
    cfg: Mapping[str, Any], data_shape: tuple[int, ...], network: str, channels: int
) -> tuple[tuple[int, ...], tuple[int, ...], list[int]]:
    """(channel_mult, attn_resolutions, attention widths) of a multi-resolution UNet on square
    (H, W, C) images, checked: H divisible by 2**(levels - 1), attention only at visited
    resolutions. Attention runs at those levels and always in the middle (deepest width)."""
    height, width, _ = data_shape
    channel_mult = tuple(int(m) for m in cfg["channel_mult"])
    if not channel_mult or min(channel_mult) < 1:
        raise ValueError(f"model.channel_mult must be a non-empty tuple of ints >= 1, got {channel_mult}")
    levels = len(channel_mult)
    if height != width or height % 2 ** (levels - 1) != 0:
        raise ValueError(
            f"{network} needs square images with H divisible by 2**(len(channel_mult)-1) = "
            f"{2 ** (levels - 1)}; got data_shape {data_shape} with channel_mult {channel_mult}"
        )
    visited = visited_resolutions(height, channel_mult)
    attn_resolutions = tuple(int(r) for r in cfg["attn_resolutions"])
    missing = sorted(set(attn_resolutions) - set(visited))
    if missing:
        raise ValueError(
            f"model.attn_resolutions {missing} are not visited by this {network}; at {height}x{width} "
            f"with channel_mult {channel_mult} the resolutions are {visited}"
        )
    widths = {channels * channel_mult[-1]} | {channels * channel_mult[visited.index(r)] for r in attn_resolutions}
    return channel_mult, attn_resolutions, sorted(widths)


def _float(cfg: Mapping[str, Any], key: str, *, zero_ok: bool = False) -> float:
    value = float(cfg[key])
    if value < 0 or (value == 0 and not zero_ok):
        raise ValueError(f"model.{key} must be {'>= 0' if zero_ok else 'positive'}, got {value}")
    return value


def _choice(cfg: Mapping[str, Any], key: str, allowed: tuple[str, ...]) -> str:
    if cfg[key] not in allowed:
        raise ValueError(f"model.{key} must be one of {list(allowed)}, got {cfg[key]!r}")
    return cfg[key]


def _time_map(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """time_map / time_map_sigma_d (layers.map_time), checked."""
    return dict(time_map=_choice(cfg, "time_map", TIME_MAPS), time_map_sigma_d=_float(cfg, "time_map_sigma_d"))


def _fir_filter(cfg: Mapping[str, Any]) -> tuple[int, ...]:
    taps = tuple(cfg["resample_filter"])
    if len(taps) < 2 or len(taps) % 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in taps):
        raise ValueError(f"model.resample_filter must be an even number (>= 2) of positive ints, got {taps}")
    return taps


def _divisor(cfg: Mapping[str, Any], key: str, widths: list[int]) -> int:
    """model.`key` (heads, or channels per head), checked to divide every attention width."""
    value = _positive_int(cfg, key)
    bad = [w for w in widths if w % value]
    if bad:
        raise ValueError(f"model.{key}={value} does not divide attention widths {bad}")
    return value


def _emb_dim(cfg: Mapping[str, Any]) -> int:
    emb_dim = int(cfg["emb_dim"] or 0)
    if emb_dim < 0:
        raise ValueError(f"model.emb_dim must be >= 0 (0 -> 4 * channels), got {emb_dim}")
    return emb_dim


def _make_unet(cfg: dict[str, Any], data_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if len(data_shape) != 3:
        raise ValueError(f"unet needs a 3-D data_shape (H, W, C), got {data_shape}")
    channels = _positive_int(cfg, "channels")
    channel_mult, attn_resolutions, attn_widths = _levels(cfg, data_shape, "unet", channels)
    num_heads = _divisor(cfg, "num_heads", attn_widths)
    emb_dim = _emb_dim(cfg)
    emb_norm = _choice(cfg, "emb_norm", EMB_NORMS)
    resample, decoder_attn = _choice(cfg, "resample", RESAMPLINGS), _choice(cfg, "decoder_attn", DECODER_ATTNS)
    resample_filter = _fir_filter(cfg)
    embedding_type = _choice(cfg, "embedding_type", TIME_EMBEDDINGS)
    noise_dim = _positive_int(cfg, "noise_dim", 0)
    if noise_dim and (noise_dim % 2 or noise_dim < (4 if embedding_type == "positional" else 2)):
        raise ValueError(
            f"model.noise_dim must be 0 (the default width) or an even width (>= 4 for positional features), "
            f"got {noise_dim}"
        )
    return UNet(
        channels=channels,
        channel_mult=channel_mult,
        num_blocks=_positive_int(cfg, "num_blocks"),
        attn_resolutions=attn_resolutions,
        dropout=_dropout(cfg),
        emb_dim=emb_dim,
        time_scale=float(cfg["time_scale"]),
        use_d=bool(cfg["use_d"]),
        num_groups=_positive_int(cfg, "num_groups"),
        num_heads=num_heads,
        num_classes=num_classes,
        dtype=_dtype(cfg),
        emb_norm=emb_norm,
        resample=resample,
        resample_filter=resample_filter,
        decoder_attn=decoder_attn,
        norm_eps=_float(cfg, "norm_eps"),
        min_group_size=_positive_int(cfg, "min_group_size"),
        label_embed=_choice(cfg, "label_embed", LABEL_EMBEDS),
        noise_dim=noise_dim,
        embedding_type=embedding_type,
        fourier_scale=_float(cfg, "fourier_scale"),
        encoder_type=_choice(cfg, "encoder_type", ENCODER_TYPES),
        **_time_map(cfg),
        **_memory_options(cfg),
    )


def _make_adm(cfg: dict[str, Any], data_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """ADM (EDM's DhariwalUNet); every attention width must be a multiple of channels_per_head."""
    if len(data_shape) != 3:
        raise ValueError(f"adm needs a 3-D data_shape (H, W, C), got {data_shape}")
    channels = _positive_int(cfg, "channels")
    channel_mult, attn_resolutions, attn_widths = _levels(cfg, data_shape, "adm", channels)
    if channels % 2:
        raise ValueError(
            f"model.channels must be even (ADM embeds time in `channels` sin / cos features), got {channels}"
        )
    return ADM(
        channels=channels,
        channel_mult=channel_mult,
        num_blocks=_positive_int(cfg, "num_blocks"),
        attn_resolutions=attn_resolutions,
        dropout=_dropout(cfg),
        emb_dim=_emb_dim(cfg),
        channels_per_head=_divisor(cfg, "channels_per_head", attn_widths),
        time_scale=float(cfg["time_scale"]),
        use_d=bool(cfg["use_d"]),
        num_classes=num_classes,
        dtype=_dtype(cfg),
        **_time_map(cfg),
    )


def _make_dit(cfg: dict[str, Any], data_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """DiT (Peebles & Xie 2023). `size` (one of DIT_SIZES) fills hidden / depth / num_heads that
    are left at None; explicitly given values win."""
    if len(data_shape) != 3:
        raise ValueError(f"dit needs a 3-D data_shape (H, W, C), got {data_shape}")
    size = cfg["size"]
    if size is not None:
        if size not in DIT_SIZES:
            raise ValueError(f"model.size must be one of {list(DIT_SIZES)} (DiT Table 1), got {size!r}")
        cfg = dict(cfg)
        for key, value in zip(("hidden", "depth", "num_heads"), DIT_SIZES[size]):
            if cfg[key] is None:
                cfg[key] = value
    missing = [key for key in ("hidden", "depth", "num_heads") if cfg[key] is None]
    if missing:
        raise ValueError(
            f"dit needs model.size (one of {list(DIT_SIZES)}) or explicit values for {missing}"
        )
    hidden = _positive_int(cfg, "hidden")
    num_heads = _positive_int(cfg, "num_heads")
    patch = _positive_int(cfg, "patch")
    if hidden % num_heads:
        raise ValueError(f"model.num_heads={num_heads} does not divide model.hidden={hidden}")
    if hidden % 4:
        raise ValueError(
            f"model.hidden must be divisible by 4 (2-D sin-cos positional embedding), got {hidden}"
        )
    height, width, _ = data_shape
    if height % patch or width % patch:
        raise ValueError(
            f"dit needs H and W divisible by model.patch={patch}; got data_shape {data_shape}"
        )
    mlp_ratio = float(cfg["mlp_ratio"])
    if int(hidden * mlp_ratio) < 1:
        raise ValueError(f"model.mlp_ratio must give an MLP width >= 1, got {mlp_ratio}")
    return DiT(
        hidden=hidden,
        depth=_positive_int(cfg, "depth"),
        num_heads=num_heads,
        patch=patch,
        mlp_ratio=mlp_ratio,
        dropout=_dropout(cfg),
        time_scale=float(cfg["time_scale"]),
        use_d=bool(cfg["use_d"]),
        num_classes=num_classes,
        dtype=_dtype(cfg),
        time_endpoint=bool(cfg["time_endpoint"]),
        learn_sigma=bool(cfg["learn_sigma"]),
        **_memory_options(cfg),
        qk_norm=bool(cfg["qk_norm"]),
    )


def _make_edm2(cfg: dict[str, Any], data_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """EDM2 (Karras et al. 2024). `size` (one of EDM2_SIZES, any case) fills `channels` when it is
    None; an explicit `channels` wins."""
    if len(data_shape) != 3:
        raise ValueError(f"edm2 needs a 3-D data_shape (H, W, C), got {data_shape}")
    cfg = dict(cfg)
    if cfg["size"] is not None:
        size = str(cfg["size"]).upper()
        if size not in EDM2_SIZES:
            raise ValueError(f"model.size must be one of {list(EDM2_SIZES)} (EDM2 Table 2), got {cfg['size']!r}")
        if cfg["channels"] is None:
            cfg["channels"] = EDM2_SIZES[size]
    if cfg["channels"] is None:
        raise ValueError(f"edm2 needs model.size (one of {list(EDM2_SIZES)}) or an explicit model.channels")
    channels = _positive_int(cfg, "channels")
    channel_mult, attn_resolutions, attn_widths = _levels(cfg, data_shape, "edm2", channels)
    per_head = _divisor(cfg, "channels_per_head", attn_widths)
    balances = {k: float(cfg[k]) for k in ("res_balance", "attn_balance", "label_balance", "concat_balance")}
    for key, value in balances.items():
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"model.{key} must be in [0, 1], got {value}")
    return EDM2(
        channels=channels,
        channel_mult=channel_mult,
        num_blocks=_positive_int(cfg, "num_blocks"),
        attn_resolutions=attn_resolutions,
        dropout=_dropout(cfg),
        dropout_res=_positive_int(cfg, "dropout_res", 0),
        channels_per_head=per_head,
        clip_act=_float(cfg, "clip_act", zero_ok=True),  # 0 disables clipping
        fourier_bandwidth=_float(cfg, "fourier_bandwidth"),
        time_scale=float(cfg["time_scale"]),
        use_d=bool(cfg["use_d"]),
        num_classes=num_classes,
        dtype=_dtype(cfg),
        fourier_params=bool(cfg["fourier_params"]),
        **_time_map(cfg),
        **balances,
        **_memory_options(cfg),
    )


REGISTRY: dict[str, NetworkSpec] = {
    "mlp": NetworkSpec(
        defaults=dict(
            name="mlp", hidden=256, depth=4, emb_dim=128, time_scale=1.0, use_d=False,
            dropout=0.0, dtype="float32",
        ),
        make=_make_mlp,
    ),
    "unet": NetworkSpec(
        defaults=dict(
            name="unet", channels=64, channel_mult=(1, 2, 2), num_blocks=2, attn_resolutions=(),
            dropout=0.0, emb_dim=0, time_scale=1.0, use_d=False, num_groups=32, num_heads=1,
            dtype="float32", emb_norm="adaptive_scale", resample="conv", resample_filter=(1, 1),
            decoder_attn="all", norm_eps=1e-5, min_group_size=1, label_embed="table", time_map="identity",
            time_map_sigma_d=0.5, noise_dim=0, embedding_type="positional", fourier_scale=16.0,
            encoder_type="standard", attention="auto", remat="none",
        ),
        make=_make_unet,
    ),
    "adm": NetworkSpec(
        defaults=dict(
            name="adm", channels=192, channel_mult=(1, 2, 3, 4), num_blocks=3, attn_resolutions=(32, 16, 8),
            dropout=0.1, emb_dim=0, channels_per_head=64, time_scale=1.0, use_d=False, dtype="float32",
            time_map="identity", time_map_sigma_d=0.5,
        ),
        make=_make_adm,
    ),
    "dit": NetworkSpec(
        defaults=dict(
            name="dit", size=None, hidden=None, depth=None, num_heads=None, patch=2, mlp_ratio=4.0,
            dropout=0.0, time_scale=1.0, use_d=False, dtype="float32",
            # The reference DiT's time frequencies and learned-sigma head (official weights).
            time_endpoint=True, learn_sigma=False, attention="auto", remat="none", qk_norm=False,
        ),
        make=_make_dit,
    ),
    "edm2": NetworkSpec(
        defaults=dict(
            name="edm2", size=None, channels=None, channel_mult=(1, 2, 3, 4), num_blocks=3,
            attn_resolutions=(16, 8), dropout=0.0, dropout_res=0, channels_per_head=64,
            res_balance=0.3, attn_balance=0.3, clip_act=256.0, label_balance=0.5,
            concat_balance=0.5, fourier_bandwidth=1.0, time_scale=1.0, use_d=False,
            dtype="float32", fourier_params=False, time_map="identity", time_map_sigma_d=0.5,
            attention="auto", remat="none",
        ),
        make=_make_edm2,
    ),
    "imf_dit": NetworkSpec(
        defaults=imf_dit.DEFAULTS,
        make=lambda cfg, data_shape, num_classes: imf_dit.make(cfg, data_shape, num_classes, _DTYPES),
    ),
}


#: Networks named by paper configs that this version does not have yet.
PLANNED_NETWORKS: dict[str, str] = {}


def build(model_cfg: Any, *, data_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Build the network named by `model_cfg.name` for samples of shape `data_shape`.

    Args:
      model_cfg: ml_collections ConfigDict (or any mapping) holding `name` and that network's keys.
      data_shape: shape of one sample, e.g. (2,) for toy data or (H, W, C) for images.
      num_classes: 0 for unconditional; otherwise labels 0..num_classes-1 plus NULL = num_classes.
    Raises:
      ValueError: unknown name, unknown keys (typos), or an architecture incompatible with the data.
    """
    name = model_cfg.get("name", None)
    if name in PLANNED_NETWORKS:
        raise ValueError(
            f"network {name!r} ({PLANNED_NETWORKS[name]}) is not in this version of fewstep_jax; "
            f"available: {sorted(REGISTRY)}"
        )
    if name not in REGISTRY:
        raise ValueError(f"unknown model name {name!r}; known models: {sorted(REGISTRY)}")
    spec = REGISTRY[name]
    given = dict(model_cfg.items())
    unknown = sorted(set(given) - set(spec.defaults))
    if unknown:
        raise ValueError(
            f"unknown key(s) {unknown} in the config of model {name!r}; accepted keys: "
            f"{sorted(spec.defaults)}"
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
    cfg = {**spec.defaults, **given}
    return spec.make(cfg, tuple(int(s) for s in data_shape), num_classes)


def _identity(params: Any) -> Any:
    return params


def param_projection(net: nn.Module) -> Callable[[Any], Any]:
    """The network's post-update projection of its parameters (`project_params`, e.g. EDM2's
    forced weight normalization), or the identity."""
    return getattr(net, "project_params", None) or _identity


def count_params(params: Any) -> int:
    """Total number of scalar parameters in a pytree of arrays."""
    return int(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params)))
