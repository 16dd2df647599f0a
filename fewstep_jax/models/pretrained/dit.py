"""Import the official DiT and SiT PyTorch weights into the suite's DiT (models/dit.py).

Families (`family` argument):
  'dit'       facebookresearch/DiT (Peebles & Xie 2023): DiT-XL-2-256x256.pt, DiT-XL-2-512x512.pt.
  'sit'       willisma/SiT (Ma et al. 2024): SiT-XL-2-256.pt.
  'sit_repa'  sihyun-yu/REPA (Yu et al. 2025): SiT-XL/2 + REPA (last.pt, or a REPA train.py
              checkpoint); the network Decoupled MeanFlow starts from.
Get a file with the download.py of its official repository; all three are ImageNet class-
conditional latent models (SD VAE, 8x downsampling, 4 channels, latents scaled by 0.18215).

The three share one network (DiT models.py; SiT and REPA copy it): patch embedding, fixed 2-D
sin-cos positional embedding, t embedded by GLIDE's `timestep_embedding` (256 frequencies
10000 ** (-k / 128), [cos | sin]) and an MLP, a label table with the null class at index
num_classes, adaLN-Zero blocks (shift, scale, gate per branch; timm Attention with a fused qkv,
timm Mlp with tanh-GELU), final adaLN + Linear, unpatchify (p, q, c) -> NCHW. The suite's DiT is
the same network up to two options the import switches on: time_endpoint=False (the reference
frequencies) and learn_sigma=True where the file has the learned-sigma half of the output layer
(the DiT and SiT releases; REPA has none). The parameter names, pos_embed and REPA's projectors:

  x_embedder.proj.{weight, bias}            patch_embed (kernel [D, C, p, p] -> [p, p, C, D])
  t_embedder.mlp.{0, 2}.{weight, bias}      cond/time/dense_{0, 1} (Linear [out, in] -> [in, out])
  y_embedder.embedding_table.weight         cond/label/embedding ([num_classes + 1, D])
  blocks.i.attn.{qkv, proj}.*               block_i/{qkv, proj}
  blocks.i.mlp.{fc1, fc2}.*                 block_i/{fc1, fc2}
  blocks.i.adaLN_modulation.1.*             block_i/adaLN_modulation
  final_layer.adaLN_modulation.1.*          final_adaLN_modulation
  final_layer.linear.*                      final_linear
  pos_embed [1, L, D]                       checked against the sin-cos table, then dropped (the
                                            suite computes it; it gives the resolution)
  projectors.*                              REPA's representation-alignment MLPs (training only),
                                            dropped

The number of attention heads is not in the weights: DiT's Table 1 sizes (S / B / L / XL) give it,
other widths need `num_heads`.

What the output means (`describe`, `denoiser`, `velocity`):
  dit       eps-prediction of DDPM (Ho et al. 2020) with t the discrete step n in [0, 1000) of the
            linear schedule beta_n = 1e-4 .. 0.02: x_n = sqrt(abar_n) x0 + sqrt(1 - abar_n) eps; the
            learned-sigma channels v in [-1, 1] give log var = (v + 1) / 2 log beta_n +
            (1 - v) / 2 log beta~_n (Nichol & Dhariwal 2021 eq. 15; DiT diffusion/gaussian_diffusion.py
            p_mean_variance). No suite method uses this parameterization.
  sit       velocity of the linear interpolant x_t = t x0 + (1 - t) z, t = 0 noise, t = 1 data,
            v = x0 - z (SiT transport/path.py ICPlan): exactly methods/flow.py's convention.
  sit_repa  velocity of x_t = (1 - t) x0 + t z, t = 0 data, t = 1 noise, v = z - x0 (REPA loss.py
            SILoss, path 'linear'): the opposite direction, methods/meanflow.py's convention.
SiT's sigma channels are untrained (its forward drops them). The official DiT / SiT samplers
guide only the first 3 of the 4 latent channels (forward_with_cfg, "for exact reproducibility");
the suite's guidance acts on all channels.
`to_convention` rewrites a SiT / REPA import for the other time direction exactly, inside the
weights (t -> 1 - t in the time embedding's first layer, v -> -v in the output layer), so that a
suite method can start from it without a wrapper.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fewstep_jax import models
from fewstep_jax.metrics import torch_pickle
from fewstep_jax.models import dit as dit_net

Array = jax.Array

#: The suite's flow conventions a SiT network can be expressed in (see the module docstring).
CONVENTIONS = {
    "flow": "methods/flow.py: x_t = (1 - t) z + t x0, t = 0 noise, t = 1 data, v = x0 - z",
    "meanflow": "methods/meanflow.py: z_t = (1 - t) x0 + t e, t = 0 data, t = 1 noise, v = e - x0",
}

DDPM_STEPS = 1000  # DiT create_diffusion: 1000 steps, betas linear from 1e-4 to 0.02


@dataclasses.dataclass(frozen=True)
class Family:
    """One source of weights: where it comes from and what its network output means."""

    title: str
    reference: str
    prediction: str
    convention: str  # 'ddpm', or a key of CONVENTIONS
    time: str
    projectors: bool = False  # REPA's projector MLPs are in the state dict (dropped)


FAMILIES: dict[str, Family] = {
    "dit": Family(
        "DiT",
        "facebookresearch/DiT models.py",
        "eps (DDPM) + learned-sigma channels",
        "ddpm",
        "t = DDPM step n in [0, 1000), linear betas 1e-4 .. 0.02; n = 0 nearly clean",
    ),
    "sit": Family(
        "SiT",
        "willisma/SiT models.py",
        "velocity v = x0 - z",
        "flow",
        "t in [0, 1]: x_t = t x0 + (1 - t) z, t = 0 noise, t = 1 data",
    ),
    "sit_repa": Family(
        "SiT + REPA",
        "sihyun-yu/REPA models/sit.py",
        "velocity v = z - x0",
        "meanflow",
        "t in [0, 1]: x_t = (1 - t) x0 + t z, t = 0 data, t = 1 noise",
        projectors=True,
    ),
}


class WeightsError(ValueError):
    """The file or state dict is not one of the supported DiT / SiT checkpoints."""


def _family(family: str) -> Family:
    if family not in FAMILIES:
        raise WeightsError(f"unknown DiT / SiT family {family!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[family]


# ---------------------------------------------------------------------------------------------
# Reading the file


def select_state_dict(obj: Any, source: str = "the checkpoint") -> tuple[dict[str, np.ndarray], str]:
    """The weights of a loaded `.pt` object and which entry they came from: a training checkpoint's
    'ema' entry where present (DiT / SiT / REPA train.py save {'model', 'ema', 'opt', 'args', ...}),
    else its 'model' or 'state_dict' entry, else the object itself (the released files are plain
    state dicts). A 'module.' prefix on every name (DistributedDataParallel) is removed."""
    if not isinstance(obj, dict):
        raise WeightsError(f"{source} holds a {type(obj).__name__}, not a state dict")
    for key, note in (
        ("ema", "'ema' entry (EMA weights)"),
        ("model", "'model' entry (the file has no 'ema' entry)"),
        ("state_dict", "'state_dict' entry"),
    ):
        if isinstance(obj.get(key), dict):
            obj, which = obj[key], note
            break
    else:
        which = "plain state dict"
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, np.ndarray)}
    if not tensors:
        raise WeightsError(f"{source}: the {which} holds no tensors (entries: {_first(sorted(map(str, obj)))})")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors, which


def load(path: str | os.PathLike[str], family: str, *, num_heads: int | None = None) -> tuple[dict, dict, dict]:
    """Read an official `.pt` file (through the allow-list reader metrics/torch_pickle.py) and
    import it: see `import_state_dict`. The summary also says which entry was used ('weights'),
    and a training checkpoint's step count ('train_steps') where it has one."""
    spec = _family(family)
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{spec.title} weights not found at {path}: get the file with the download.py of "
            f"{spec.reference.split()[0]}"
        )
    try:
        obj = torch_pickle.load_object(path)
    except (torch_pickle.TorchFileError, OSError, EOFError) as e:
        with open(path, "rb") as f:
            zip_header = f.read(4) == b"PK\x03\x04"
        why = "a truncated or damaged PyTorch zip file" if zip_header else "truncated or not a .pt file?"
        reason = " ".join(str(e).split())  # one line
        raise WeightsError(f"cannot read {path} as a PyTorch checkpoint ({why}): {reason}") from None
    state_dict, which = select_state_dict(obj, path)
    config, params, summary = import_state_dict(state_dict, family, num_heads=num_heads, source=path)
    summary["file"] = path
    summary["weights"] = which
    if isinstance(obj.get("steps"), int):
        summary["train_steps"] = obj["steps"]
    return config, params, summary


