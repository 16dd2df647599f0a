"""scikit-learn's digits: 1,797 real 8x8 grayscale images with labels, shipped inside the package.

Images are 0..16 integers (4x4-pixel block counts); we map them to float32 in [-1, 1] by
x / 8 - 1 and store them NHWC [N, 8, 8, 1]. Labels are int32 0..9.

The held-out split is FIXED (independent of any training seed): for each class c the images of
class c are permuted with np.random.default_rng((SPLIT_SEED, c)) and the first 50 go to 'test'.
That gives 500 balanced 'test' images and 1,297 'train' images. Both index lists are sorted, so
the arrays are in the original sklearn order. Loaded arrays are cached in-process and read-only.
"""

from __future__ import annotations

import functools

import numpy as np

SHAPE: tuple[int, ...] = (8, 8, 1)
NUM_CLASSES = 10
TEST_PER_CLASS = 50
SPLIT_SEED = 20_231_797  # any fixed value; changing it changes the held-out split and every metric
SPLITS: tuple[str, ...] = ("train", "test")


def _read_only(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)  # cached arrays are shared: an accidental in-place edit must fail
    return a


@functools.lru_cache(maxsize=1)
def load_all() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 images and labels: (x float32 [1797, 8, 8, 1] in [-1, 1], y int32 [1797])."""
    from sklearn import datasets  # imported lazily: only digits users pay for sklearn's import

    raw = datasets.load_digits()
    x = (raw.images.astype(np.float32) / 8.0 - 1.0)[..., None]
    y = raw.target.astype(np.int32)
    return _read_only(x), _read_only(y)


@functools.lru_cache(maxsize=1)
def split_indices() -> tuple[np.ndarray, np.ndarray]:
    """(train indices int64 [1297], test indices int64 [500]) into `load_all()`, both sorted."""
    _, y = load_all()
    test = []
    for c in range(NUM_CLASSES):
        members = np.flatnonzero(y == c)
        order = np.random.default_rng((SPLIT_SEED, c)).permutation(len(members))
        test.append(members[order[:TEST_PER_CLASS]])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(y)), test_idx)  # sorted by construction
    return _read_only(train_idx), _read_only(test_idx)


@functools.lru_cache(maxsize=len(SPLITS))
def load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of `split` ('train' or 'test'): (x float32 [N, 8, 8, 1], y int32 [N])."""
    if split not in SPLITS:
        raise ValueError(f"unknown digits split {split!r}; known: {', '.join(SPLITS)}")
    x, y = load_all()
    idx = split_indices()[SPLITS.index(split)]
    return _read_only(x[idx]), _read_only(y[idx])


@functools.lru_cache(maxsize=1)
def data_std() -> float:
    """Per-element std of the training images (in the [-1, 1] scale)."""
    x, _ = load_split("train")
    return float(np.std(x.astype(np.float64)))
