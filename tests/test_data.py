"""Tests for fewstep_jax.data: embedded datasets and the deterministic multi-host pipeline."""

from __future__ import annotations

import json

import ml_collections
import numpy as np
import pytest
from scipy import spatial

from fewstep_jax import data
from fewstep_jax.data import digits, pipeline, toy2d


def toy_cfg(distribution: str = "checkerboard", **extra) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(name="toy2d", distribution=distribution, **extra))


def digits_cfg(conditional: bool = True) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(name="digits", conditional=conditional))


def take(iterator: data.BatchIterator, k: int) -> list[dict[str, np.ndarray]]:
    return [next(iterator) for _ in range(k)]


def assert_batches_equal(a: list[dict[str, np.ndarray]], b: list[dict[str, np.ndarray]]) -> None:
    assert len(a) == len(b)
    for ba, bb in zip(a, b):
        np.testing.assert_array_equal(ba["x"], bb["x"])
        np.testing.assert_array_equal(ba["y"], bb["y"])


# ---------------------------------------------------------------------------- toy2d


@pytest.mark.parametrize("distribution", toy2d.DISTRIBUTIONS)
def test_toy_batches_shape_dtype_range(distribution):
    info, it = data.build_dataset(toy_cfg(distribution), seed=0, global_batch_size=256)
    assert info == data.DatasetInfo("toy2d", (2,), 0, info.data_std)
    assert 1.0 < info.data_std < 1.6  # "unit-ish" scale
    batch = next(it)
    assert batch["x"].shape == (256, 2) and batch["x"].dtype == np.float32
    assert batch["y"].shape == (256,) and batch["y"].dtype == np.int32
    assert np.all(batch["y"] == 0)
    assert np.all(np.abs(batch["x"]) < 4.0)


def test_toy_conditional_flag_is_ignored():
    info, it = data.build_dataset(toy_cfg(conditional=True), seed=0, global_batch_size=8)
    assert info.num_classes == 0 and np.all(next(it)["y"] == 0)


def test_checkerboard_lands_only_on_black_squares_uniformly():
    x = toy2d.sample("checkerboard", 40_000, np.random.default_rng(0)).astype(np.float64)
    assert np.all((x >= -2) & (x <= 2))
    cells = np.floor(x).astype(int)
    assert np.all((cells[:, 0] + cells[:, 1]) % 2 == 0)
    # Eight black squares, each hit with probability 1/8 (binomial std ~ 66 at n=40k).
    _, counts = np.unique(cells, axis=0, return_counts=True)
    assert len(counts) == 8 and np.all(np.abs(counts - 5000) < 400)


def test_eight_gaussians_cluster_around_centres():
    x = toy2d.sample("8gaussians", 40_000, np.random.default_rng(1)).astype(np.float64)
    centres = toy2d.gaussian_centres()
    dist = np.linalg.norm(x[:, None, :] - centres[None], axis=-1)
    nearest = dist.argmin(axis=1)
    assert np.all(dist.min(axis=1) < 6 * toy2d.GAUSSIANS_STD)
    assert np.all(np.abs(np.bincount(nearest, minlength=8) - 5000) < 400)
    residual = x - centres[nearest]
    np.testing.assert_allclose(residual.std(axis=0), toy2d.GAUSSIANS_STD, rtol=0.03)
    np.testing.assert_allclose(residual.mean(axis=0), 0.0, atol=0.005)


def _distance_to_curve(x: np.ndarray, curve: np.ndarray) -> np.ndarray:
    """Distance of each point [N, 2] to a densely sampled curve [M, 2] (exact up to the spacing)."""
    return spatial.cKDTree(curve).query(x)[0]


def test_moons_and_swissroll_lie_near_their_curves():
    rng = np.random.default_rng(2)
    t = np.linspace(0, np.pi, 20_000)
    upper = np.stack([2 * np.cos(t) - 1, 2 * np.sin(t) - 0.5], axis=1)
    moons = toy2d.sample("moons", 3000, rng).astype(np.float64)
    to_upper, to_lower = _distance_to_curve(moons, upper), _distance_to_curve(moons, -upper)
    assert np.all(np.minimum(to_upper, to_lower) < 6 * toy2d.MOONS_NOISE)
    assert abs(np.mean(to_upper < to_lower) - 0.5) < 0.05  # a fair coin picks the moon (std 0.009)
    s = np.linspace(1.5 * np.pi, 4.5 * np.pi, 40_000)
    spiral = np.stack([s * np.cos(s), s * np.sin(s)], axis=1) / 5
    roll = toy2d.sample("swissroll", 3000, rng).astype(np.float64)
    assert np.all(_distance_to_curve(roll, spiral) < 6 * toy2d.SWISSROLL_NOISE)