# ---------------------------------------------------------------------------------------------
# The state dict -> the suite's DiT


def _first(names: list[str], count: int = 4) -> str:
    shown = ", ".join(names[:count])
    return f"{shown}, ... ({len(names)} in all)" if len(names) > count else shown


def _linear(prefix: str, target: tuple[str, ...]) -> list[tuple[str, tuple[str, ...], str]]:
    return [(f"{prefix}.weight", target + ("kernel",), "linear"), (f"{prefix}.bias", target + ("bias",), "bias")]


def key_map(depth: int) -> list[tuple[str, tuple[str, ...], str]]:
    """(reference name, suite parameter path, layout) for every imported tensor of a network with
    `depth` blocks; layouts: 'linear' (transposed), 'conv' ([D, C, p, p] -> [p, p, C, D]), 'bias'
    and 'table' (as is)."""
    entries = [
        ("x_embedder.proj.weight", ("patch_embed", "kernel"), "conv"),
        ("x_embedder.proj.bias", ("patch_embed", "bias"), "bias"),
        *_linear("t_embedder.mlp.0", ("cond", "time", "dense_0")),
        *_linear("t_embedder.mlp.2", ("cond", "time", "dense_1")),
        ("y_embedder.embedding_table.weight", ("cond", "label", "embedding"), "table"),
    ]
    for i in range(depth):
        for name, target in (
            ("attn.qkv", "qkv"),
            ("attn.proj", "proj"),
            ("mlp.fc1", "fc1"),
            ("mlp.fc2", "fc2"),
            ("adaLN_modulation.1", "adaLN_modulation"),
        ):
            entries += _linear(f"blocks.{i}.{name}", (f"block_{i}", target))
    entries += _linear("final_layer.adaLN_modulation.1", ("final_adaLN_modulation",))
    entries += _linear("final_layer.linear", ("final_linear",))
    return entries


