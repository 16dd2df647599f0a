"""Configuration defaults, the variant grammar, the config loader and validation.

Every file in `configs/` starts from a dataset preset of `fewstep_jax.recipes`, which starts
from `base_config()` here, and changes the sections it cares about; no config file loads
another. A config can be loaded from any working directory (the defaults and recipes live in
the installed package, not next to the config files). Sections:

  data      which embedded / real dataset (see fewstep_jax.data)
  model     network name and its hyperparameters (see fewstep_jax.models)
  method    training objective and sampler defaults (see fewstep_jax.methods)
  optim     optimizer, schedule, clipping
  train     steps, batch, EMAs, logging / checkpoint / sample / eval cadence
  eval      NFEs, sampler, number of samples, guidance
  sharding  device mesh layout

`validate(config, num_devices)` checks the config's own values and returns the typed views
of its sections; the dataset, network and method sections are checked by their builders
(experiment.setup), so that bad input fails before any JAX compilation. This module imports
nothing from the package: the methods import `typed_view` from it.
"""

from __future__ import annotations

import dataclasses
import math
import types
from typing import Any, Iterator, Mapping

import ml_collections

OPTIMIZERS = ("adam", "adamw", "radam")
SCHEDULES = ("constant", "cosine", "inverse_sqrt", "linear")
SAMPLERS = ("euler", "heun")


def base_config() -> ml_collections.ConfigDict:
    """The defaults every experiment config starts from."""
    c = ml_collections.ConfigDict()
    c.seed = 0

    # Filled by a dataset preset and a method section of fewstep_jax.recipes.
    c.data = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict()
    c.method = ml_collections.ConfigDict()

    c.optim = ml_collections.ConfigDict(
        dict(
            name="adam",
            lr=1e-3,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            weight_decay=0.0,
            schedule="constant",
            warmup_steps=0,
            # inverse_sqrt: lr * 1 / sqrt(max(step / decay_steps, 1)) (EDM2 style);
            # cosine / linear: decay to `end_factor * lr` over the run.
            decay_steps=0,
            end_factor=0.0,
            grad_clip=0.0,  # global-norm clipping; 0 disables
        )
    )

    c.train = ml_collections.ConfigDict(
        dict(
            num_steps=2000,
            batch_size=128,
            # EMAs of the parameters: per-step decays, half-lives in images
            # (decay = 0.5 ** (batch_size / half_life)), and EDM2 power-function EMAs by
            # their relative standard deviation sigma_rel (EDM2 sec. 3.1), in that order.
            ema_decays=(0.999,),
            ema_halflives=(),
            ema_sigma_rels=(),
            log_every=50,
            checkpoint_every=500,
            keep_checkpoints=3,
            sample_every=1000,  # sample grids (PNG) at every eval NFE; 0 disables
            eval_every=1000,  # metrics at every eval NFE; 0 disables
            # Start from the EMA network weights of a trained workdir (fine-tuning,
            # e.g. sCM / ECT from a diffusion model). A checkpoint in --workdir wins.
            init_from="",
            # A step whose loss, gradients or updated parameters are not finite: 'stop' keeps the
            # last good state and stops with a message; 'replace_grads' does what the EDM / ECT
            # training loops do (non-finite gradient entries -> 0, +-1e5) and goes on, logging a
            # warning; a non-finite parameter update still stops.
            on_nonfinite="stop",
        )
    )

    c.eval = ml_collections.ConfigDict(
        dict(
            nfes=(1, 2, 4, 8),  # sampling steps to evaluate (for Heun: steps, NFE 2n-1)
            sampler="euler",
            num_samples=0,  # 0: the evaluator's recommended count
            grid_size=100,  # samples in a grid PNG
            # Classifier-free guidance scale (1 = none), at the step counts where the method
            # guides at sampling time (Method.sampling_guidance; shortcut: num_steps_max only) and
            # 1 at the others; each result row records the scale it used.
            guidance=1.0,
            use_ema=True,  # sample with the first EMA
            batch_size=500,
            checkpoint_step=0,  # --mode=sample / eval: the checkpoint to use (0 = the latest)
            # FID / IS on image datasets (metrics/fid.py); ignored for toy2d and digits.
            fid_weights="",  # Inception weights: a path, a URL (downloaded once), or '' (the cached file)
            fid_stats="",  # reference statistics .npz; '' = computed once from the train split, cached
            fid_resize="tf1",  # resize to 299: 'tf1' (TF FID, EDM) or 'pytorch' (pytorch-fid)
            fid_batch_size=250,  # images per Inception batch (rounded up to the device count)
            # Sample metrics: () = the dataset's default ('fid' on images, 'fid' and 'fd_dinov2' on latents).
            metrics=(),
            # FD-DINOv2 (EDM2's protocol, metrics/dinov2.py): ViT-L/14 weights (.pth or HF
            # .safetensors) and reference statistics ('' = computed once from the dataset, cached).
            fd_dinov2_weights="",
            fd_dinov2_stats="",
            # Latent datasets: the VAE that decodes samples for grids and metrics (a diffusers
            # diffusion_pytorch_model.safetensors or an LDM checkpoint), and which decoder it is.
            vae_weights="",
            vae_decoder="ft-mse",  # 'ft-mse' or 'ft-ema': the decoder the paper's FID used
        )
    )

    c.sharding = ml_collections.ConfigDict(
        dict(
            strategy="replicated",  # 'replicated' (data parallel) or 'fsdp' (sharded state, sharding.py)
            fsdp=1,  # size of the mesh's 'fsdp' axis; the 'data' axis gets the remaining devices
            min_shard_size=2**14,  # fsdp: leaves with fewer elements stay replicated
        )
    )
    return c