def test_rings_radii():
    x = toy2d.sample("rings", 20_000, np.random.default_rng(3)).astype(np.float64)
    radius = np.linalg.norm(x, axis=1)
    residual = radius[:, None] - np.asarray(toy2d.RINGS_RADII)[None]
    ring = np.abs(residual).argmin(axis=1)
    assert np.all(np.abs(residual).min(axis=1) < 6 * toy2d.RINGS_NOISE)
    assert np.all(np.abs(np.bincount(ring) - 5000) < 350)


def test_toy_data_std_matches_closed_forms():
    np.testing.assert_allclose(toy2d.data_std("checkerboard"), 2 / np.sqrt(3), rtol=0.01)  # U[-2, 2]
    np.testing.assert_allclose(
        toy2d.data_std("8gaussians"), np.sqrt(toy2d.GAUSSIANS_RADIUS**2 / 2 + toy2d.GAUSSIANS_STD**2), rtol=0.01
    )
    rings = np.sqrt(np.mean(np.square(toy2d.RINGS_RADII)) / 2 + toy2d.RINGS_NOISE**2)
    np.testing.assert_allclose(toy2d.data_std("rings"), rings, rtol=0.01)


def test_toy_determinism_and_fresh_batches():
    batches = lambda seed: take(data.build_dataset(toy_cfg("moons"), seed=seed, global_batch_size=64)[1], 3)
    a, b, c = batches(7), batches(7), batches(8)
    assert_batches_equal(a, b)
    assert not np.array_equal(a[0]["x"], c[0]["x"])
    assert not np.array_equal(a[0]["x"], a[1]["x"])  # every step is a fresh draw


def test_toy_batches_do_not_reuse_the_reference_stream():
    # SeedSequence pads with zeros, so naive (seed, step) derivations collide with `seed` alone.
    _, it = data.build_dataset(toy_cfg(), seed=0, global_batch_size=16)
    ref = data.reference_data(toy_cfg(), "train", n=16, seed=0)["x"]
    assert not np.array_equal(next(it)["x"], ref)
    assert not np.array_equal(next(it)["x"], toy2d.sample("checkerboard", 16, np.random.default_rng(0)))


# ---------------------------------------------------------------------------- digits


def test_digits_split_is_fixed_balanced_and_disjoint():
    train_idx, test_idx = digits.split_indices()
    assert len(train_idx) == 1297 and len(test_idx) == 500
    assert len(np.intersect1d(train_idx, test_idx)) == 0
    np.testing.assert_array_equal(np.union1d(train_idx, test_idx), np.arange(1797))
    x_test, y_test = digits.load_split("test")
    x_train, y_train = digits.load_split("train")
    np.testing.assert_array_equal(np.bincount(y_test), np.full(10, 50))
    assert x_train.shape == (1297, 8, 8, 1) and x_test.shape == (500, 8, 8, 1)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int32
    # Values are the sklearn 0..16 counts mapped by x / 8 - 1.
    np.testing.assert_array_equal((x_train + 1) * 8, np.round((x_train + 1) * 8))
    assert x_train.min() == -1.0 and x_train.max() == 1.0
    # The held-out split does not depend on any seed.
    for seed in (0, 123):
        np.testing.assert_array_equal(data.reference_data(digits_cfg(), "test", seed=seed)["y"], y_test)


def test_digits_matches_sklearn():
    from sklearn.datasets import load_digits

    raw = load_digits()
    x, y = digits.load_all()
    np.testing.assert_allclose(x[..., 0], raw.images / 8 - 1, atol=1e-6)
    np.testing.assert_array_equal(y, raw.target)


def test_digits_cached_arrays_are_read_only():
    x, _ = digits.load_split("train")
    assert digits.load_split("train")[0] is x
    with pytest.raises(ValueError):
        x[0, 0, 0, 0] = 3.0


def test_digits_batches_shape_labels_and_info():
    info, it = data.build_dataset(digits_cfg(), seed=0, global_batch_size=32)
    assert info.name == "digits" and info.shape == (8, 8, 1) and info.num_classes == 10
    np.testing.assert_allclose(info.data_std, np.std(digits.load_split("train")[0]), rtol=1e-6)
    batch = next(it)
    assert batch["x"].shape == (32, 8, 8, 1) and batch["x"].dtype == np.float32
    assert batch["y"].dtype == np.int32 and batch["y"].shape == (32,)
    # Every (x, y) row is a training example with its own label.
    x_train, y_train = digits.load_split("train")
    order = it.epoch_order(0)[:32]
    np.testing.assert_array_equal(batch["x"], x_train[order])
    np.testing.assert_array_equal(batch["y"], y_train[order])

    info, it = data.build_dataset(digits_cfg(conditional=False), seed=0, global_batch_size=32)
    assert info.num_classes == 0 and np.all(next(it)["y"] == 0)