_TO_SUITE = {
    "linear": lambda a: a.T,
    "conv": lambda a: a.transpose(2, 3, 1, 0),
    "bias": lambda a: a,
    "table": lambda a: a,
}
_REFERENCE_SHAPE = {
    "linear": lambda s: s[::-1],
    "conv": lambda s: (s[3], s[2], s[0], s[1]),
    "bias": lambda s: s,
    "table": lambda s: s,
}
_PROJECTOR = re.compile(r"projectors\.\d+\.\d+\.(weight|bias)$")
_BLOCK = re.compile(r"blocks\.(\d+)\.")


def _depth(names: list[str]) -> int:
    indices = [int(m.group(1)) for m in map(_BLOCK.match, names) if m]
    return max(indices) + 1 if indices else 0


def _heads(hidden: int, depth: int, num_heads: int | None, source: str) -> tuple[int, str | None]:
    """Attention heads (given, or from DiT Table 1 by width and depth) and the size name."""
    size = next((s for s, (h, d, _) in dit_net.DIT_SIZES.items() if (h, d) == (hidden, depth)), None)
    if num_heads is None:
        if size is None:
            raise WeightsError(
                f"{source}: hidden={hidden}, depth={depth} is none of DiT's sizes "
                f"{ {s: v[:2] for s, v in dit_net.DIT_SIZES.items()} }; pass num_heads (it is not in the weights)"
            )
        num_heads = dit_net.DIT_SIZES[size][2]
    if size is not None and dit_net.DIT_SIZES[size][2] != num_heads:
        size = None
    return num_heads, size


