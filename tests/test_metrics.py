"""Tests for fewstep_jax.metrics: Frechet distance, toy sample distances, the digits evaluator."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
import pytest
import scipy.linalg
import scipy.stats

from fewstep_jax import metrics
from fewstep_jax.data import digits as digits_data
from fewstep_jax.data import toy2d
from fewstep_jax.metrics import digits as digits_metrics
from fewstep_jax.metrics.frechet import frechet_distance, gaussian_stats
from fewstep_jax.metrics.toy import Toy2DEvaluator, energy_distance, sliced_wasserstein


def random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def random_rotation(rng: np.random.Generator, d: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return q


# ---------------------------------------------------------------------------- Frechet distance


def test_frechet_diagonal_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(16), rng.standard_normal(16)
    a, b = rng.uniform(0.1, 3.0, 16), rng.uniform(0.1, 3.0, 16)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    np.testing.assert_allclose(frechet_distance(mu1, np.diag(a), mu2, np.diag(b)), expected, rtol=1e-10)


def test_frechet_commuting_full_covariances_closed_form():
    rng = np.random.default_rng(1)
    q = random_rotation(rng, 12)  # same eigenvectors -> S1 S2 = S2 S1
    a, b = rng.uniform(0.05, 4.0, 12), rng.uniform(0.05, 4.0, 12)
    mu1, mu2 = rng.standard_normal(12), rng.standard_normal(12)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    np.testing.assert_allclose(got, expected, rtol=1e-9)


def test_frechet_one_dimensional_is_w2_squared():
    # W2^2(N(m1, s1^2), N(m2, s2^2)) = (m1 - m2)^2 + (s1 - s2)^2.
    got = frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-0.5]), np.array([[0.25]]))
    np.testing.assert_allclose(got, 1.5**2 + 1.5**2, rtol=1e-12)


def test_frechet_general_matches_sqrtm_route_and_is_symmetric():
    rng = np.random.default_rng(2)
    s1, s2 = random_spd(rng, 20), random_spd(rng, 20)
    mu1, mu2 = rng.standard_normal(20), rng.standard_normal(20)
    # Independent route (the classic FID code path), fine for well-conditioned matrices.
    reference = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * np.real(scipy.linalg.sqrtm(s1 @ s2)))
    got = frechet_distance(mu1, s1, mu2, s2)
    np.testing.assert_allclose(got, reference, rtol=1e-8)
    np.testing.assert_allclose(frechet_distance(mu2, s2, mu1, s1), got, rtol=1e-10)


def test_frechet_zero_for_identical_stats():
    rng = np.random.default_rng(3)
    s, mu = random_spd(rng, 32), rng.standard_normal(32)
    assert frechet_distance(mu, s, mu, s) < 1e-9
    rank_deficient = rng.standard_normal((5, 32))
    s_low = rank_deficient.T @ rank_deficient
    assert frechet_distance(mu, s_low, mu, s_low) < 1e-9


def test_frechet_singular_covariance_is_finite_and_exact():
    rng = np.random.default_rng(4)
    # Rank-deficient features: 10 samples in 64 dims (rank <= 9), like a collapsed generator.
    few = rng.standard_normal((10, 64))
    many = rng.standard_normal((2000, 64))
    value = frechet_distance(*gaussian_stats(few), *gaussian_stats(many))
    assert np.isfinite(value) and value > 0
    # All samples identical: zero covariance; FD = |mu diff|^2 + tr(S2) exactly.
    mu2, s2 = gaussian_stats(many)
    np.testing.assert_allclose(frechet_distance(np.zeros(64), np.zeros((64, 64)), mu2, s2), mu2 @ mu2 + np.trace(s2))
    # Singular diagonal pair against the closed form.
    a = np.r_[rng.uniform(0.5, 2.0, 8), np.zeros(8)]
    b = np.r_[np.zeros(4), rng.uniform(0.5, 2.0, 12)]
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    np.testing.assert_allclose(frechet_distance(np.zeros(16), np.diag(a), np.zeros(16), np.diag(b)), expected)


def test_gaussian_stats_and_input_checks():
    f = np.random.default_rng(5).standard_normal((50, 3)).astype(np.float32)
    mu, sigma = gaussian_stats(f)
    assert mu.dtype == np.float64 and sigma.shape == (3, 3)
    np.testing.assert_allclose(mu, f.astype(np.float64).mean(0))
    np.testing.assert_allclose(sigma, np.cov(f.astype(np.float64), rowvar=False))
    with pytest.raises(ValueError):
        gaussian_stats(f[:1])
    with pytest.raises(ValueError):
        frechet_distance(mu, sigma, mu[:2], sigma[:2, :2])
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(mu * np.nan, sigma, mu, sigma)


# ---------------------------------------------------------------------------- toy distances


def test_sliced_wasserstein_of_a_shift_is_analytic():
    # y = x + c: every projection is shifted by c.theta (sorting preserved), so W2^2 = (c.theta)^2
    # and E_theta[(c.theta)^2] = |c|^2 / 2 for uniform directions in 2-D: SW2 = |c| / sqrt(2).
    x = np.random.default_rng(6).standard_normal((1000, 2))
    c = np.array([0.6, -0.8])
    got = sliced_wasserstein(x, x + c, num_projections=20_000, seed=1)
    np.testing.assert_allclose(got, np.linalg.norm(c) / np.sqrt(2), rtol=0.02)


def test_sliced_wasserstein_one_dimensional_is_exact_w2():
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((300, 1)), rng.exponential(size=(300, 1))
    w2 = np.sqrt(np.mean((np.sort(x[:, 0]) - np.sort(y[:, 0])) ** 2))  # the only direction is +-1
    np.testing.assert_allclose(sliced_wasserstein(x, y, num_projections=8), w2, rtol=1e-12)


def test_sliced_wasserstein_zero_for_identical_clouds_and_unequal_sizes():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((500, 2))
    assert sliced_wasserstein(x, x) == 0.0
    assert sliced_wasserstein(x, rng.permutation(x)) == 0.0
    # Repeating every point leaves the empirical distribution unchanged.
    assert sliced_wasserstein(x, np.repeat(x, 3, axis=0)) < 1e-12
    assert sliced_wasserstein(x, np.repeat(x, 3, axis=0) + [1.0, 0.0]) > 0.5
    with pytest.raises(ValueError):
        sliced_wasserstein(x, rng.standard_normal((500, 3)))


def test_energy_distance_small_cases_and_scipy():
    np.testing.assert_allclose(energy_distance(np.array([[0.0]]), np.array([[1.0]])), 2.0)
    # 2 * 1 - (0 + 2 + 2 + 0) / 4 - 0 = 1.
    np.testing.assert_allclose(energy_distance(np.array([[0.0], [2.0]]), np.array([[1.0]])), 1.0)
    rng = np.random.default_rng(9)
    u, v = rng.standard_normal(400), rng.normal(0.3, 1.5, 300)
    # scipy.stats.energy_distance (1-D) is the square root of the same V-statistic.
    np.testing.assert_allclose(energy_distance(u[:, None], v[:, None]), scipy.stats.energy_distance(u, v) ** 2)


def test_energy_distance_zero_for_identical_and_grows_with_shift():
    x = np.random.default_rng(10).standard_normal((800, 2))
    assert energy_distance(x, x) < 1e-12
    values = [energy_distance(x, x + [s, 0.0]) for s in (0.1, 0.5, 1.0, 2.0)]
    assert values[0] > 0 and np.all(np.diff(values) > 0)


# ---------------------------------------------------------------------------- toy evaluator


@pytest.mark.parametrize("distribution", ["checkerboard", "8gaussians", "moons"])
def test_toy_evaluator_floor_small_and_perturbations_worse(distribution):
    ev = metrics.build_evaluator(ml_collections.ConfigDict(dict(name="toy2d", distribution=distribution)))
    assert isinstance(ev, Toy2DEvaluator) and isinstance(ev, metrics.Evaluator)
    assert ev.primary == "swd" and ev.num_samples == 2000
    floor = ev.floor()
    assert set(floor) == {"swd", "energy"}
    # The SWD floor of 8gaussians (~0.11) is the largest: at n=2000 the mode weights fluctuate
    # by ~sqrt(n/8) points, and moving mass between modes 1.5 apart is expensive in W2.
    assert 0 < floor["swd"] < 0.15 and 0 < floor["energy"] < 0.01
    assert ev.evaluate(ev.reference) == {"swd": 0.0, "energy": 0.0}
    fresh = ev.evaluate(toy2d.sample(distribution, ev.num_samples, np.random.default_rng(99)))
    assert fresh["swd"] < 2 * floor["swd"] and fresh["energy"] < 3 * floor["energy"]  # exact = floor-like
    exact = toy2d.sample(distribution, ev.num_samples, np.random.default_rng(99))
    for worse in (ev.evaluate(exact + np.float32([0.5, 0.0])), ev.evaluate(1.5 * exact)):
        assert worse["swd"] > 2 * max(floor["swd"], fresh["swd"])
        assert worse["energy"] > 20 * max(floor["energy"], fresh["energy"])


def test_toy_evaluator_input_handling():
    ev = Toy2DEvaluator("moons", num_samples=500)
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        ev.evaluate(np.zeros((500, 3)))
    with pytest.raises(ValueError, match="unknown toy2d distribution"):
        Toy2DEvaluator("spiral")
    bad = ev.reference.copy()
    bad[3] = np.nan
    assert ev.evaluate(bad) == {"swd": float("inf"), "energy": float("inf")}
    # Other sample counts work (quantile interpolation for the SWD).
    assert np.isfinite(ev.evaluate(ev.reference[:123])["swd"])


# ---------------------------------------------------------------------------- digits evaluator


@pytest.fixture(scope="module")
def digits_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("fewstep_cache")


@pytest.fixture(scope="module")
def digits_evaluator(digits_cache):
    config = ml_collections.ConfigDict(dict(name="digits", conditional=True))
    return metrics.build_evaluator(config, cache_dir=digits_cache)


def test_digits_classifier_trains_and_is_accurate(digits_evaluator):
    """Its training time is recorded (train_seconds), not asserted: speed belongs to the benchmarks."""
    ev = digits_evaluator
    assert isinstance(ev, metrics.Evaluator)
    assert ev.primary == "fd" and ev.num_samples == 500
    assert not ev.loaded_from_cache and ev.cache_path.exists()
    assert ev.train_seconds > 0
    assert ev.accuracy >= 0.95


def test_digits_floor_far_below_degenerate_samplers(digits_evaluator):
    ev = digits_evaluator
    floor = ev.floor()
    assert set(floor) == {"fd", "fd_heldout", "coverage", "class_entropy", "label_accuracy"}
    assert floor["coverage"] == 1.0 and floor["class_entropy"] > 0.99 and floor["label_accuracy"] >= 0.95
    noise = ev.evaluate(np.random.default_rng(0).uniform(-1, 1, (500, 8, 8, 1)))
    x_train, _ = digits_data.load_split("train")
    mean_image = ev.evaluate(np.repeat(x_train.mean(axis=0, keepdims=True), 500, axis=0))
    assert noise["fd"] > 20 * floor["fd"]
    assert mean_image["fd"] > 20 * floor["fd"]
    # One image -> one predicted class.
    assert mean_image["coverage"] == 0.1 and mean_image["class_entropy"] == 0.0
    assert "label_accuracy" not in noise
    # Real but class-collapsed images (only zeros and ones): low coverage and a clearly worse FD.
    x_test, y_test = digits_data.load_split("test")
    collapsed = ev.evaluate(x_test[y_test < 2], y_test[y_test < 2])
    assert collapsed["coverage"] == 0.2 and collapsed["fd"] > 5 * floor["fd"]


def test_digits_metrics_definitions(digits_evaluator):
    ev = digits_evaluator
    x_test, y_test = digits_data.load_split("test")
    predicted = ev.predict(x_test)
    np.testing.assert_allclose(ev.floor()["label_accuracy"], np.mean(predicted == y_test))
    assert ev.floor()["label_accuracy"] == ev.accuracy
    # Requested shares 0.6 / 0.36 / 0.04: the third class is present but below half of uniform,
    # so it does not count as covered.
    order = np.argsort(y_test, kind="stable")
    pick = np.concatenate([order[y_test[order] == c][:k] for c, k in ((0, 30), (1, 18), (2, 2))])
    got = ev.evaluate(x_test[pick])
    share = np.bincount(ev.predict(x_test[pick]), minlength=10) / 50
    assert np.any((share > 0) & (share < 0.05))  # the case that separates the definition
    nz = share[share > 0]
    np.testing.assert_allclose(got["class_entropy"], -(nz * np.log(nz)).sum() / np.log(10))
    assert got["coverage"] == np.mean(share >= 0.05) == 0.2
    # Features match the FD definition against the train split's statistics.
    fd = frechet_distance(*gaussian_stats(ev.features(x_test)), ev.train_mu, ev.train_sigma)
    np.testing.assert_allclose(ev.floor()["fd"], fd)


def test_digits_input_handling(digits_evaluator):
    ev = digits_evaluator
    x_test, y_test = digits_data.load_split("test")
    with pytest.raises(ValueError, match=r"\[N, 8, 8, 1\]"):
        ev.evaluate(x_test[..., 0])
    with pytest.raises(ValueError, match="labels"):
        ev.evaluate(x_test, y_test[:10])
    with pytest.raises(ValueError, match="labels"):
        ev.evaluate(x_test, y_test + 5)
    # Out-of-range values are clipped to [-1, 1] before the classifier sees them.
    assert ev.evaluate(3.0 * x_test) == ev.evaluate(np.clip(3.0 * x_test, -1, 1))
    nan = x_test.copy()
    nan[0, 0, 0, 0] = np.nan
    assert ev.evaluate(nan, y_test)["fd"] == float("inf")


def test_digits_classifier_cache_is_reused(digits_evaluator, digits_cache):
    first = digits_evaluator
    mtime = first.cache_path.stat().st_mtime_ns
    second = digits_metrics.DigitsEvaluator(cache_dir=digits_cache)
    assert second.loaded_from_cache and second.train_seconds is None
    assert second.cache_path == first.cache_path and second.cache_path.stat().st_mtime_ns == mtime
    x_test, _ = digits_data.load_split("test")
    np.testing.assert_array_equal(second.features(x_test), first.features(x_test))
    assert second.floor() == first.floor()


def test_digits_classifier_recipe_hash_and_deterministic_training():
    base = digits_metrics.ClassifierRecipe()
    assert digits_metrics.recipe_hash(base) == digits_metrics.recipe_hash(digits_metrics.ClassifierRecipe())
    changed = digits_metrics.ClassifierRecipe(num_steps=501)
    assert digits_metrics.recipe_hash(base) != digits_metrics.recipe_hash(changed)
    short = digits_metrics.ClassifierRecipe(num_steps=20)
    x, y = digits_data.load_split("train")
    a, b = digits_metrics.train_classifier(short, x, y), digits_metrics.train_classifier(short, x, y)
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b) == 8  # 4 Dense layers: kernel + bias
    for la, lb in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(la, lb)


def test_digits_unreadable_cache_retrains_and_weak_classifier_raises(tmp_path):
    weak = digits_metrics.ClassifierRecipe(num_steps=3)  # far too short to reach 95%
    path = tmp_path / f"digits_classifier_{digits_metrics.recipe_hash(weak)}.msgpack"
    path.write_bytes(b"not msgpack params")
    with pytest.raises(RuntimeError, match="held-out accuracy"):
        digits_metrics.DigitsEvaluator(cache_dir=tmp_path, recipe=weak)
    assert path.read_bytes() != b"not msgpack params"  # retrained and rewritten


def test_fd_heldout_exposes_memorization(digits_evaluator):
    """Reproduced training images score better on fd (vs the train split) than on fd_heldout."""
    train_x, _ = digits_data.load_split("train")
    memorized = digits_evaluator.evaluate(train_x[np.random.default_rng(0).permutation(len(train_x))[:500]])
    assert memorized["fd_heldout"] > 1.5 * memorized["fd"]
    assert digits_evaluator.floor()["fd_heldout"] == pytest.approx(memorized["fd_heldout"])
