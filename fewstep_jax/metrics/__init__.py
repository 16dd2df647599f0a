"""Sample-quality metrics for the embedded datasets (no downloads).

    evaluator = build_evaluator(config.data, cache_dir=...)
    metrics = evaluator.evaluate(samples, labels)   # {evaluator.primary: ..., ...}, lower primary is better
    best = evaluator.floor()                         # the same metrics on real held-out data

toy2d -> toy.Toy2DEvaluator (sliced Wasserstein 'swd', energy distance) against fresh exact samples;
digits -> digits.DigitsEvaluator (Frechet distance 'fd' in a small classifier's feature space,
class coverage / entropy, label accuracy);
image datasets (cifar10, imagenet64, celebahq256) and latent datasets (imagenet256_latents,
imagenet512_latents, celebahq256_latents: samples decoded by the VAE of eval.vae_weights) ->
images.ImageEvaluator: FID-50k with the FID Inception-v3 network and Inception Score (eval.fid_*),
and FD-DINOv2 with EDM2's protocol (eval.fd_dinov2_*), as eval.metrics chooses.
"""

from __future__ import annotations

import os
from typing import Any, Protocol, runtime_checkable

import numpy as np

from fewstep_jax import data as data_lib
from fewstep_jax.metrics.cache import default_cache_dir
from fewstep_jax.metrics.frechet import frechet_distance, gaussian_stats
from fewstep_jax.metrics.images import FID_DATASETS, LATENT_DATASETS, image_metrics, vae_weights_file
from fewstep_jax.metrics.toy import Toy2DEvaluator, energy_distance, sliced_wasserstein

__all__ = [
    "FID_DATASETS",
    "LATENT_DATASETS",
    "Evaluator",
    "Toy2DEvaluator",
    "build_evaluator",
    "check_available",
    "default_cache_dir",
    "energy_distance",
    "frechet_distance",
    "gaussian_stats",
    "image_metrics",
    "sliced_wasserstein",
    "vae_weights_file",
]


@runtime_checkable
class Evaluator(Protocol):
    """What the training loop and evaluate.py use to score samples."""

    primary: str  # the headline metric's key (lower is better)
    num_samples: int  # how many generated samples evaluate() expects

    def evaluate(self, samples: np.ndarray, labels: np.ndarray | None = None) -> dict[str, float]:
        """samples [N, *shape] (labels [N] for conditional generation) -> metrics."""
        ...

    def floor(self) -> dict[str, float]:
        """The same metrics with real held-out data in place of samples (best achievable at this size)."""
        ...


def check_available(data_cfg: Any, ev: Any = None) -> None:
    """Fails early (before any compilation) when the dataset's metrics cannot run: FID without
    Inception weights or with a missing statistics file, FD-DINOv2 without its weights, or a
    latent dataset without the VAE that decodes its samples."""
    data_lib.validate(data_cfg)
    name = data_cfg.get("name")
    if name not in FID_DATASETS + LATENT_DATASETS:
        if name not in ("toy2d", "digits"):
            raise ValueError(f"dataset {name!r} has no sample metric in the suite")
        return
    metrics = image_metrics(data_cfg, ev)
    if name in LATENT_DATASETS:
        vae_weights_file(ev)
    if "fid" in metrics:
        from fewstep_jax.metrics import inception

        inception.weights_file(getattr(ev, "fid_weights", ""))  # a URL is fine: downloaded on first use
        stats = getattr(ev, "fid_stats", "")
        if stats and not os.path.isfile(stats):
            raise FileNotFoundError(f"eval.fid_stats={stats} does not exist")
    if "fd_dinov2" in metrics:
        from fewstep_jax.metrics import dinov2

        dinov2.weights_file(getattr(ev, "fd_dinov2_weights", ""))
        stats = getattr(ev, "fd_dinov2_stats", "")
        if stats and not os.path.isfile(stats):
            raise FileNotFoundError(f"eval.fd_dinov2_stats={stats} does not exist")


def build_evaluator(data_cfg: Any, ev: Any = None, *, cache_dir: str | os.PathLike[str] | None = None) -> Evaluator:
    """The evaluator of the dataset named by `data_cfg` (validated first).

    ev: the eval config (EvalConfig); its fid_*, fd_dinov2_*, vae_* and metrics fields configure
    the image metrics. cache_dir: where the digits classifier, the Inception and DINOv2 weights
    and reference statistics are cached (default: default_cache_dir()); unused for toy2d.
    """
    check_available(data_cfg, ev)  # validates data_cfg first
    name = data_cfg.get("name")
    if name == "toy2d":
        return Toy2DEvaluator(data_cfg.get("distribution"))
    if name in FID_DATASETS + LATENT_DATASETS:
        from fewstep_jax.metrics.images import ImageEvaluator

        return ImageEvaluator(data_cfg, ev, cache_dir=None if cache_dir is None else os.fspath(cache_dir))
    # Imported here so that toy-only users do not pay for building the classifier module's deps.
    from fewstep_jax.metrics.digits import DigitsEvaluator

    return DigitsEvaluator(cache_dir)