def _shape_of(arrays: Mapping[str, np.ndarray], name: str, ndim: int, source: str) -> tuple[int, ...]:
    shape = arrays[name].shape
    if len(shape) != ndim:
        raise WeightsError(f"{source}: {name} has shape {shape}, expected {ndim} dimensions")
    return shape


def import_state_dict(
    state_dict: Mapping[str, np.ndarray],
    family: str,
    *,
    num_heads: int | None = None,
    source: str = "the state dict",
) -> tuple[dict, dict, dict]:
    """An official DiT / SiT / REPA state dict ({name: array}) -> (model config, params, summary).

    config: the `model` section for models.build (name 'dit', explicit sizes, time_endpoint=False,
      learn_sigma as in the file); build it with data_shape=summary['data_shape'] and
      num_classes=summary['num_classes'].
    params: the network's flax params (float32 numpy arrays).
    summary: family, architecture (e.g. 'DiT-XL/2'), data_shape, resolution (image side through
      the 8x VAE), num_classes, conditional, learn_sigma, parameter_count (the suite's),
      reference_parameter_count (the reference module's, incl. its frozen pos_embed and REPA's
      projectors), dropped (names not imported, with why), prediction / convention / time
      (`describe`).
    Raises WeightsError (one line) for missing, unexpected or mis-shaped tensors, a positional
    embedding that is not the fixed sin-cos table, or non-finite values.
    """
    spec = _family(family)
    arrays = {str(k): np.asarray(v) for k, v in state_dict.items()}
    names = sorted(arrays)
    depth = _depth(names)
    expected = {name for name, _, _ in key_map(depth)} | {"pos_embed"}
    projectors = sorted(n for n in names if _PROJECTOR.match(n))
    missing = sorted(expected - set(arrays))
    unexpected = sorted(set(arrays) - expected - (set(projectors) if spec.projectors else set()))
    problems = []
    if depth == 0:
        problems.append("no transformer blocks (blocks.<i>.*)")
    if missing:
        problems.append(f"missing {len(missing)}: {_first(missing)}")
    if unexpected:
        hint = ""
        if projectors and not spec.projectors:
            hint = " (REPA's projectors: use family 'sit_repa')"
        elif any(".q_norm." in n or ".k_norm." in n for n in unexpected):
            hint = " (qk-norm attention is not supported)"
        problems.append(f"unexpected {len(unexpected)}: {_first(unexpected)}{hint}")
    if spec.projectors and not projectors and not missing:
        problems.append("no projectors.* (REPA's alignment MLPs): not a REPA checkpoint, use family 'sit' or 'dit'")
    if problems:
        raise WeightsError(f"{source} is not a {spec.title} state dict: " + "; ".join(problems))

    hidden, channels, patch, patch_w = _shape_of(arrays, "x_embedder.proj.weight", 4, source)
    if patch != patch_w:
        raise WeightsError(f"{source}: x_embedder.proj.weight has non-square patches {patch}x{patch_w}")
    pos = arrays["pos_embed"]
    tokens = pos.shape[1] if pos.ndim == 3 else 0
    grid = math.isqrt(tokens)
    if pos.ndim != 3 or pos.shape[0] != 1 or pos.shape[2] != hidden or grid * grid != tokens or not tokens:
        raise WeightsError(f"{source}: pos_embed has shape {pos.shape}, expected (1, grid * grid, {hidden})")
    rows = _shape_of(arrays, "y_embedder.embedding_table.weight", 2, source)[0]
    if rows < 2:
        raise WeightsError(f"{source}: the label table has {rows} row(s); expected the classes plus the null class")
    out_features = _shape_of(arrays, "final_layer.linear.weight", 2, source)[0]
    if out_features not in (patch * patch * channels, 2 * patch * patch * channels):
        raise WeightsError(
            f"{source}: final_layer.linear.weight has {out_features} outputs, expected "
            f"{patch * patch * channels} or {2 * patch * patch * channels} (learned sigma) for patch {patch}, "
            f"{channels} channels"
        )
    learn_sigma = out_features == 2 * patch * patch * channels
    mlp_ratio = _shape_of(arrays, "blocks.0.mlp.fc1.weight", 2, source)[0] / hidden
    num_heads, size = _heads(hidden, depth, num_heads, source)

    config = dict(
        name="dit",
        size=None,
        hidden=hidden,
        depth=depth,
        num_heads=num_heads,
        patch=patch,
        mlp_ratio=mlp_ratio,
        dropout=0.0,
        time_scale=1.0,
        use_d=False,
        dtype="float32",
        time_endpoint=False,
        learn_sigma=learn_sigma,
    )
    data_shape = (grid * patch, grid * patch, channels)
    num_classes = rows - 1
    try:
        net = models.build(config, data_shape=data_shape, num_classes=num_classes)
    except ValueError as e:
        raise WeightsError(f"{source}: the file's architecture is not a valid suite DiT: {e}") from None
    shapes = jax.eval_shape(
        lambda: net.init(
            jax.random.PRNGKey(0), jnp.zeros((1, *data_shape)), jnp.zeros((1,)), jnp.zeros((1,), jnp.int32)
        )
    )["params"]

    params: dict = {}
    misshaped = []
    for name, path, layout in key_map(depth):
        target = shapes
        for part in path:
            target = target[part]
        want = _REFERENCE_SHAPE[layout](tuple(target.shape))
        if arrays[name].shape != want:
            misshaped.append(f"{name} {arrays[name].shape} (expected {want})")
            continue
        node = params
        for part in path[:-1]:
            node = node.setdefault(part, {})
        # A view where the file is float32 already: nothing is copied until the params are used.
        node[path[-1]] = np.asarray(_TO_SUITE[layout](arrays[name]), dtype=np.float32)
    if misshaped:
        raise WeightsError(
            f"{source}: mis-shaped {len(misshaped)} for {_architecture(spec, size, config)}: {_first(misshaped)}"
        )
    if jax.tree.structure(params) != jax.tree.structure(shapes):
        raise WeightsError(f"{source}: internal error, the imported tree differs from the suite DiT's")
    bad = [name for name in names if arrays[name].dtype.kind == "f" and not np.all(np.isfinite(arrays[name]))]
    if bad:
        raise WeightsError(f"{source}: non-finite values in {len(bad)} tensor(s): {_first(bad)}")
    table = dit_net.sincos_2d_embedding(grid, grid, hidden)
    diff = float(np.max(np.abs(pos[0].astype(np.float64) - table)))
    if diff > 1e-5:
        raise WeightsError(
            f"{source}: pos_embed is not the fixed 2-D sin-cos table of a {grid}x{grid} grid (max |diff| "
            f"{diff:.3g}); a learned positional embedding is not supported"
        )

    dropped = ["pos_embed (the fixed sin-cos table, recomputed by the suite)"]
    if projectors:
        dropped.append(f"{len(projectors)} projectors.* tensors (REPA's alignment MLPs, used only in training)")
    summary = dict(
        family=family,
        architecture=_architecture(spec, size, config),
        reference=spec.reference,
        data_shape=data_shape,
        resolution=8 * data_shape[0],
        num_classes=num_classes,
        conditional=True,
        learn_sigma=learn_sigma,
        parameter_count=models.count_params(params),
        reference_parameter_count=int(sum(a.size for a in arrays.values())),
        dropped=dropped,
        dropped_keys=["pos_embed", *projectors],
        **describe(family),
    )
    return config, params, summary