@dataclasses.dataclass(frozen=True)
class Variant:
    """One parsed `--config=configs/x.py:NAME`."""

    name: str  # '' (the config as its docstring describes it) or one of the config's VARIANTS
    size: str  # the network size it trains: the named size, else the config's first; '' without sizes

    @property
    def smoke(self) -> bool:
        return self.name == "smoke"


@dataclasses.dataclass(frozen=True)
class Variants:
    """The variants a config file accepts, declared once at its top: the one variant grammar.

    `--config=configs/x.py:NAME` names at most one variant; spaces around it are ignored. The
    names are, in this order: network `sizes` (the first is the default, e.g. `:s` ... `:xl`),
    recipe `options` (e.g. `:cond`, `:uncond`, `:phased`, `:scratch`), and `:smoke`, which every
    config has: smoke() applied to the finished config (plus the config's own smoke lines).
    """

    sizes: tuple[str, ...] = ()
    options: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return (*self.sizes, *self.options, "smoke")

    def parse(self, arg: str | None) -> Variant:
        """`configs/x.py:smoke` -> Variant('smoke', ...); a clear one-line error for an unknown name."""
        name = (arg or "").strip()
        if name and name not in self.names:
            raise ValueError(f"unknown config variant {name!r}; known variants: {', '.join(self.names)}")
        size = name if name in self.sizes else (self.sizes[0] if self.sizes else "")
        return Variant(name=name, size=size)


def smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The `:smoke` variant: shrink a finished config so that training runs in seconds on a CPU."""
    config.train.num_steps = 30
    config.train.batch_size = 32
    config.train.log_every = 10
    config.train.checkpoint_every = 15
    config.train.sample_every = 30
    # A config that does not evaluate during training still does not.
    config.train.eval_every = 30 if config.train.eval_every else 0
    config.eval.nfes = (1, 2)
    config.eval.num_samples = 200
    config.eval.grid_size = 16
    config.eval.batch_size = 200
    model = config.model
    if model.name == "mlp":
        model.hidden = 64
        model.depth = 2
    elif model.name == "dit":
        model.update(dict(hidden=64, depth=2, num_heads=4))
    elif model.name == "edm2":
        model.update(dict(channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(32,), channels_per_head=16))
    else:  # the UNets: shrink whatever width keys they have
        if "channels" in model:
            model.channels = 16
        if "num_blocks" in model:
            model.num_blocks = 1
        if "channel_mult" in model:
            model.channel_mult = tuple(min(m, 2) for m in model.channel_mult)
    return config


def config_module(path: str) -> types.ModuleType:
    """The config file at `path`, executed: its get_config and VARIANTS.

    The one loader of config files besides the command line (tests, benchmarks, the notebook).
    """
    import importlib.util
    import os

    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(f"fewstep_config_{name}", path)
    if spec is None or spec.loader is None or not os.path.isfile(path):
        raise FileNotFoundError(f"config {path} not found")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_config(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """get_config(arg) of the config file at `path`, unlocked: what `--config=PATH:ARG` loads."""
    return config_module(path).get_config(arg)


# ---------------------------------------------------------------------------
# Typed views (a frozen dataclass per section, built from the ConfigDict: an
# unknown or missing key fails here, at construction, never inside jit).


def typed_view(cls: type, section: Mapping[str, Any], where: str):
    """Build frozen dataclass `cls` from `section`, rejecting unknown keys."""
    fields = {f.name for f in dataclasses.fields(cls)}
    keys = set(section.keys())
    unknown = sorted(keys - fields)
    if unknown:
        raise ValueError(
            f"unknown key(s) {unknown} in config section '{where}'; accepted keys: {sorted(fields)}"
        )
    values = {k: section[k] for k in keys}
    for k, v in values.items():
        if isinstance(v, list):
            values[k] = tuple(v)
    return cls(**values)


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    name: str = "adam"
    lr: float = 1e-3
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_steps: int = 0
    decay_steps: int = 0
    end_factor: float = 0.0
    grad_clip: float = 0.0


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    num_steps: int = 2000
    batch_size: int = 128
    ema_decays: tuple[float, ...] = (0.999,)
    ema_halflives: tuple[float, ...] = ()
    ema_sigma_rels: tuple[float, ...] = ()
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    sample_every: int = 1000
    eval_every: int = 1000
    init_from: str = ""
    on_nonfinite: str = "stop"


NONFINITE_POLICIES = ("stop", "replace_grads")
VAE_DECODERS = ("ft-mse", "ft-ema")
IMAGE_METRICS = ("fid", "fd_dinov2")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    nfes: tuple[int, ...] = (1, 2, 4, 8)
    sampler: str = "euler"
    num_samples: int = 0
    grid_size: int = 100
    guidance: float = 1.0
    use_ema: bool = True
    batch_size: int = 500
    checkpoint_step: int = 0
    fid_weights: str = ""
    fid_stats: str = ""
    fid_resize: str = "tf1"
    fid_batch_size: int = 250
    metrics: tuple[str, ...] = ()
    fd_dinov2_weights: str = ""
    fd_dinov2_stats: str = ""
    vae_weights: str = ""
    vae_decoder: str = "ft-mse"


@dataclasses.dataclass(frozen=True)
class ShardingConfig:
    strategy: str = "replicated"
    fsdp: int = 1
    min_shard_size: int = 2**14


TOP_LEVEL_KEYS = ("seed", "data", "model", "method", "optim", "train", "eval", "sharding")


def _float_values(section: Any, prefix: str) -> Iterator[tuple[str, float]]:
    """(dotted key, value) of every float in a config, tuples and lists included."""
    items = section.items() if isinstance(section, (Mapping, ml_collections.ConfigDict)) else ()
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, (Mapping, ml_collections.ConfigDict)):
            yield from _float_values(value, name + ".")
        elif isinstance(value, (tuple, list)):
            yield from ((f"{name}[{i}]", v) for i, v in enumerate(value) if isinstance(v, float))
        elif isinstance(value, float):
            yield name, value


def _check_optim(optim: OptimConfig) -> None:
    """Ranges of the optimizer and schedule values (all floats are already known to be finite)."""
    if optim.lr <= 0:
        raise ValueError(f"optim.lr must be positive, got {optim.lr}")
    for name in ("b1", "b2"):
        if not 0.0 <= getattr(optim, name) < 1.0:
            raise ValueError(f"optim.{name} must be in [0, 1), got {getattr(optim, name)}")
    if optim.eps <= 0:
        raise ValueError(f"optim.eps must be positive (Adam divides by sqrt(v) + eps), got {optim.eps}")
    for name in ("weight_decay", "end_factor", "grad_clip", "warmup_steps", "decay_steps"):
        if getattr(optim, name) < 0:
            raise ValueError(f"optim.{name} must be >= 0, got {getattr(optim, name)}")
    if optim.schedule == "inverse_sqrt" and optim.decay_steps <= 0:
        raise ValueError("optim.schedule='inverse_sqrt' needs optim.decay_steps > 0 (the reference step)")


@dataclasses.dataclass(frozen=True)
class Sections:
    """The typed views of the sections the training loop reads, built once by `validate`."""

    train: TrainConfig
    eval: EvalConfig
    optim: OptimConfig
    sharding: ShardingConfig


def validate(config: ml_collections.ConfigDict, num_devices: int) -> Sections:
    """Check the config's own values in Python; raise ValueError naming the problem.

    Covers: unknown sections or keys, non-finite numbers anywhere, optimizer / schedule /
    sampler names, option ranges, and a global batch that the devices cannot split evenly.
    The data, model and method sections are checked by the builders that read them (their
    registries; experiment.setup builds them before anything is compiled).
    """
    unknown = sorted(set(config.keys()) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise ValueError(f"unknown top-level config key(s) {unknown}; accepted: {list(TOP_LEVEL_KEYS)}")
    for key, value in _float_values(config, ""):
        if not math.isfinite(value):
            raise ValueError(f"{key}={value} is not a finite number")
    optim = typed_view(OptimConfig, config.optim, "optim")
    train = typed_view(TrainConfig, config.train, "train")
    ev = typed_view(EvalConfig, config.eval, "eval")
    sharding = typed_view(ShardingConfig, config.sharding, "sharding")

    if optim.name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optim.name!r}; known: {', '.join(OPTIMIZERS)}")
    if optim.schedule not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {optim.schedule!r}; known: {', '.join(SCHEDULES)}")
    _check_optim(optim)
    if train.on_nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"train.on_nonfinite must be one of {NONFINITE_POLICIES}, got {train.on_nonfinite!r}")
    if ev.sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {ev.sampler!r}; known: {', '.join(SAMPLERS)}")
    if any(int(n) < 1 for n in ev.nfes):
        raise ValueError(f"eval.nfes must be positive step counts, got {ev.nfes}")
    if ev.fid_resize not in ("tf1", "pytorch"):
        raise ValueError(f"eval.fid_resize must be 'tf1' or 'pytorch', got {ev.fid_resize!r}")
    if ev.vae_decoder not in VAE_DECODERS:
        raise ValueError(f"eval.vae_decoder must be one of {VAE_DECODERS}, got {ev.vae_decoder!r}")
    unknown = sorted(set(ev.metrics) - set(IMAGE_METRICS))
    if unknown:
        raise ValueError(f"eval.metrics: unknown {unknown}; known image metrics: {IMAGE_METRICS}")
    if ev.fid_batch_size < 1 or ev.batch_size < 1:
        raise ValueError("eval.batch_size and eval.fid_batch_size must be positive")
    if train.num_steps < 1 or train.batch_size < 1:
        raise ValueError("train.num_steps and train.batch_size must be positive")
    if not (train.ema_decays or train.ema_halflives or train.ema_sigma_rels) and ev.use_ema:
        raise ValueError(
            "eval.use_ema=True needs at least one EMA (train.ema_decays, ema_halflives or ema_sigma_rels)"
        )
    for d in train.ema_decays:
        if not 0.0 <= d < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {d}")
    for h in train.ema_halflives:
        if h <= 0:
            raise ValueError(f"EMA half-life (images) must be positive, got {h}")
    for sr in train.ema_sigma_rels:
        # sigma_rel(gamma = 0) = 1 / sqrt(12): larger values have no power profile with gamma > 0.
        if not 0.0 < sr < 12**-0.5:
            raise ValueError(f"EMA sigma_rel must be in (0, 1/sqrt(12) = {12**-0.5:.4f}), got {sr}")
    if sharding.fsdp < 1 or num_devices % sharding.fsdp:
        raise ValueError(f"sharding.fsdp={sharding.fsdp} must divide the device count {num_devices}")
    if sharding.strategy not in ("replicated", "fsdp"):
        raise ValueError(f"sharding.strategy must be 'replicated' or 'fsdp', got {sharding.strategy!r}")
    if sharding.min_shard_size < 1:
        raise ValueError(f"sharding.min_shard_size must be >= 1, got {sharding.min_shard_size}")
    if train.batch_size % num_devices:
        raise ValueError(
            f"global batch size train.batch_size={train.batch_size} is not divisible by the "
            f"{num_devices} devices; use a multiple of {num_devices}"
        )
    return Sections(train=train, eval=ev, optim=optim, sharding=sharding)
