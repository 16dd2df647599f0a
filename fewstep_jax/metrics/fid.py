"""FID and Inception Score of image samples; reference statistics of prepared datasets.

    extractor = InceptionExtractor(inception.load_params(weights))
    stats = extractor.statistics(batches)              # streaming float64 mean / covariance
    fid = frechet.frechet_distance(*stats.gaussian(), *reference)

FID (Heusel et al. 2017, eq. 6): the Frechet distance between Gaussians fitted to the 2048-d
pool3 features of generated and real images. Inception Score (Salimans et al. 2016, sec. 4):
IS = exp(E_x KL(p(y|x) || p(y))), with p(y|x) the softmax of the 1008 bias-free logits, computed
on 10 splits of the samples and averaged (the original protocol; mean and std are reported).

Feature extraction is jitted once per batch shape, shards each batch over all local devices
(leading axis), and logs progress (images/s, ETA) on long runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import numpy as np
import scipy.special
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from fewstep_jax.metrics import frechet, inception
from fewstep_jax.metrics.cache import default_cache_dir

IS_SPLITS = 10
PROGRESS_SECONDS = 30.0


@dataclasses.dataclass
class RunningStats:
    """Streaming float64 sums for the mean and the unbiased covariance of D-dim features."""

    dim: int
    count: int = 0
    total: np.ndarray | None = None
    outer: np.ndarray | None = None

    def update(self, features: np.ndarray) -> None:
        f = np.asarray(features, np.float64).reshape(-1, self.dim)
        if self.total is None:
            self.total, self.outer = np.zeros(self.dim), np.zeros((self.dim, self.dim))
        self.count += len(f)
        self.total += f.sum(axis=0)
        self.outer += f.T @ f

    def gaussian(self) -> tuple[np.ndarray, np.ndarray]:
        """(mu [D], sigma [D, D]): sigma = (sum f f^T - N mu mu^T) / (N - 1), as np.cov."""
        if self.count < 2:
            raise ValueError(f"statistics need at least 2 images, got {self.count}")
        mu = self.total / self.count
        sigma = (self.outer - self.count * np.outer(mu, mu)) / (self.count - 1)
        return mu, 0.5 * (sigma + sigma.T)


def inception_score(logits: np.ndarray, splits: int = IS_SPLITS) -> tuple[float, float]:
    """(mean, std) over `splits` equal parts of exp(mean_x KL(p(y|x) || p(y))) (Salimans et al.
    2016, sec. 4); logits [N, K] -> p(y|x) = softmax. Computed in float64."""
    z = np.asarray(logits, np.float64)
    if z.ndim != 2 or len(z) < splits:
        raise ValueError(f"inception_score needs [N, K] logits with N >= splits={splits}, got {z.shape}")
    log_p = scipy.special.log_softmax(z, axis=1)
    scores = []
    for part in np.array_split(log_p, splits):
        p = np.exp(part)
        log_marginal = np.log(p.mean(axis=0))
        safe = np.where(p > 0, part - log_marginal, 0.0)  # 0 log 0 = 0 (impossible classes)
        kl = (p * safe).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def _progress(done: int, total: int | None, start: float, what: str) -> None:
    rate = done / max(time.perf_counter() - start, 1e-9)
    if total:
        eta = (total - done) / max(rate, 1e-9)
        logging.info("%s: %d / %d images (%.0f img/s, ETA %.0f s)", what, done, total, rate, eta)
    else:
        logging.info("%s: %d images (%.0f img/s)", what, done, rate)


def with_progress(batches: Iterable[np.ndarray], *, total: int | None = None, what: str = "") -> Iterator[np.ndarray]:
    """Yields the batches unchanged, logging images done, images/s and the ETA every
    PROGRESS_SECONDS while the consumer works on them (and once at the end when total is known)."""
    done = 0
    start = last = time.perf_counter()
    for images in batches:
        yield images
        done += len(images)
        if time.perf_counter() - last > PROGRESS_SECONDS:
            _progress(done, total, start, what)
            last = time.perf_counter()
    if total and done > 0:
        _progress(done, total, start, what)


class ShardedBatches:
    """fn(params, images) on fixed-size batches split over all local devices (leading axis).

    fn is jitted once (one batch shape); the batch size is rounded up to a multiple of the device
    count and the last partial batch is padded by repeating its last image, the padding dropped
    from the outputs. Returns fn's output pytree as numpy, concatenated over batches.
    """

    def __init__(self, fn: Callable[[Any, jax.Array], Any], params: Any, batch_size: int):
        devices = jax.local_devices()
        self.batch_size = -(-int(batch_size) // len(devices)) * len(devices)  # a multiple of the device count
        mesh = jax.sharding.Mesh(np.array(devices), ("batch",))
        self._batch = NamedSharding(mesh, P("batch"))
        self._params = jax.device_put(params, NamedSharding(mesh, P()))
        self._fn = jax.jit(fn)

    def __call__(self, images: np.ndarray) -> Any:
        outputs = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch_size - len(chunk), axis=0)])
            result = self._fn(self._params, jax.device_put(padded, self._batch))
            outputs.append(jax.tree.map(lambda a, n=len(chunk): np.asarray(a)[:n], result))
        return jax.tree.map(lambda *parts: np.concatenate(parts), *outputs)


class InceptionExtractor:
    """pool3 features and logits of uint8 images, batch by batch, sharded over local devices."""

    def __init__(self, params: Any, *, resize: str = "tf1", batch_size: int = 250):
        if resize not in inception.RESIZE_MODES:
            raise ValueError(f"eval.fid_resize must be one of {inception.RESIZE_MODES}, got {resize!r}")
        net = inception.InceptionV3()
        self._features = ShardedBatches(
            lambda p, x: net.apply({"params": p}, inception.preprocess(x, resize)), params, batch_size
        )
        self.batch_size = self._features.batch_size
        self.fingerprint = inception.params_fingerprint(params)

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 [N, H, W, C] -> {'pool3': float32 [N, 2048], 'logits': float32 [N, 1008]}."""
        images = np.asarray(images)
        if images.dtype != np.uint8:
            raise ValueError(f"Inception features take uint8 images, got {images.dtype} (see inception.to_uint8)")
        return self._features(images)

    def statistics(
        self, batches: Iterable[np.ndarray], *, total: int | None = None, what: str = "inception features"
    ) -> tuple[RunningStats, np.ndarray]:
        """Streams uint8 image batches -> (pool3 RunningStats, all logits [N, 1008])."""
        stats, logits = RunningStats(inception.FEATURE_DIM), []
        for images in with_progress(batches, total=total, what=what):
            features = self(images)
            stats.update(features["pool3"])
            logits.append(features["logits"])
        return stats, np.concatenate(logits) if logits else np.zeros((0, inception.NUM_LOGITS), np.float32)


