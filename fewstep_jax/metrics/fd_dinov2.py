"""FD-DINOv2 of image samples (EDM2's protocol); reference statistics of datasets and EDM2's files.

    extractor = DINOv2Extractor(dinov2.load_params(weights))
    stats = extractor.statistics(batches)               # streaming float64 mean / covariance
    fd = frechet.frechet_distance(*stats.gaussian(), *reference)

FD-DINOv2 (Stein et al. 2023; EDM2, Karras et al. 2024, `calculate_metrics.py`): the Frechet
distance ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) between Gaussians fitted (float64,
covariance with N - 1) to the 1024-d DINOv2 ViT-L/14 CLS features of generated and real images
(metrics.dinov2 has the network and EDM2's preprocessing). EDM2 reports it for 50,000 samples,
like FID, and computes both from the same images.

Reference statistics come from a prepared dataset (computed once and cached under a key that
includes the weights' fingerprint, like FID's), from a .npz with 'mu' / 'sigma', or from EDM2's
`dataset-refs/img512.pkl` / `img64.pkl` (pickles of {'fid': {'mu', 'sigma'}, 'fd_dinov2': {'mu',
'sigma'}}), read with an allow-list unpickler (`load_edm2_refs`): no code in them ever runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fewstep_jax import safe_pickle
from fewstep_jax.metrics import dinov2, fid, frechet, inception

EDM2_REFS_URL = "https://nvlabs-fi-cdn.nvidia.com/edm2/dataset-refs/"
#: The feature dimension of each metric in EDM2's reference pickles.
EDM2_METRIC_DIMS = {"fid": inception.FEATURE_DIM, "fd_dinov2": dinov2.FEATURE_DIM}
_STATS_HINT = (
    f"give EDM2's reference pickle ({EDM2_REFS_URL}img512.pkl or img64.pkl), a .npz with mu and sigma, "
    "or no file to compute them from the dataset"
)


class DINOv2Extractor:
    """DINOv2 CLS features of uint8 images (EDM2's DINOv2Detector), batch by batch, sharded over
    local devices; jitted once per batch shape.

    dtype: compute dtype (float32 by default; float64 needs jax_enable_x64 while the extractor is
    built and called). precision: of the network's matrix products (default HIGHEST; anything
    lower, e.g. TF32 on GPUs, needs its own measured bound against float32).
    """

    def __init__(
        self,
        params: Any,
        *,
        config: dinov2.DINOv2Config = dinov2.VIT_L14,
        batch_size: int = 250,
        dtype: Any = jnp.float32,
        precision: Any = jax.lax.Precision.HIGHEST,
    ):
        self.config = config
        self._features = fid.ShardedBatches(
            lambda p, x: dinov2.features(p, x, config, dtype, precision), params, batch_size
        )
        self.batch_size = self._features.batch_size
        self.fingerprint = dinov2.params_fingerprint(params)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, H, W, C] -> features [N, dim] (float32, or the compute dtype)."""
        images = np.asarray(images)
        if images.dtype != np.uint8:
            raise ValueError(f"DINOv2 features take uint8 images, got {images.dtype} (see inception.to_uint8)")
        return self._features(images)

    def statistics(
        self, batches: Iterable[np.ndarray], *, total: int | None = None, what: str = "DINOv2 features"
    ) -> fid.RunningStats:
        """Streams uint8 image batches -> float64 RunningStats of the features (progress logged)."""
        stats = fid.RunningStats(self.config.dim)
        for images in fid.with_progress(batches, total=total, what=what):
            stats.update(self(images))
        return stats