def _architecture(spec: Family, size: str | None, config: Mapping[str, Any]) -> str:
    base = spec.title.split()[0]
    extra = spec.title[len(base) :]
    body = size or f"(hidden={config['hidden']}, depth={config['depth']}, heads={config['num_heads']})"
    return f"{base}-{body}/{config['patch']}{extra}"


# ---------------------------------------------------------------------------------------------
# What the output means


def describe(family: str) -> dict[str, str]:
    """The network output's meaning: prediction, convention ('ddpm' or a CONVENTIONS key, i.e.
    the suite method whose time direction and velocity sign it has), time, and the suite
    parameterization it can be used with unchanged ('' for none)."""
    spec = _family(family)
    return dict(
        prediction=spec.prediction,
        convention=spec.convention,
        time=spec.time,
        parameterization="flow" if spec.convention == "flow" else "",
    )


def ddpm_betas(steps: int = DDPM_STEPS) -> np.ndarray:
    """DiT's linear schedule (diffusion/gaussian_diffusion.py get_named_beta_schedule('linear')):
    betas from 1e-4 to 0.02 scaled by 1000 / steps, float64."""
    scale = 1000.0 / steps
    return np.linspace(scale * 1e-4, scale * 0.02, steps, dtype=np.float64)


@functools.lru_cache(maxsize=4)
def _ddpm_tables(steps: int = DDPM_STEPS) -> dict[str, np.ndarray]:
    betas = ddpm_betas(steps)
    alphas_cumprod = np.cumprod(1.0 - betas)
    previous = np.append(1.0, alphas_cumprod[:-1])
    posterior = betas * (1.0 - previous) / (1.0 - alphas_cumprod)  # beta~_n (DDPM eq. 7)
    return dict(
        alphas_cumprod=alphas_cumprod,
        log_beta=np.log(betas),
        # beta~_0 = 0: its log is clipped to beta~_1, as the reference does.
        log_posterior=np.log(np.append(posterior[1], posterior[1:])),
    )