def save_stats(path: str, mu: np.ndarray, sigma: np.ndarray, **meta: Any) -> None:
    """Reference statistics as .npz: mu [D], sigma [D, D] (float64; the key names of EDM's and
    pytorch-fid's reference files) and a JSON `meta` string."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}.npz"
    np.savez(tmp, mu=mu, sigma=sigma, meta=json.dumps(meta, sort_keys=True))
    os.replace(tmp, path)


_FID_STATS_HINT = "compute them with `python -m fewstep_jax.metrics.fid_stats --dataset=NAME --out=PATH`" + (
    " or leave eval.fid_stats empty"
)


def load_stats(
    path: str, *, dim: int = inception.FEATURE_DIM, metric: str = "FID", hint: str = _FID_STATS_HINT
) -> tuple[np.ndarray, np.ndarray]:
    """(mu [dim], sigma [dim, dim]) float64 from a .npz with keys 'mu' and 'sigma' (this suite's,
    EDM's or pytorch-fid's files). metric and hint word the error for a missing file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{metric} reference statistics {path} not found; {hint}")
    with np.load(path, allow_pickle=False) as f:
        if "mu" not in f or "sigma" not in f:
            raise ValueError(f"{path} has keys {sorted(f.files)}; {metric} statistics need 'mu' and 'sigma'")
        try:
            mu, sigma = f["mu"].astype(np.float64), f["sigma"].astype(np.float64)
        except ValueError as e:  # object arrays: numpy refuses to unpickle them
            raise ValueError(f"{path}: 'mu' and 'sigma' must be numeric arrays ({e})") from e
    if mu.shape != (dim,) or sigma.shape != (dim, dim):
        raise ValueError(f"{path}: expected mu [{dim}] and sigma [{dim}, {dim}], got {mu.shape} and {sigma.shape}")
    return mu, sigma


def dataset_stats(
    data_cfg: Any,
    extractor: InceptionExtractor,
    *,
    split: str = "train",
    limit: int | None = None,
    out: str | None = None,
    cache_dir: str | None = None,
) -> tuple[str, tuple[np.ndarray, np.ndarray]]:
    """FID reference statistics of a prepared dataset split: computed once, saved as .npz, reused.

    Without `out` the file goes to cache_dir under a name that covers the dataset, its location,
    the split, the image count and the Inception weights' fingerprint, so a different dataset or
    network never reuses stale statistics. Returns (path, (mu, sigma)).
    """
    return cached_dataset_stats(
        data_cfg,
        lambda batches, total, what: extractor.statistics(batches, total=total, what=what)[0],
        network={"inception": extractor.fingerprint},
        batch_size=extractor.batch_size,
        dim=inception.FEATURE_DIM,
        split=split,
        limit=limit,
        out=out,
        cache_dir=cache_dir,
    )


