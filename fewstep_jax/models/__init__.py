"""Network registry: `build(model_cfg, data_shape=..., num_classes=...) -> flax.linen.Module`.

Every network is called as
    net.apply({'params': params}, x, t, y=None, d=None, train=False, rngs={'dropout': key})
with x [B, *data_shape] float, t [B] float (raw time, embedded as positional(time_scale * t)),
y [B] int labels in 0..num_classes (num_classes = NULL; None = all NULL) or None, d [B] float or
None (only when use_d), and returns an array of x's shape (float32, or float64 for float64 x).

`build` validates the config eagerly in Python, before any tracing, so a typo or an impossible
architecture fails with a message instead of a shape error deep inside jit.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fewstep_jax.models.dit import DIT_SIZES, DiT
from fewstep_jax.models.mlp import MLP
from fewstep_jax.models.unet import EMB_NORMS, UNet, visited_resolutions

__all__ = ["REGISTRY", "build", "count_params", "DiT", "DIT_SIZES", "MLP", "UNet"]

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


def _make_unet(cfg: dict[str, Any], data_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if len(data_shape) != 3:
        raise ValueError(f"unet needs a 3-D data_shape (H, W, C), got {data_shape}")
    height, width, _ = data_shape
    channel_mult = tuple(int(m) for m in cfg["channel_mult"])
    if not channel_mult or min(channel_mult) < 1:
        raise ValueError(
            f"model.channel_mult must be a non-empty tuple of ints >= 1, got {channel_mult}"
        )
    levels = len(channel_mult)
    if height != width or height % 2 ** (levels - 1) != 0:
        raise ValueError(
            f"unet needs square images with H divisible by 2**(len(channel_mult)-1) = "
            f"{2 ** (levels - 1)}; got data_shape {data_shape} with channel_mult {channel_mult}"
        )
    visited = visited_resolutions(height, channel_mult)
    attn_resolutions = tuple(int(r) for r in cfg["attn_resolutions"])
    missing = sorted(set(attn_resolutions) - set(visited))
    if missing:
        raise ValueError(
            f"model.attn_resolutions {missing} are not visited by this UNet; at {height}x{width} "
            f"with channel_mult {channel_mult} the resolutions are {visited}"
        )
    channels = _positive_int(cfg, "channels")
    num_heads = _positive_int(cfg, "num_heads")
    # Attention runs at the attention levels and always in the middle (deepest width).
    attn_widths = {channels * channel_mult[-1]} | {
        channels * channel_mult[visited.index(r)] for r in attn_resolutions
    }
    bad = sorted(w for w in attn_widths if w % num_heads)
    if bad:
        raise ValueError(f"model.num_heads={num_heads} does not divide attention widths {bad}")
    emb_dim = int(cfg["emb_dim"] or 0)
    if emb_dim < 0:
        raise ValueError(f"model.emb_dim must be >= 0 (0 -> 4 * channels), got {emb_dim}")
    emb_norm = cfg["emb_norm"]
    if emb_norm not in EMB_NORMS:
        raise ValueError(f"model.emb_norm must be one of {list(EMB_NORMS)}, got {emb_norm!r}")
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
            dtype="float32", emb_norm="adaptive_scale",
        ),
        make=_make_unet,
    ),
    "dit": NetworkSpec(
        defaults=dict(
            name="dit", size=None, hidden=None, depth=None, num_heads=None, patch=2, mlp_ratio=4.0,
            dropout=0.0, time_scale=1.0, use_d=False, dtype="float32",
        ),
        make=_make_dit,
    ),
}


#: Networks named by paper configs that this version does not have yet.
PLANNED_NETWORKS = {"edm2": "EDM2 magnitude-preserving UNet, Karras et al. 2024"}


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


def count_params(params: Any) -> int:
    """Total number of scalar parameters in a pytree of arrays."""
    return int(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params)))
