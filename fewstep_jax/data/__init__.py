"""Embedded datasets (no download, always available): 2-D toy distributions and sklearn digits.

    info, batches = build_dataset(config.data, seed=config.seed, global_batch_size=B,
                                  process_index=jax.process_index(), process_count=jax.process_count())
    batch = next(batches)   # {'x': float32 [B // P, *info.shape], 'y': int32 [B // P]} (numpy)

The data config section (an ml_collections ConfigDict or a plain mapping):

    toy2d   name='toy2d', distribution in toy2d.DISTRIBUTIONS, conditional (optional, ignored:
            toy2d is unconditional, so y is always zeros and num_classes is 0)
    digits  name='digits', conditional (optional bool, default True: num_classes=10 and y holds
            the labels; False: num_classes=0 and y is zeros)

Any other key is an error: `validate` rejects it before anything is built.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from fewstep_jax.data import digits, pipeline, toy2d
from fewstep_jax.data.pipeline import BatchIterator

KNOWN_DATASETS: tuple[str, ...] = ("toy2d", "digits")

# Accepted keys per dataset; 'name' is common to all.
_DATASET_KEYS: dict[str, tuple[str, ...]] = {
    "toy2d": ("name", "distribution", "conditional"),
    "digits": ("name", "conditional"),
}

DEFAULT_TOY_REFERENCE_SIZE = 10_000

__all__ = [
    "KNOWN_DATASETS",
    "BatchIterator",
    "DatasetInfo",
    "build_dataset",
    "dataset_info",
    "reference_data",
    "validate",
]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the model and method need to know about a dataset.

    name: 'toy2d' or 'digits'. shape: one example, (2,) or (8, 8, 1). num_classes: 0 for
    unconditional data, else labels are 0..num_classes-1. data_std: per-element std of the
    training data (EDM-style preconditioning uses it as sigma_data).
    """

    name: str
    shape: tuple[int, ...]
    num_classes: int
    data_std: float


def _keys(data_cfg: Any) -> list[str]:
    if not hasattr(data_cfg, "keys") or not hasattr(data_cfg, "get"):
        raise ValueError(f"the data config must be a ConfigDict or a mapping, got {type(data_cfg).__name__}")
    return list(data_cfg.keys())


#: Real datasets named by the paper configs; their tfds-backed sources are not in this version.
REAL_DATASETS = ("cifar10", "imagenet64", "celebahq256", "imagenet256_latents")


def validate(data_cfg: Any) -> None:
    """Raises ValueError naming the problem for an unknown dataset, distribution, key or bad option.

    Cheap (reads no data), so it can run before anything is built or compiled.
    """
    keys = _keys(data_cfg)
    name = data_cfg.get("name")
    if name in REAL_DATASETS:
        raise ValueError(
            f"dataset {name!r} is a real dataset read through tensorflow-datasets; this version of fewstep_jax "
            f"ships only the embedded datasets ({', '.join(KNOWN_DATASETS)}). The paper configs that name it "
            "record the published hyperparameters and run once the tfds-backed sources are added."
        )
    if not isinstance(name, str) or name not in _DATASET_KEYS:
        raise ValueError(f"unknown dataset data.name={name!r}; known embedded datasets: {', '.join(KNOWN_DATASETS)}")
    unknown = sorted(set(keys) - set(_DATASET_KEYS[name]))
    if unknown:
        raise ValueError(
            f"unknown data config key(s) {unknown} for dataset {name!r}; accepted: {list(_DATASET_KEYS[name])}"
        )
    conditional = data_cfg.get("conditional", name == "digits")
    if not isinstance(conditional, (bool, np.bool_)):
        raise ValueError(f"data.conditional must be a bool, got {conditional!r}")
    if name == "toy2d":
        distribution = data_cfg.get("distribution")
        if distribution is None:
            raise ValueError(f"toy2d needs data.distribution, one of: {', '.join(toy2d.DISTRIBUTIONS)}")
        toy2d.check_distribution(distribution)


def dataset_info(data_cfg: Any) -> DatasetInfo:
    """DatasetInfo of a (validated here) data config; cheap apart from the first digits load."""
    validate(data_cfg)
    if data_cfg.get("name") == "toy2d":
        distribution = data_cfg.get("distribution")
        return DatasetInfo("toy2d", (2,), 0, toy2d.data_std(distribution))
    conditional = bool(data_cfg.get("conditional", True))
    return DatasetInfo("digits", digits.SHAPE, digits.NUM_CLASSES if conditional else 0, digits.data_std())


def build_dataset(
    data_cfg: Any,
    *,
    seed: int,
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
) -> tuple[DatasetInfo, BatchIterator]:
    """The dataset's info and this process's infinite, resumable batch iterator.

    Global batch k depends only on (seed, k); process p gets rows [p L, (p + 1) L) of it with
    L = global_batch_size // process_count (ValueError when not divisible). See pipeline.py.
    """
    info = dataset_info(data_cfg)
    layout = dict(
        seed=seed, global_batch_size=global_batch_size, process_index=process_index, process_count=process_count
    )
    if info.name == "toy2d":
        distribution = data_cfg.get("distribution")
        iterator: BatchIterator = pipeline.FreshSampleIterator(
            lambda n, rng: toy2d.sample(distribution, n, rng), **layout
        )
    else:
        x, y = digits.load_split("train")
        labels = y if info.num_classes else np.zeros_like(y)  # unconditional: never leak labels
        iterator = pipeline.EpochShuffleIterator(x, labels, **layout)
    return info, iterator


def reference_data(data_cfg: Any, split: str, *, n: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Real data for evaluation: {'x': float32 [n, *shape], 'y': int32 [n]}.

    toy2d: n fresh exact samples (default 10,000) drawn with `seed`; 'train' and 'test' are
    independent streams. y is zeros.
    digits: the fixed 'train' (1,297) or held-out 'test' (500) split, always with the true
    labels (whatever data.conditional says); with `n`, a subset of n distinct images chosen
    with `seed`.
    """
    validate(data_cfg)
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0):
        raise ValueError(f"n must be a non-negative integer or None, got {n!r}")
    if data_cfg.get("name") == "toy2d":
        stream = pipeline.STREAM_TOY_REFERENCE_TRAIN if split == "train" else pipeline.STREAM_TOY_REFERENCE_TEST
        size = DEFAULT_TOY_REFERENCE_SIZE if n is None else int(n)
        x = toy2d.sample(data_cfg.get("distribution"), size, pipeline.stream_rng(stream, seed, 0))
        return {"x": x, "y": np.zeros((size,), np.int32)}
    x, y = digits.load_split(split)
    if n is None:
        return {"x": x.copy(), "y": y.copy()}
    if n > len(x):
        raise ValueError(f"asked for n={n} digits '{split}' images but the split has only {len(x)}")
    rng = pipeline.stream_rng(pipeline.STREAM_DIGITS_REFERENCE_SUBSET, seed, digits.SPLITS.index(split))
    idx = rng.permutation(len(x))[:n]
    return {"x": x[idx], "y": y[idx]}
