"""Sample distances for 2-D toy data, against fresh exact samples of the true distribution.

- Sliced 2-Wasserstein (Rabin et al. 2011; Bonneel et al. 2015):
      SW2(mu, nu) = ( E_{theta ~ U(S^{d-1})} W2^2(theta # mu, theta # nu) )^{1/2},
  the expectation estimated with `num_projections` random unit directions; each 1-D W2 between
  empirical measures is the L2 distance of their quantile functions (sorted projections).
- Energy distance (Szekely & Rizzo 2013), V-statistic form:
      E(X, Y) = 2/(nm) sum_ij |x_i - y_j| - 1/n^2 sum_ij |x_i - x_j| - 1/m^2 sum_ij |y_i - y_j|.
  The V-statistic (diagonal terms included) is a squared MMD with the distance kernel, so it is
  >= 0 and exactly 0 for identical sets; the unbiased U-statistic is neither.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import distance

from fewstep_jax.data import pipeline, toy2d

# Stream tags of the evaluation sets (distinct from the data pipeline's tags, see pipeline.py).
_EVAL_REFERENCE_STREAM = 201
_EVAL_FLOOR_STREAM = 202


def _points(a: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(a, np.float64)
    if a.ndim != 2 or a.shape[0] == 0:
        raise ValueError(f"{what} must be a non-empty point cloud [N, D], got shape {a.shape}")
    return a


def _quantiles(sorted_values: np.ndarray, k: int) -> np.ndarray:
    """Empirical quantile function of sorted [n, P] columns at the k mid-levels (i + 1/2) / k: [k, P].

    For k == n this is the sorted array itself, so equal-size clouds are compared exactly.
    """
    n = sorted_values.shape[0]
    levels = (np.arange(k) + 0.5) / k
    return sorted_values[np.ceil(levels * n).astype(np.int64) - 1]


def sliced_wasserstein(x: np.ndarray, y: np.ndarray, *, num_projections: int = 512, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between point clouds x [n, D] and y [m, D] (see module doc).

    Directions are normalized Gaussian vectors from np.random.default_rng(seed), so the same seed
    gives comparable numbers across calls. When n != m both quantile functions are evaluated on
    a common grid of max(n, m) levels.
    """
    x, y = _points(x, "x"), _points(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {x.shape} and {y.shape}")
    directions = np.random.default_rng(seed).standard_normal((x.shape[1], num_projections))
    directions /= np.linalg.norm(directions, axis=0, keepdims=True)
    px, py = np.sort(x @ directions, axis=0), np.sort(y @ directions, axis=0)
    if px.shape[0] != py.shape[0]:
        k = max(px.shape[0], py.shape[0])
        px, py = _quantiles(px, k), _quantiles(py, k)
    return float(np.sqrt(np.mean((px - py) ** 2)))


def energy_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Energy distance (V-statistic, Szekely & Rizzo 2013) between x [n, D] and y [m, D]. O(nm) memory."""
    x, y = _points(x, "x"), _points(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {x.shape} and {y.shape}")
    cross = distance.cdist(x, y).mean()
    within_x = distance.cdist(x, x).mean()
    within_y = distance.cdist(y, y).mean()
    return max(float(2.0 * cross - within_x - within_y), 0.0)  # >= 0 in exact arithmetic


class Toy2DEvaluator:
    """Sample quality for a toy2d distribution: {'swd', 'energy'} (lower is better), primary 'swd'.

    The reference is a FIXED set of `num_samples` exact samples (drawn once from `seed`); the
    floor compares an independent exact set of the same size with it, i.e. the distance a
    perfect sampler gets at this sample size.
    """

    primary: str = "swd"

    def __init__(self, distribution: str, num_samples: int = 2000, seed: int = 0, num_projections: int = 512):
        self.distribution = toy2d.check_distribution(distribution)
        self.num_samples = int(num_samples)
        self.num_projections = int(num_projections)
        self._seed = pipeline.check_seed(seed)
        rng = pipeline.stream_rng(_EVAL_REFERENCE_STREAM, self._seed, 0)
        self.reference = toy2d.sample(distribution, self.num_samples, rng)
        self._floor: dict[str, float] | None = None

    def evaluate(self, samples: np.ndarray, labels: np.ndarray | None = None) -> dict[str, float]:
        """samples: [N, 2] (any N >= 1; num_samples recommended). labels are ignored (unconditional).

        Non-finite samples (a diverged model) score inf instead of raising, so a training run can
        log the failure and carry on.
        """
        del labels
        samples = np.asarray(samples)
        if samples.ndim != 2 or samples.shape[1] != 2 or samples.shape[0] == 0:
            raise ValueError(f"toy2d samples must be [N, 2] with N >= 1, got shape {samples.shape}")
        if not np.all(np.isfinite(samples)):
            return {"swd": float("inf"), "energy": float("inf")}
        return {
            "swd": sliced_wasserstein(samples, self.reference, num_projections=self.num_projections, seed=self._seed),
            "energy": energy_distance(samples, self.reference),
        }

    def floor(self) -> dict[str, float]:
        """The metrics of independent exact samples (same size as the reference)."""
        if self._floor is None:
            rng = pipeline.stream_rng(_EVAL_FLOOR_STREAM, self._seed, 0)
            self._floor = self.evaluate(toy2d.sample(self.distribution, self.num_samples, rng))
        return dict(self._floor)
