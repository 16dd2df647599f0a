"""Sample-quality metrics for the embedded datasets (no downloads).

    evaluator = build_evaluator(config.data, cache_dir=...)
    metrics = evaluator.evaluate(samples, labels)   # {evaluator.primary: ..., ...}, lower primary is better
    best = evaluator.floor()                         # the same metrics on real held-out data

toy2d -> toy.Toy2DEvaluator (sliced Wasserstein 'swd', energy distance) against fresh exact samples;
digits -> digits.DigitsEvaluator (Frechet distance 'fd' in a small classifier's feature space,
class coverage / entropy, label accuracy).
"""

from __future__ import annotations

import os
from typing import Any, Protocol, runtime_checkable

import numpy as np

from fewstep_jax import data as data_lib
from fewstep_jax.metrics.frechet import frechet_distance, gaussian_stats
from fewstep_jax.metrics.toy import Toy2DEvaluator, energy_distance, sliced_wasserstein

__all__ = [
    "Evaluator",
    "Toy2DEvaluator",
    "build_evaluator",
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


def build_evaluator(data_cfg: Any, *, cache_dir: str | os.PathLike[str] | None = None) -> Evaluator:
    """The evaluator of the dataset named by `data_cfg` (validated first).

    cache_dir: where the digits classifier is cached (default $FEWSTEP_CACHE or ~/.cache/fewstep_jax);
    unused for toy2d.
    """
    data_lib.validate(data_cfg)
    if data_cfg.get("name") == "toy2d":
        return Toy2DEvaluator(data_cfg.get("distribution"))
    # Imported here so that toy-only users do not pay for building the classifier module's deps.
    from fewstep_jax.metrics.digits import DigitsEvaluator

    return DigitsEvaluator(cache_dir)
