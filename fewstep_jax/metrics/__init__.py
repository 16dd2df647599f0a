"""Sample-quality metrics for the embedded datasets (no downloads).

    evaluator = build_evaluator(config.data, cache_dir=...)
    metrics = evaluator.evaluate(samples, labels)   # {evaluator.primary: ..., ...}, lower primary is better
    best = evaluator.floor()                         # the same metrics on real held-out data

toy2d -> toy.Toy2DEvaluator (sliced Wasserstein 'swd', energy distance) against fresh exact samples;
digits -> digits.DigitsEvaluator (Frechet distance 'fd' in a small classifier's feature space,
class coverage / entropy, label accuracy);
image datasets (cifar10, imagenet64, celebahq256) -> fid.FIDEvaluator (FID-50k with the FID
Inception-v3 network, Inception Score), configured by the eval.fid_* keys.
"""

from __future__ import annotations

import os
from typing import Any, Protocol, runtime_checkable

import numpy as np

from fewstep_jax import data as data_lib
from fewstep_jax.metrics.cache import default_cache_dir
from fewstep_jax.metrics.frechet import frechet_distance, gaussian_stats
from fewstep_jax.metrics.toy import Toy2DEvaluator, energy_distance, sliced_wasserstein

__all__ = [
    "Evaluator",
    "Toy2DEvaluator",
    "build_evaluator",
    "check_available",
    "default_cache_dir",
    "energy_distance",
    "frechet_distance",
    "gaussian_stats",
    "sliced_wasserstein",
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


#: Datasets scored with FID; latent datasets are not (their samples need the VAE decoder).
FID_DATASETS = ("cifar10", "imagenet64", "celebahq256")


def check_available(data_cfg: Any, ev: Any = None) -> None:
    """Fails early (before any compilation) when the dataset's metric cannot run: FID without
    Inception weights or with a missing statistics file, or a latent dataset (no pixels)."""
    data_lib.validate(data_cfg)
    name = data_cfg.get("name")
    if name in FID_DATASETS:
        from fewstep_jax.metrics import inception

        inception.weights_file(getattr(ev, "fid_weights", ""))  # a URL is fine: downloaded on first use
        stats = getattr(ev, "fid_stats", "")
        if stats and not os.path.isfile(stats):
            raise FileNotFoundError(f"eval.fid_stats={stats} does not exist")
    elif name not in ("toy2d", "digits"):
        raise ValueError(
            f"dataset {name!r} has no sample metric in the suite: FID needs decoded images and the VAE "
            "decoder is not part of fewstep_jax. Set train.eval_every=0 (samples are still written) and "
            "score decoded samples with an external FID tool."
        )


def build_evaluator(data_cfg: Any, ev: Any = None, *, cache_dir: str | os.PathLike[str] | None = None) -> Evaluator:
    """The evaluator of the dataset named by `data_cfg` (validated first).

    ev: the eval config (EvalConfig); its fid_* fields configure FID on image datasets.
    cache_dir: where the digits classifier, the Inception weights and FID reference statistics
    are cached (default: default_cache_dir()); unused for toy2d.
    """
    check_available(data_cfg, ev)  # validates data_cfg first
    name = data_cfg.get("name")
    if name == "toy2d":
        return Toy2DEvaluator(data_cfg.get("distribution"))
    if name in FID_DATASETS:
        from fewstep_jax.metrics.fid import FIDEvaluator

        return FIDEvaluator(
            data_cfg,
            weights=getattr(ev, "fid_weights", ""),
            stats=getattr(ev, "fid_stats", ""),
            resize=getattr(ev, "fid_resize", "tf1"),
            batch_size=getattr(ev, "fid_batch_size", 250),
            cache_dir=None if cache_dir is None else os.fspath(cache_dir),
        )
    # Imported here so that toy-only users do not pay for building the classifier module's deps.
    from fewstep_jax.metrics.digits import DigitsEvaluator

    return DigitsEvaluator(cache_dir)