def dit_outputs(output: Array, x: Array, n: Array) -> dict[str, Array]:
    """DiT's full output [B, H, W, 2C] (with_sigma=True) at x_n [B, H, W, C], steps n [B] (ints)
    -> eps, x0 = (x_n - sqrt(1 - abar_n) eps) / sqrt(abar_n), and the learned log-variance
    (v + 1) / 2 log beta_n + (1 - v) / 2 log beta~_n of p(x_{n-1} | x_n) (Nichol & Dhariwal 2021
    eq. 15; DiT p_mean_variance with clip_denoised=False)."""
    channels = x.shape[-1]
    if output.shape[-1] != 2 * channels:
        raise ValueError(f"dit_outputs needs the learned-sigma output (2 x {channels} channels), got {output.shape}")
    dtype = jnp.promote_types(output.dtype, jnp.float32)
    n = jnp.round(jnp.asarray(n)).astype(jnp.int32)

    def at(name: str) -> Array:
        return jnp.asarray(_ddpm_tables()[name], dtype)[n].reshape(-1, 1, 1, 1)

    eps, v = output[..., :channels].astype(dtype), output[..., channels:].astype(dtype)
    abar = at("alphas_cumprod")
    x0 = (x.astype(dtype) - jnp.sqrt(1.0 - abar) * eps) / jnp.sqrt(abar)
    frac = (v + 1.0) / 2.0
    return dict(eps=eps, x0=x0, log_variance=frac * at("log_beta") + (1.0 - frac) * at("log_posterior"))


def _flow_x0(convention: str, x: Array, t: Array, v: Array) -> Array:
    t = t.reshape(-1, *([1] * (x.ndim - 1))).astype(v.dtype)
    # flow: x_t = (1 - t) z + t x0, v = x0 - z  =>  x0 = x_t + (1 - t) v
    # meanflow: x_t = (1 - t) x0 + t z, v = z - x0  =>  x0 = x_t - t v
    return x + (1.0 - t) * v if convention == "flow" else x - t * v