def _gaussian(entry: Any, dim: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(entry, Mapping) or "mu" not in entry or "sigma" not in entry:
        raise ValueError(f"{where} must be a dict with 'mu' and 'sigma'")
    mu, sigma = entry["mu"], entry["sigma"]
    if not all(isinstance(a, np.ndarray) and a.dtype.kind in "fiu" for a in (mu, sigma)):
        raise ValueError(f"{where}: 'mu' and 'sigma' must be numeric numpy arrays")
    if mu.shape != (dim,) or sigma.shape != (dim, dim):
        raise ValueError(f"{where}: expected mu [{dim}] and sigma [{dim}, {dim}], got {mu.shape} and {sigma.shape}")
    return mu.astype(np.float64), sigma.astype(np.float64)


def load_edm2_refs(path: str, dims: Mapping[str, int] = EDM2_METRIC_DIMS) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """EDM2's reference statistics (`calculate_metrics.py ref` output) -> {metric: (mu, sigma)}, float64.

    The file is a pickle of {'fid': {'mu', 'sigma'}, 'fd_dinov2': {'mu', 'sigma'}, 'num_images'}
    (numpy arrays), read through safe_pickle's allow-list (plain numpy arrays only: a file asking
    for anything else is refused before any of it runs). Metrics in `dims` that the file holds
    are returned, their shapes checked ([D], [D, D]); others are ignored. Raises ValueError when
    none is present, FileNotFoundError (saying where to get the files) when the file is missing.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"EDM2 reference statistics {path} not found; download them from {EDM2_REFS_URL} "
            "(img512.pkl for ImageNet-512, img64.pkl for ImageNet-64)"
        )
    with open(path, "rb") as f:
        obj = safe_pickle.load(f, safe_pickle.NUMPY_ARRAYS, source=path)
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not EDM2's dict of reference statistics")
    refs = {metric: _gaussian(obj[metric], dim, f"{path}: '{metric}'") for metric, dim in dims.items() if metric in obj}
    if not refs:
        raise ValueError(f"{path} has keys {sorted(map(str, obj))}, none of {sorted(dims)}")
    return refs


def load_stats(path: str, dim: int = dinov2.FEATURE_DIM) -> tuple[np.ndarray, np.ndarray]:
    """FD-DINOv2 reference (mu [dim], sigma [dim, dim]) from EDM2's .pkl ('fd_dinov2' entry) or a .npz."""
    if path.endswith(".pkl"):
        refs = load_edm2_refs(path, {"fd_dinov2": dim})
        return refs["fd_dinov2"]
    return fid.load_stats(path, dim=dim, metric="FD-DINOv2", hint=_STATS_HINT)


def dataset_stats(
    data_cfg: Any,
    extractor: DINOv2Extractor,
    *,
    split: str = "train",
    limit: int | None = None,
    out: str | None = None,
    cache_dir: str | None = None,
) -> tuple[str, tuple[np.ndarray, np.ndarray]]:
    """FD-DINOv2 reference statistics of a prepared dataset split, computed once, saved as .npz
    (`fd_dinov2_stats_*` in cache_dir, keyed by the dataset, split, image count and the DINOv2
    weights' fingerprint) and reused. Returns (path, (mu, sigma))."""
    return fid.cached_dataset_stats(
        data_cfg,
        lambda batches, total, what: extractor.statistics(batches, total=total, what=what),
        network={"dinov2": extractor.fingerprint},
        batch_size=extractor.batch_size,
        dim=extractor.config.dim,
        metric="FD-DINOv2",
        prefix="fd_dinov2_stats",
        split=split,
        limit=limit,
        out=out,
        cache_dir=cache_dir,
    )


def as_uint8(samples: np.ndarray) -> np.ndarray:
    """uint8 images pass through; float samples in [-1, 1] are rounded like a PNG export
    (inception.to_uint8)."""
    samples = np.asarray(samples)
    return samples if samples.dtype == np.uint8 else inception.to_uint8(samples)


class FDDinoEvaluator:
    """FD-DINOv2 (lower is better) of samples against reference statistics (EDM2's protocol).

    samples: NHWC images, uint8 or float in [-1, 1] (rounded to uint8 first), any square size.
    stats: EDM2's reference .pkl, a .npz with mu / sigma, or '' to compute (and cache) them from
    the dataset in data_cfg. reference=(mu, sigma) gives them directly. num_samples is EDM2's
    50,000; floor() is empty, as for FID.
    """

    primary = "fd_dinov2"
    num_samples = 50_000

    def __init__(
        self,
        data_cfg: Any,
        *,
        weights: str = "",
        stats: str = "",
        batch_size: int = 250,
        cache_dir: str | None = None,
        params: Any = None,
        reference: tuple[np.ndarray, np.ndarray] | None = None,
        config: dinov2.DINOv2Config | None = dinov2.VIT_L14,
        dtype: Any = jnp.float32,
    ):
        """config None: the size the weights file holds (dinov2.load)."""
        if params is None and config is None:
            params, config = dinov2.load(weights, cache_dir)
        elif params is None:
            params = dinov2.load_params(weights, cache_dir, config)
        config = config or dinov2.VIT_L14
        self.extractor = DINOv2Extractor(params, config=config, batch_size=batch_size, dtype=dtype)
        if reference is not None:
            self.stats_path, (self.mu, self.sigma) = "", tuple(np.asarray(a, np.float64) for a in reference)
        elif stats:
            self.stats_path, (self.mu, self.sigma) = stats, load_stats(stats, config.dim)
        else:
            self.stats_path, (self.mu, self.sigma) = dataset_stats(data_cfg, self.extractor, cache_dir=cache_dir)

    def evaluate(self, samples: np.ndarray, labels: np.ndarray | None = None) -> dict[str, float]:
        del labels  # an unconditional statistic
        images = as_uint8(samples)
        size = self.extractor.batch_size
        batches = (images[i : i + size] for i in range(0, len(images), size))
        stats = self.extractor.statistics(batches, total=len(images), what="FD-DINOv2")
        return {"fd_dinov2": frechet.frechet_distance(*stats.gaussian(), self.mu, self.sigma)}

    def floor(self) -> dict[str, float]:
        return {}