def test_epoch_order_covers_each_example_once_and_batches_straddle_epochs():
    n, b = 1297, 100  # 1297 is not a multiple of 100: batch 12 straddles the boundary
    ids = np.arange(n)
    it = pipeline.EpochShuffleIterator(ids[:, None].astype(np.float32), ids, seed=3, global_batch_size=b)
    stream = np.concatenate([batch["y"] for batch in take(it, 3 * n // b + 1)])
    for epoch in range(3):
        chunk = stream[epoch * n : (epoch + 1) * n]
        np.testing.assert_array_equal(np.sort(chunk), ids)  # a permutation: each example exactly once
        np.testing.assert_array_equal(chunk, it.epoch_order(epoch))
    assert not np.array_equal(stream[:n], stream[n : 2 * n])  # reshuffled every epoch
    # The real digits iterator: the first epoch has the train split's label histogram.
    _, real = data.build_dataset(digits_cfg(), seed=3, global_batch_size=b)
    first = np.concatenate([bt["y"] for bt in take(real, n // b + 1)])[:n]
    np.testing.assert_array_equal(np.bincount(first), np.bincount(digits.load_split("train")[1]))


def test_batch_larger_than_dataset_spans_epochs():
    ids = np.arange(5)
    it = pipeline.EpochShuffleIterator(ids[:, None].astype(np.float32), ids, seed=0, global_batch_size=12)
    y = next(it)["y"]
    np.testing.assert_array_equal(y[:5], it.epoch_order(0))
    np.testing.assert_array_equal(y[5:10], it.epoch_order(1))
    np.testing.assert_array_equal(y[10:], it.epoch_order(2)[:2])


def test_digits_determinism():
    batches = lambda seed: take(data.build_dataset(digits_cfg(), seed=seed, global_batch_size=64)[1], 3)
    a, b, c = batches(1), batches(1), batches(2)
    assert_batches_equal(a, b)
    assert not np.array_equal(a[0]["y"], c[0]["y"])


# ---------------------------------------------------------------------------- multi-host and state


@pytest.mark.parametrize("cfg", [digits_cfg(), toy_cfg("8gaussians")], ids=["digits", "toy2d"])
def test_process_slices_concatenate_to_the_global_batch(cfg):
    steps, b, p = 30, 64, 4  # 30 * 64 > 1297: digits crosses an epoch boundary
    _, single = data.build_dataset(cfg, seed=5, global_batch_size=b)
    local = [
        data.build_dataset(cfg, seed=5, global_batch_size=b, process_index=i, process_count=p)[1] for i in range(p)
    ]
    for step in range(steps):
        reference = next(single)
        parts = [next(it) for it in local]
        assert all(part["x"].shape[0] == b // p for part in parts)
        np.testing.assert_array_equal(np.concatenate([part["x"] for part in parts]), reference["x"])
        np.testing.assert_array_equal(np.concatenate([part["y"] for part in parts]), reference["y"])
        np.testing.assert_array_equal(local[0].global_batch(step)["x"], reference["x"])


def test_bad_process_layout_raises():
    with pytest.raises(ValueError, match="not divisible"):
        data.build_dataset(digits_cfg(), seed=0, global_batch_size=30, process_count=4)
    with pytest.raises(ValueError, match="process_index"):
        data.build_dataset(digits_cfg(), seed=0, global_batch_size=32, process_index=4, process_count=4)
    with pytest.raises(ValueError, match="seed"):
        data.build_dataset(digits_cfg(), seed=-1, global_batch_size=32)
    with pytest.raises(ValueError, match="global_batch_size"):
        data.build_dataset(toy_cfg(), seed=0, global_batch_size=0)


@pytest.mark.parametrize("cfg", [digits_cfg(), toy_cfg("moons")], ids=["digits", "toy2d"])
def test_state_roundtrip_resumes_exactly(cfg):
    _, it = data.build_dataset(cfg, seed=11, global_batch_size=96)
    take(it, 17)  # 17 * 96 > 1297: resumes in the second digits epoch
    state = json.loads(json.dumps(it.get_state()))
    assert state["step"] == 17
    expected = take(it, 5)

    _, resumed = data.build_dataset(cfg, seed=11, global_batch_size=96)
    resumed.set_state(state)
    assert_batches_equal(take(resumed, 5), expected)

    # Resuming on a different process layout continues the same global stream.
    halves = [
        data.build_dataset(cfg, seed=11, global_batch_size=96, process_index=i, process_count=2)[1] for i in (0, 1)
    ]
    for half in halves:
        half.set_state({"step": np.int64(17)})
    for batch in expected:
        np.testing.assert_array_equal(np.concatenate([next(h)["x"] for h in halves]), batch["x"])


@pytest.mark.parametrize(
    "state, message",
    [
        ({}, "'step'"),
        ({"step": -1}, ">= 0"),
        ({"step": 2.5}, "integer"),
        ({"step": "3"}, "integer"),
        ({"step": True}, "integer"),
        ({"step": 3, "epoch": 0}, "unknown key"),
        ({"step": 3, "seed": 12}, "seed=12"),
        ({"step": 3, "global_batch_size": 32}, "global_batch_size=32"),
        ([("step", 3)], "mapping"),
    ],
)
def test_bad_state_raises(state, message):
    _, it = data.build_dataset(digits_cfg(), seed=11, global_batch_size=96)
    next(it)
    with pytest.raises(ValueError, match=message):
        it.set_state(state)
    assert it.step == 1  # a rejected state leaves the iterator untouched


# ---------------------------------------------------------------------------- config validation


@pytest.mark.parametrize(
    "cfg, message",
    [
        (dict(name="mnist"), "unknown dataset.*toy2d, digits"),
        (dict(name="cifar10", distribution="moons"), r"\['distribution'\] for dataset 'cifar10'"),
        (dict(name=None), "unknown dataset"),
        (dict(name=["digits"]), "unknown dataset"),
        (dict(name="toy2d", distribution=["moons"]), "unknown toy2d distribution"),
        (dict(name="toy2d", distribution="spiral"), "unknown toy2d distribution 'spiral'.*checkerboard"),
        (dict(name="toy2d"), "needs data.distribution"),
        (dict(name="toy2d", distribution="moons", num_modes=3), r"unknown data config key\(s\) \['num_modes'\]"),
        (dict(name="digits", distribution="moons"), r"\['distribution'\] for dataset 'digits'"),
        (dict(name="digits", conditional="yes"), "conditional must be a bool"),
    ],
)
def test_validate_rejects_bad_configs(cfg, message):
    config = ml_collections.ConfigDict(cfg)
    with pytest.raises(ValueError, match=message):
        data.validate(config)
    with pytest.raises(ValueError, match=message):  # build_dataset validates before building
        data.build_dataset(config, seed=0, global_batch_size=8)


def test_validate_accepts_good_configs_and_plain_dicts():
    for distribution in toy2d.DISTRIBUTIONS:
        data.validate(toy_cfg(distribution))
    data.validate({"name": "digits"})
    data.validate(digits_cfg(conditional=False))
    with pytest.raises(ValueError, match="mapping"):
        data.validate("digits")


# ---------------------------------------------------------------------------- reference data


def test_reference_data():
    toy_test = data.reference_data(toy_cfg(), "test", n=500, seed=4)
    assert toy_test["x"].shape == (500, 2) and toy_test["x"].dtype == np.float32 and toy_test["y"].dtype == np.int32
    np.testing.assert_array_equal(toy_test["x"], data.reference_data(toy_cfg(), "test", n=500, seed=4)["x"])
    assert not np.array_equal(toy_test["x"], data.reference_data(toy_cfg(), "test", n=500, seed=5)["x"])
    assert not np.array_equal(toy_test["x"], data.reference_data(toy_cfg(), "train", n=500, seed=4)["x"])
    assert data.reference_data(toy_cfg(), "train")["x"].shape == (data.DEFAULT_TOY_REFERENCE_SIZE, 2)

    full = data.reference_data(digits_cfg(conditional=False), "train")
    assert full["x"].shape == (1297, 8, 8, 1)
    np.testing.assert_array_equal(full["y"], digits.load_split("train")[1])  # true labels always
    subset = data.reference_data(digits_cfg(), "test", n=100, seed=1)
    assert subset["x"].shape == (100, 8, 8, 1)
    x_test = digits.load_split("test")[0].reshape(500, -1)
    rows = [np.flatnonzero((x_test == row.reshape(1, -1)).all(axis=1)) for row in subset["x"]]
    assert all(len(r) >= 1 for r in rows)  # every subset image is a held-out image
    with pytest.raises(ValueError, match="only 500"):
        data.reference_data(digits_cfg(), "test", n=501)
    with pytest.raises(ValueError, match="split"):
        data.reference_data(digits_cfg(), "validation")