def denoiser(net: Any, params: Any, family: str) -> Callable[..., Array]:
    """D(x, t, y) -> estimate of the clean x0 in the family's own time (DiT: step n; SiT / REPA:
    their t), from the imported network `net` (models.build of the returned config)."""
    spec = _family(family)

    def apply(x: Array, t: Array, y: Array | None = None) -> Array:
        if spec.convention == "ddpm":
            return dit_outputs(net.apply({"params": params}, x, t, y, with_sigma=True), x, t)["x0"]
        return _flow_x0(spec.convention, x, t, net.apply({"params": params}, x, t, y))

    return apply


def _check_flow(family: str, convention: str) -> Family:
    spec = _family(family)
    if spec.convention not in CONVENTIONS:
        raise ValueError(f"{spec.title} predicts {spec.prediction}, not a velocity; see dit_outputs / denoiser")
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; known: {', '.join(CONVENTIONS)}")
    return spec


def velocity(net: Any, params: Any, family: str, convention: str) -> Callable[..., Array]:
    """v(x, t, y) of a SiT / REPA network in a suite convention (CONVENTIONS): the network itself
    in its own convention, else -v_net(x, 1 - t) (the two conventions swap the roles of t and
    1 - t and the sign of the velocity)."""
    spec = _check_flow(family, convention)
    same = spec.convention == convention

    def apply(x: Array, t: Array, y: Array | None = None) -> Array:
        t = jnp.asarray(t)
        out = net.apply({"params": params}, x, t if same else 1.0 - t, y)
        return out if same else -out

    return apply


def to_convention(config: Mapping[str, Any], params: Any, family: str, convention: str) -> dict:
    """Params of the imported SiT / REPA network rewritten so that the unchanged network computes
    its velocity in `convention`: v'(x, t) = -v(x, 1 - t) when the conventions differ (else the
    params are returned as they are).

    Time flip, exact: the first time layer sees e(s t) = [cos(s t w_k), sin(s t w_k)] (s =
    time_scale); with a_k = s w_k, cos(a_k - s t w_k) = cos a_k cos + sin a_k sin and
    sin(a_k - s t w_k) = sin a_k cos - cos a_k sin, a fixed linear map of e(s t) folded into
    cond/time/dense_0's kernel. Sign: the prediction channels of final_linear are negated (the
    learned-sigma channels, unused by SiT, are left alone). Computed in float64, returned in the
    params' dtype."""
    spec = _check_flow(family, convention)
    if spec.convention == convention:
        return params
    if config.get("use_d"):
        raise ValueError("to_convention supports networks without the second scalar d")
    half = dit_net.FREQ_DIM // 2
    exponents = np.arange(half) / ((half - 1) if config.get("time_endpoint", True) else half)
    angles = float(config.get("time_scale", 1.0)) * np.exp(-math.log(10000.0) * exponents)
    cos, sin = np.cos(angles)[:, None], np.sin(angles)[:, None]

    kernel = np.asarray(params["cond"]["time"]["dense_0"]["kernel"])
    k64 = kernel.astype(np.float64)
    k_cos, k_sin = k64[:half], k64[half:]
    flipped = np.concatenate([cos * k_cos + sin * k_sin, sin * k_cos - cos * k_sin]).astype(kernel.dtype)

    patch_kernel = np.asarray(params["patch_embed"]["kernel"])
    channels = patch_kernel.shape[2]
    out_channels = 2 * channels if config.get("learn_sigma") else channels
    sign = np.ones(out_channels)
    sign[:channels] = -1.0
    final = params["final_linear"]
    w, b = np.asarray(final["kernel"]), np.asarray(final["bias"])
    w_new = (w.reshape(w.shape[0], -1, out_channels) * sign).reshape(w.shape).astype(w.dtype)
    b_new = (b.reshape(-1, out_channels) * sign).reshape(b.shape).astype(b.dtype)

    new = jax.tree.map(lambda a: a, params)  # a shallow copy of the tree
    new["cond"]["time"]["dense_0"]["kernel"] = flipped
    new["final_linear"] = dict(final, kernel=w_new, bias=b_new)
    return new