def cached_dataset_stats(
    data_cfg: Any,
    statistics: Callable[[Iterable[np.ndarray], int, str], RunningStats],
    *,
    network: dict[str, str],
    batch_size: int,
    dim: int,
    metric: str = "FID",
    prefix: str = "fid_stats",
    split: str = "train",
    limit: int | None = None,
    out: str | None = None,
    cache_dir: str | None = None,
) -> tuple[str, tuple[np.ndarray, np.ndarray]]:
    """Reference statistics of a prepared dataset split for any feature network (see dataset_stats).

    statistics(uint8 batches, total, what) -> RunningStats computes them; network ({name:
    fingerprint}) joins the cache key; the cached file is `{prefix}_{dataset}_{split}_{key}.npz`.
    """
    from fewstep_jax import data as data_lib

    total = data_lib.num_examples(data_cfg, split)
    if limit:
        total = min(total, int(limit))
    identity = {
        "dataset": data_cfg.get("name"),
        "data_dir": os.path.abspath(os.path.expanduser(str(data_cfg.get("data_dir", "") or ""))),
        "split": split,
        "images": total,
        **network,
    }
    if out is None:
        key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
        directory = cache_dir or default_cache_dir()
        out = os.path.join(directory, f"{prefix}_{identity['dataset']}_{split}_{key}.npz")
        if os.path.isfile(out):
            logging.info("%s reference statistics from %s", metric, out)
            return out, load_stats(out, dim=dim, metric=metric)
    logging.info("computing %s reference statistics of %s/%s (%d images)", metric, identity["dataset"], split, total)
    images = _images_only(data_lib.iterate_images(data_cfg, split, batch_size=batch_size, limit=total))
    stats = statistics(images, total, f"{metric} reference statistics {identity['dataset']}/{split}")
    mu, sigma = stats.gaussian()
    save_stats(out, mu, sigma, **identity)
    logging.info("%s reference statistics written to %s", metric, out)
    return out, (mu, sigma)


def _images_only(batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> Iterator[np.ndarray]:
    for images, _labels in batches:
        yield images


class FIDEvaluator:
    """FID (primary, lower is better) and Inception Score of samples against a dataset.

    num_samples defaults to 50,000 (FID-50k, the papers' protocol); eval.num_samples overrides.
    floor() is empty: FID has no cheap real-data floor at a given N (it would need a second
    50k-image real set); compare with the papers' numbers instead.
    """

    primary = "fid"
    num_samples = 50_000

    def __init__(
        self,
        data_cfg: Any,
        *,
        weights: str = "",
        stats: str = "",
        resize: str = "tf1",
        batch_size: int = 250,
        cache_dir: str | None = None,
        params: Any = None,
        reference: tuple[np.ndarray, np.ndarray] | None = None,
    ):
        """reference=(mu, sigma): the reference statistics themselves (e.g. from EDM2's .pkl)."""
        if params is None:
            params = inception.load_params(weights, cache_dir)
        self.extractor = InceptionExtractor(params, resize=resize, batch_size=batch_size)
        if reference is not None:
            self.stats_path, (self.mu, self.sigma) = stats, tuple(np.asarray(a, np.float64) for a in reference)
        elif stats:
            self.stats_path, (self.mu, self.sigma) = stats, load_stats(stats)
        else:
            self.stats_path, (self.mu, self.sigma) = dataset_stats(data_cfg, self.extractor, cache_dir=cache_dir)

    def evaluate(self, samples: np.ndarray, labels: np.ndarray | None = None) -> dict[str, float]:
        del labels  # FID and IS are unconditional statistics
        return self.evaluate_images(inception.to_uint8(samples))

    def evaluate_images(self, images: np.ndarray) -> dict[str, float]:
        """FID and IS of uint8 images [N, H, W, 3]."""
        batches = (images[i : i + self.extractor.batch_size] for i in range(0, len(images), self.extractor.batch_size))
        stats, logits = self.extractor.statistics(batches, total=len(images), what="FID")
        mu, sigma = stats.gaussian()
        is_mean, is_std = inception_score(logits, min(IS_SPLITS, len(logits)))
        return {"fid": frechet.frechet_distance(mu, sigma, self.mu, self.sigma), "is": is_mean, "is_std": is_std}

    def floor(self) -> dict[str, float]:
        return {}