# ---------------------------------------------------------------------------------------------
# The importer registry (models/pretrained/__init__.py): `read` and `detect` for torch_save files

#: The latent preset of DiT's, SiT's and REPA's training data (data/latents.py): SD VAE latents of
#: [-1, 1] images scaled by 0.18215 (DiT / SiT train.py; REPA train.py latents_scale 0.18215,
#: latents_bias 0, its preprocessing/encoders.py feeding x / 127.5 - 1 to the VAE).
LATENT_PRESET = "sd"


def detect(path: str) -> str | None:
    """'sit' for a SiT or REPA SiT file, 'dit' for a DiT file (told apart by the file name, as the
    weights are the same architecture), None for a file that is not a DiT / SiT state dict."""
    from fewstep_jax.models.pretrained import PretrainedError

    try:
        obj = torch_pickle.load_object(path)
        state_dict, _ = select_state_dict(obj, path)
    except (torch_pickle.TorchFileError, WeightsError, OSError, EOFError, ValueError):
        return None
    if not any(k.startswith("x_embedder.") for k in state_dict):
        return None
    name = os.path.basename(path).lower()
    if any(k.startswith("projectors.") for k in state_dict) or "sit" in name or "repa" in name:
        return "sit"
    if "dit" in name:
        return "dit"
    raise PretrainedError(f"{path}: a DiT-architecture state dict; pass --from=dit or --from=sit (SiT / REPA)")


def read(path: str, family: str | None):
    """A DiT / SiT `.pt` -> pretrained.Imported. SiT (and REPA's SiT, converted exactly to the flow
    method's time convention by to_convention) are flow-matching velocity fields: the suite's
    `flow` method samples and fine-tunes them. DiT predicts DDPM noise, which no method of the
    suite trains, so it is refused here (its network loads with `load(path, 'dit')`)."""
    from fewstep_jax import recipes
    from fewstep_jax.models.pretrained import Imported, PretrainedError, latent_dataset

    family = family or detect(path)
    if family == "dit":
        raise PretrainedError(
            f"{path}: DiT predicts DDPM noise (eps with learned variances), which no method of the suite "
            "trains or samples, so it cannot be a train.init_from or a teacher; start from SiT-XL-2-256.pt or "
            "REPA's SiT-XL/2 last.pt instead (the same architecture as a flow-matching velocity field: "
            "docs/PRETRAINED.md; --from=sit in import_weights). The network itself loads with "
            "fewstep_jax.models.pretrained.dit.load(path, 'dit')"
        )
    obj = torch_pickle.load_object(path)
    state_dict, _ = select_state_dict(obj, path)
    which = "sit_repa" if any(k.startswith("projectors.") for k in state_dict) else "sit"
    try:
        config, params, summary = load(path, which)
    except WeightsError as e:
        raise PretrainedError(str(e)) from None
    params = to_convention(config, params, which, "flow")
    shape, classes = tuple(summary["data_shape"]), int(summary["num_classes"])
    summary["converted"] = (
        "REPA's time convention (t = 0 data) turned into the flow method's (t = 0 noise) inside the weights"
        if which == "sit_repa"
        else "none: SiT already uses the flow method's convention"
    )
    return Imported(
        family="sit",
        source=os.path.abspath(path),
        model=dict(config),
        data_shape=shape,
        num_classes=classes,
        data_name=latent_dataset(shape, classes, LATENT_PRESET),
        method=dict(recipes.flow()),
        sampling={"sampler": "euler", "num_steps": 50},
        params=params,
        summary=summary,
        latent_preset=LATENT_PRESET,
    )
