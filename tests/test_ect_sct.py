"""EDM preconditioning, ECT and SCT against math: scaling identities, the mapping-function
stage table, the score-identity estimator against the exact posterior of a finite dataset,
phased boundary conditions, and exact consistency functions of a point mass."""

from __future__ import annotations

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import load_config, quiet

from fewstep_jax import experiment, methods, models, train
from fewstep_jax.data import DatasetInfo
from fewstep_jax.methods.ect import mapping_ratio, pseudo_huber, training_stage
from fewstep_jax.methods.edm import edm_scalings
from fewstep_jax.methods.sct import score_identity_eps

SIGMA_D = 0.5
INFO = DatasetInfo(name="vec", shape=(4,), num_classes=0, data_std=SIGMA_D)
COND = DatasetInfo(name="vec", shape=(4,), num_classes=3, data_std=SIGMA_D)
POINT = np.array([0.3, -0.7, 0.1, 0.5])  # the point-mass dataset


class ExactPointMass(nn.Module):
    """F with D(x, t) = POINT exactly under EDM preconditioning (the denoiser, and every phased
    consistency function, of a point mass), scaled by a trainable `a` (exact at a = 1)."""

    shift: float = 0.0

    @nn.compact
    def __call__(self, x, t, y=None, d=None, train=False):
        a = self.param("a", nn.initializers.ones, ())
        sigma = jnp.exp(4.0 * t)  # c_noise = ln(sigma) / 4
        c_skip, c_out, c_in, _ = edm_scalings(sigma, SIGMA_D, self.shift)
        x_raw = x / c_in[:, None]
        return a * (jnp.asarray(POINT, x.dtype) - c_skip[:, None] * x_raw) / c_out[:, None]


class GaussianDenoiser(nn.Module):
    """F with D(x, t) = S0^2 / (S0^2 + t^2) x: the exact denoiser of N(0, S0^2 I) data, which
    depends on x and t (so sampler tests see every coefficient)."""

    @nn.compact
    def __call__(self, x, t, y=None, d=None, train=False):
        sigma = jnp.exp(4.0 * t)
        c_skip, c_out, c_in, _ = edm_scalings(sigma, SIGMA_D)
        x_raw = x / c_in[:, None]
        D = (S0**2 / (S0**2 + sigma**2))[:, None] * x_raw
        return (D - c_skip[:, None] * x_raw) / c_out[:, None]


S0 = 0.7


def gauss_D(x, t):
    return S0**2 / (S0**2 + t**2) * x


class Wiggly(nn.Module):
    """A small nonlinear net with non-zero output at init (the suite's nets start at F = 0)."""

    @nn.compact
    def __call__(self, x, t, y=None, d=None, train=False):
        h = jnp.tanh(nn.Dense(16)(x) + nn.Dense(16)(jnp.stack([jnp.sin(t), jnp.cos(t)], -1)))
        return nn.Dense(x.shape[-1], kernel_init=nn.initializers.normal(0.5))(h)


def build(name, net=None, info=INFO, **cfg):
    return methods.build(ml_collections.ConfigDict(dict(name=name, sigma_d=SIGMA_D, **cfg)), net or Wiggly(), info)


def init(method, seed=0):
    return method.init_params(jax.random.key(seed), {"x": jnp.zeros((1, 4)), "y": jnp.zeros((1,), jnp.int32)})


def point_batch(n=32):
    return {"x": jnp.tile(jnp.asarray(POINT, jnp.float32), (n, 1)), "y": jnp.zeros((n,), jnp.int32)}


# ---------------------------------------------------------------------------
# EDM preconditioning


def test_edm_scalings_satisfy_the_unit_variance_identities():
    """EDM App. B.6: Var[c_in x_t] = 1 and the effective target (x0 - c_skip x_t) / c_out has unit variance."""
    with jax.enable_x64(True):
        t = jnp.asarray(np.geomspace(0.002, 80.0, 50))
        c_skip, c_out, c_in, c_noise = edm_scalings(t, SIGMA_D)
        np.testing.assert_allclose(c_in**2 * (t**2 + SIGMA_D**2), 1.0, rtol=1e-12)
        np.testing.assert_allclose((1 - c_skip) ** 2 * SIGMA_D**2 + c_skip**2 * t**2, c_out**2, rtol=1e-12)
        np.testing.assert_allclose(c_noise, np.log(np.asarray(t)) / 4, rtol=1e-12)


def test_denoiser_is_the_identity_at_the_bottom_of_the_schedule():
    """Train mode: D(x, t) -> x as t -> 0 (|D - x| = O(t)); eval mode with ECT's sigma_min shift:
    D(x, 0.003) == x exactly, whatever the network outputs."""
    method = build("ect")
    params = init(method)
    x = jax.random.normal(jax.random.key(1), (8, 4))
    errs = []
    for t in (1e-1, 1e-2, 1e-3):
        D = method.denoise(params["net"], x, jnp.full((8,), t), train=False)
        errs.append(float(jnp.max(jnp.abs(D - x))))
    assert errs[0] > 1e-3 and errs[1] < errs[0] / 5 and errs[2] < errs[1] / 5
    D = method.denoise(params["net"], x, jnp.full((8,), 0.003), shift=0.003)
    np.testing.assert_array_equal(np.asarray(D), np.asarray(x))


def test_edm_loss_and_sampler_are_exact_for_a_point_mass():
    method = build("edm", ExactPointMass(), label_dropout=0.0)
    params = init(method)
    loss, _ = method.loss(params, point_batch(), jax.random.key(0), jnp.asarray(0))
    assert float(loss) < 1e-9
    for sampler, steps in (("euler", 1), ("heun", 4)):
        x = method.sample(params, jax.random.key(1), num_samples=5, num_steps=steps, sampler=sampler)
        np.testing.assert_allclose(np.asarray(x), np.tile(POINT, (5, 1)), atol=1e-5)


# ---------------------------------------------------------------------------
# ECT: mapping function and loss


@pytest.mark.parametrize("offset", [1, 0])
def test_mapping_function_reproduces_the_stage_table(offset):
    """ECT eq. 9 with q = 2, k = 8, b = 1, d = 25k: r / t = max(0, 1 - n(t) / 2^(stage + offset)),
    stage s on steps s d + 1 .. (s + 1) d (stage 0 also on step 0; see the stage-boundary test)."""
    t = np.array([0.0, 0.05, 0.5, 2.0, 10.0, 80.0])
    n = 1 + 8 / (1 + np.exp(t))
    for stage in range(8):
        expected = np.maximum(0.0, 1 - n / 2.0 ** (stage + offset))
        for it in (stage * 25_000 + 1 if stage else 0, (stage + 1) * 25_000):
            got = mapping_ratio(jnp.asarray(t), it, q=2.0, d=25_000, k=8.0, b=1.0, offset=offset, smooth=False)
            np.testing.assert_allclose(np.asarray(got), expected, atol=1e-6)
    # Hand values: n(0) = 5, n(80) = 1 (to 1e-34): at t = 80, r / t = 1 - 2^-(stage + offset).
    table = mapping_ratio(jnp.asarray([0.0, 80.0]), 50_001, q=2.0, d=25_000, k=8.0, b=1.0, offset=1, smooth=False)
    np.testing.assert_allclose(np.asarray(table), [1 - 5 / 8, 1 - 1 / 8], atol=1e-6)
    far = [float(mapping_ratio(jnp.asarray(80.0), s * 25_000 + 1, q=2.0, d=25_000, k=8.0, b=1.0, offset=offset,
                               smooth=False)) for s in range(8)]  # fmt: skip
    hand = [0.5, 0.75, 0.875, 0.9375, 0.96875, 0.984375, 0.9921875, 0.99609375]
    np.testing.assert_allclose(far, hand if offset == 1 else [0.0] + hand[:7], atol=1e-6)
    if offset == 0:  # the paper's stage 0 is diffusion training: r = 0 everywhere
        zero = mapping_ratio(jnp.asarray(t), 0, q=2.0, d=25_000, k=8.0, b=1.0, offset=0, smooth=False)
        assert np.all(np.asarray(zero) == 0)


def test_smooth_mapping_meets_the_stages_at_stage_boundaries_and_lies_between():
    """SCT's smooth exponent equals ECT's stage at the first step of each stage (s d + 1) and lies
    between two stages inside one."""
    t = jnp.asarray([0.1, 1.0, 5.0])
    kw = dict(q=2.0, d=100, k=8.0, b=1.0, offset=1)
    for stage in range(1, 6):
        first = stage * 100 + 1
        at = mapping_ratio(t, first, smooth=True, **kw)
        np.testing.assert_allclose(np.asarray(at), np.asarray(mapping_ratio(t, first, smooth=False, **kw)))
        mid = np.asarray(mapping_ratio(t, first + 50, smooth=True, **kw))
        lo = np.asarray(mapping_ratio(t, first, smooth=False, **kw))
        hi = np.asarray(mapping_ratio(t, first + 100, smooth=False, **kw))
        assert np.all((mid >= lo) & (mid <= hi) & ((hi == lo) | (mid > lo)))
    steps = jnp.arange(0, 700)
    np.testing.assert_array_equal(
        np.floor(np.asarray(training_stage(steps, 100, smooth=True))), np.asarray(training_stage(steps, 100))
    )


def official_tick_loop_stages(num_steps: int, batch: int, tick_images: int, double_ticks: int) -> list[int]:
    """The stage each step's loss uses in the official ECT loop (locuslab/ect,
    training/ct_training_loop.py), bookkeeping only: the loss runs with the current stage, then
    cur_nimg += batch; a tick ends when cur_tick == 0 (tick 0 is one step) or when tick_images
    more images were seen; at a tick's end cur_tick += 1 and stage = (cur_tick - 1) // double_ticks."""
    stages, stage, cur_nimg, cur_tick, tick_start = [], 0, 0, 0, 0
    for _ in range(num_steps):
        stages.append(stage)
        cur_nimg += batch
        if cur_tick != 0 and cur_nimg < tick_start + tick_images:
            continue
        cur_tick, tick_start = cur_tick + 1, cur_nimg
        stage = max(stage, (cur_tick - 1) // double_ticks)
    return stages


@pytest.mark.parametrize("ticks_per_stage,steps_per_tick", [(1, 3), (3, 1), (2, 2)])
def test_stage_switches_when_the_official_tick_loop_does(ticks_per_stage, steps_per_tick):
    """Stage boundaries for d = ticks_per_stage * steps_per_tick steps per stage: steps 0 .. d in
    stage 0, then s d + 1 .. (s + 1) d in stage s (d = 3: 0 0 0 0 1 1 1 2 2 2 3), as the official
    tick loop schedules them; `iteration // d` switches one step early. Checked through the
    method's mapping r(t) too (k = 0: r / t = 1 - 2^-(stage + 1))."""
    d, batch = ticks_per_stage * steps_per_tick, 8
    official = official_tick_loop_stages(4 * d + 2, batch, steps_per_tick * batch, ticks_per_stage)
    by_hand = [0] + [(i - 1) // d for i in range(1, 4 * d + 2)]
    assert official == by_hand
    if d == 3:
        assert official == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4]
    steps = jnp.arange(4 * d + 2)
    np.testing.assert_array_equal(np.asarray(training_stage(steps, d)), official)
    assert [i // d for i in range(4 * d + 2)] != official  # the images-seen rule switches earlier
    method = build("ect", stage_length=d, k=0.0, q=2.0, stage_offset=1)
    t = jnp.full((1,), 1.7, jnp.float32)
    ratios = np.array([float(method.mapping(t, jnp.asarray(i, jnp.int32))[0]) / 1.7 for i in range(4 * d + 2)])
    np.testing.assert_allclose(ratios, 1.0 - 2.0 ** -(np.asarray(official) + 1.0), rtol=1e-6)


def test_pseudo_huber_and_its_gradient_at_zero():
    d = jnp.asarray([0.0, 1e-4, 4.0])
    np.testing.assert_allclose(np.asarray(pseudo_huber(d, 0.0)), [0.0, 1e-2, 2.0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(pseudo_huber(d, 0.06)), np.sqrt(np.asarray(d) + 0.0036) - 0.06, rtol=1e-5)
    g = jax.grad(lambda v: pseudo_huber(jnp.sum(v**2)[None], 0.0)[0])(jnp.zeros(3))
    assert np.all(np.isfinite(np.asarray(g)))


def test_ect_loss_by_hand_with_dropout():
    """A later stage (r > 0): L = mean_i ||f(x_t) - SG f(x_r)|| / (t - r), both passes with the
    ONLINE weights (not the EMA passed alongside) and the SAME dropout mask."""
    net = models.build(
        ml_collections.ConfigDict(dict(name="mlp", hidden=32, depth=2, emb_dim=16, dropout=0.3)),
        data_shape=(4,),
        num_classes=0,
    )
    method = build("ect", net)
    params = init(method)
    params = jax.tree.map(lambda p: p + 0.2 * jax.random.normal(jax.random.key(20), p.shape), params)
    ema = jax.tree.map(lambda p: p + 0.5, params)
    x0 = jax.random.normal(jax.random.key(21), (16, 4))
    rng, step = jax.random.key(22), 60_000  # stage 2: r / t = 1 - n(t) / 8
    loss, _ = method.loss(params, {"x": x0}, rng, jnp.asarray(step), methods.LossInputs(ema_params=ema))
    k_t, k_e, k_drop, _ = jax.random.split(rng, 4)
    t = method.log_normal_time(k_t, 16)
    r = t * np.maximum(0.0, 1 - (1 + 8 / (1 + np.exp(np.asarray(t)))) / 8)
    assert np.all(np.asarray(r) > 0)
    eps = jax.random.normal(k_e, x0.shape)
    x_t, x_r = x0 + t[:, None] * eps, x0 + r[:, None] * eps
    D = lambda x, s, key: method.denoise(params["net"], x, s, train=True, dropout_rng=key)  # noqa: E731
    expected = jnp.mean(jnp.sqrt(jnp.sum((D(x_t, t, k_drop) - D(x_r, r, k_drop)) ** 2, 1)) / (t - r))
    np.testing.assert_allclose(float(loss), float(expected), rtol=2e-4)
    other_mask = jnp.mean(jnp.sqrt(jnp.sum((D(x_t, t, k_drop) - D(x_r, r, jax.random.key(0))) ** 2, 1)) / (t - r))
    assert abs(float(other_mask) - float(expected)) > 1e-3 * float(expected)  # the mask matters


def test_ect_in_the_diffusion_stage_regresses_onto_the_clean_data():
    """With the paper's q^stage at stage 0, r = 0 for every sample: the target is x_r = x0 and
    the loss is mean_i ||D(x_t, t) - x0|| / t (weight 1 / (t - r)); checked by hand."""
    method = build("ect", stage_offset=0)
    params = init(method)
    x0 = jax.random.normal(jax.random.key(3), (16, 4))
    rng = jax.random.key(4)
    loss, metrics = method.loss(params, {"x": x0}, rng, jnp.asarray(0))
    k_t, k_e, _, _ = jax.random.split(rng, 4)
    t = method.log_normal_time(k_t, 16)
    x_t = x0 + t[:, None] * jax.random.normal(k_e, x0.shape)
    D = method.denoise(params["net"], x_t, t, train=True)
    expected = jnp.mean(jnp.sqrt(jnp.sum((D - x0) ** 2, axis=1)) / t)
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-4)
    assert float(metrics["at_edge_frac"]) == 1.0


@pytest.mark.parametrize(
    "name,cfg",
    [
        ("ect", {}),
        ("ect", {"weighting": "edm", "huber_c": 0.06}),
        ("sct", {"huber_c": 0.03}),
        ("sct", {"phase_edges": (0.2, 1.0, 5.0), "huber_c": 0.03}),
    ],
)
def test_losses_vanish_at_the_exact_consistency_function_of_a_point_mass(name, cfg):
    """For a point mass every trajectory is straight, so f(x_t, t) = f(x_r, r) exactly: the loss
    vanishes at a = 1 (and does not at a = 0.9); with c > 0 (smooth at 0) so does its gradient."""
    method = build(name, ExactPointMass(), **cfg)

    def loss_at(a):
        p = {"net": {"a": jnp.asarray(a)}}
        return method.loss(p, point_batch(), jax.random.key(5), jnp.asarray(300))[0]

    assert float(loss_at(1.0)) < 1e-4
    if cfg.get("huber_c", 0.0) > 0:
        assert abs(float(jax.grad(loss_at)(1.0))) < 1e-3
    assert float(loss_at(0.9)) > 1e-2


# ---------------------------------------------------------------------------
# SCT: the score-identity target


def test_sct_with_one_reference_is_ect_bit_for_bit():
    """|R| = 1 (the own sample only) gives ECT's target: identical loss, metrics and gradients."""
    ect, sct = build("ect", mapping="smooth"), build("sct", reference_set="own")
    params = init(ect)
    batch = {"x": jax.random.normal(jax.random.key(6), (16, 4))}
    for step in (0, 40_000, 90_000):
        args = (batch, jax.random.key(step), jnp.asarray(step))
        (la, ma), ga = jax.value_and_grad(lambda p: ect.loss(p, *args), has_aux=True)(params)
        (lb, mb), gb = jax.value_and_grad(lambda p: sct.loss(p, *args), has_aux=True)(params)
        assert np.asarray(la).tobytes() == np.asarray(lb).tobytes()
        for k in ma:
            assert np.asarray(ma[k]).tobytes() == np.asarray(mb[k]).tobytes(), k
        for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(mb["ref_own_weight"]) == 1.0


def exact_posterior_mean(x_t, t, data):
    """E[x0 | x_t] for the uniform distribution on `data` (float64 numpy)."""
    logits = -np.sum((x_t[:, None, :] - data[None]) ** 2, -1) / (2 * t[:, None] ** 2)
    w = np.exp(logits - logits.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    return w @ data


def test_reference_estimate_with_the_whole_dataset_is_the_posterior_mean():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(6, 4)) * 0.6
    own = rng.integers(0, 6, size=64)
    t = np.geomspace(0.05, 20.0, 64)
    eps = rng.normal(size=(64, 4))
    x_t = data[own] + t[:, None] * eps
    # References: every other data point (the own sample is always in the set).
    mask = np.arange(6)[None, :] != own[:, None]
    eps_hat, w = score_identity_eps(jnp.asarray(x_t, jnp.float32), jnp.asarray(t, jnp.float32),
                                    jnp.asarray(eps, jnp.float32), jnp.asarray(data, jnp.float32),
                                    jnp.asarray(mask))  # fmt: skip
    x0_hat = x_t - t[:, None] * np.asarray(eps_hat, np.float64)
    np.testing.assert_allclose(x0_hat, exact_posterior_mean(x_t, t, data), atol=2e-5)
    np.testing.assert_allclose(np.asarray(w).sum(1), 1.0, rtol=1e-6)
    assert np.all(np.asarray(w)[:, 1:][~mask] == 0)


def test_batch_estimate_converges_to_the_posterior_mean_as_the_reference_set_grows():
    rng = np.random.default_rng(1)
    data = rng.normal(size=(8, 4)) * 0.6
    trials, t_val = 400, 1.0
    own = rng.integers(0, 8, size=trials)
    eps = rng.normal(size=(trials, 4))
    t = np.full(trials, t_val)
    x_t = data[own] + t[:, None] * eps
    exact = exact_posterior_mean(x_t, t, data)
    errors = []
    for size in (1, 4, 16, 64, 256):
        refs = data[rng.integers(0, 8, size=(trials, size))]  # iid draws from the data, per row
        # One row at a time shares no references; emulate per-row sets with a block mask.
        flat = refs.reshape(-1, 4)
        mask = np.zeros((trials, trials * size), bool)
        for i in range(trials):
            mask[i, i * size : (i + 1) * size] = True
        eps_hat, _ = score_identity_eps(jnp.asarray(x_t, jnp.float32), jnp.asarray(t, jnp.float32),
                                        jnp.asarray(eps, jnp.float32), jnp.asarray(flat, jnp.float32),
                                        jnp.asarray(mask))  # fmt: skip
        x0_hat = x_t - t[:, None] * np.asarray(eps_hat, np.float64)
        errors.append(float(np.mean(np.sum((x0_hat - exact) ** 2, 1))))
    own_only = float(np.mean(np.sum((data[own] - exact) ** 2, 1)))  # ECT's single-sample estimate
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.05 * own_only and errors[0] < own_only


def test_class_masking_keeps_references_of_the_row_class_and_null_rows_see_all():
    method = build("sct", info=COND)
    n = 12
    x0 = jax.random.normal(jax.random.key(7), (n, 4))
    y0 = jnp.arange(n) % 3
    y_rows = y0.at[0].set(3)  # row 0 trained with the null label
    t = jnp.full((n,), 0.8)
    eps = jax.random.normal(jax.random.key(8), (n, 4))
    x_t = x0 + t[:, None] * eps
    eps_hat, _ = method.target_eps(x0, y0, x_t, t, eps, y_rows, {})
    x0_hat = np.asarray(x_t - t[:, None] * eps_hat, np.float64)
    data, rows = np.asarray(x0, np.float64), np.asarray(x_t, np.float64)
    for i in range(n):
        members = np.arange(n) if i == 0 else np.flatnonzero(np.asarray(y0) == int(y_rows[i]))
        expected = exact_posterior_mean(rows[i : i + 1], np.array([0.8]), data[members])
        np.testing.assert_allclose(x0_hat[i], expected[0], atol=2e-5)


def test_reference_bank_keeps_the_newest_batches_and_ignores_empty_slots():
    method = build("sct", info=COND, reference_bank=6)
    extra = method.init_extra(init(method))
    b1 = {"x": jnp.ones((4, 4)), "y": jnp.array([0, 1, 2, 0])}
    b2 = {"x": 2 * jnp.ones((4, 4)), "y": jnp.array([1, 1, 1, 1])}
    extra = method.update_extra(extra, batch=b1, step=jnp.asarray(0), ema_params=None)
    assert int(extra["bank_count"]) == 4
    extra = method.update_extra(extra, batch=b2, step=jnp.asarray(1), ema_params=None)
    assert int(extra["bank_count"]) == 6
    np.testing.assert_array_equal(np.asarray(extra["bank_x"][:, 0]), [2, 2, 2, 2, 1, 1])
    np.testing.assert_array_equal(np.asarray(extra["bank_y"]), [1, 1, 1, 1, 0, 1])
    # An empty bank changes nothing; a filled one is used (more references).
    batch = {"x": jax.random.normal(jax.random.key(9), (8, 4)), "y": jnp.arange(8) % 3}
    params = init(method)
    plain = build("sct", info=COND)
    args = (batch, jax.random.key(10), jnp.asarray(5))
    l_plain, m_plain = plain.loss(params, *args)
    l_empty, m_empty = method.loss(params, *args, methods.LossInputs(extra=method.init_extra(params)))
    np.testing.assert_allclose(float(l_empty), float(l_plain), rtol=1e-6)
    _, m_full = method.loss(params, *args, methods.LossInputs(extra=extra))
    assert float(m_full["ref_set_size"]) > float(m_empty["ref_set_size"]) == float(m_plain["ref_set_size"])


# ---------------------------------------------------------------------------
# Phased consistency and sampling


def test_phased_consistency_function_boundary_conditions():
    """f(x_t, t) = (s/t) x_t + (1 - s/t) D: with the exact denoiser of a point mass, x_t at the
    upper edge s_m maps exactly to the same-noise point at the lower edge s_{m-1}; at t = s, f = x."""
    method = build("sct", ExactPointMass(), phase_edges=(0.5, 2.0))
    params = {"net": {"a": jnp.asarray(1.0)}}
    eps = jax.random.normal(jax.random.key(11), (3, 4))
    edges = [0.0, 0.5, 2.0, 80.0]
    for m in (1, 2, 3):
        t = jnp.full((3,), edges[m])
        s = method.lower_edge(t)
        np.testing.assert_array_equal(np.asarray(s), edges[m - 1])
        f = method.consistency(params["net"], POINT + edges[m] * eps, t, s)
        np.testing.assert_allclose(np.asarray(f), POINT + edges[m - 1] * np.asarray(eps), atol=2e-5)
    x = jax.random.normal(jax.random.key(12), (3, 4))
    for s_val in (0.5, 2.0):
        s = jnp.full((3,), s_val)
        np.testing.assert_allclose(np.asarray(method.consistency(params["net"], x, s, s)), np.asarray(x), atol=1e-6)
    above = method.lower_edge(jnp.asarray([0.5001, 100.0, 1e-3]))
    np.testing.assert_allclose(np.asarray(above), [0.5, 2.0, 0.0])


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_phased_sampler_walks_the_edges(eta):
    """With an x-dependent denoiser, each step is x <- (s_{m-1}/s_m) x + (1 - s_{m-1}/s_m) D(x, t_q),
    t_q = s_m (first step) or s_m - eta (s_m - s_{m-1}); and a point mass is reached exactly."""
    edges = [0.0, 0.5, 2.0, 80.0]
    method = build("sct", GaussianDenoiser(), phase_edges=(0.5, 2.0), edge_skip_eta=eta)
    assert method.supported_steps == (3,) and method.nfe(3, "euler") == 3
    x = method.sample({"net": {}}, jax.random.key(13), num_samples=6, num_steps=3)
    ref = 80.0 * np.asarray(jax.random.normal(jax.random.key(13), (6, 4)), np.float64)
    for m in (3, 2, 1):
        hi, lo = edges[m], edges[m - 1]
        t_q = hi if m == 3 else hi - eta * (hi - lo)
        ref = lo / hi * ref + (1 - lo / hi) * gauss_D(ref, t_q)
    np.testing.assert_allclose(np.asarray(x), ref, rtol=1e-4, atol=1e-5)
    point = build("sct", ExactPointMass(), phase_edges=(0.5, 2.0), edge_skip_eta=eta)
    x = point.sample({"net": {"a": jnp.asarray(1.0)}}, jax.random.key(13), num_samples=6, num_steps=3)
    np.testing.assert_allclose(np.asarray(x), np.tile(POINT, (6, 1)), atol=1e-5)
    with pytest.raises(ValueError, match="cannot sample with 2 steps"):
        method.sample({"net": {}}, jax.random.key(13), num_samples=6, num_steps=2)


def test_ect_sampler_schedule_and_exactness():
    method = build("ect", ExactPointMass(shift=0.003), sigma_min_shift=0.003)
    assert method.sample_times(1) == [80.0] and method.sample_times(2) == [80.0, 0.821]
    times = method.sample_times(4)
    assert times[:2] == [80.0, 0.821] and times[1] > times[2] > times[3] == pytest.approx(0.0821)
    params = {"net": {"a": jnp.asarray(1.0)}}
    for k in (1, 2, 4):
        x = method.sample(params, jax.random.key(k), num_samples=4, num_steps=k)
        np.testing.assert_allclose(np.asarray(x), np.tile(POINT, (4, 1)), atol=1e-5)
    # Re-noising x0 + t_i z_i and denoising at t_i, step by step, with an x-dependent denoiser.
    gauss = build("ect", GaussianDenoiser())
    for k in (1, 2, 3):
        x = gauss.sample({"net": {}}, jax.random.key(30), num_samples=4, num_steps=k)
        keys = jax.random.split(jax.random.key(30), k)
        ref = np.zeros((4, 4))
        for i, t_i in enumerate(gauss.sample_times(k)):
            ref = gauss_D(ref + t_i * np.asarray(jax.random.normal(keys[i], (4, 4)), np.float64), t_i)
        np.testing.assert_allclose(np.asarray(x), ref, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="euler"):
        method.nfe(2, "heun")
    with pytest.raises(ValueError, match="guidance is not available"):
        method.sample(params, jax.random.key(0), num_samples=4, num_steps=1, guidance=2.0)


def test_snapshot_guidance():
    """The first EMA is copied after guide_snapshot_step steps; guided sampling is
    D_weak + g (D - D_weak) in every step (checked at one step against two plain samples)."""
    method = build("sct", guide_snapshot_step=3)
    params = init(method)
    extra = method.init_extra(params)
    assert method.sampling_inputs(extra) == {}
    emas = [jax.tree.map(lambda p, k=k: p + 0.1 * (k + 1), params) for k in range(5)]
    for step in range(5):  # update `step` (0-based) makes the step count step + 1
        extra = method.update_extra(extra, batch=point_batch(4), step=jnp.asarray(step), ema_params=emas[step])
        if step == 1:
            assert int(extra["weak_step"]) == -1 and not method.can_guide(method.sampling_inputs(extra))
    assert int(extra["weak_step"]) == 3
    weak = method.sampling_inputs(extra)["weak"]
    other = emas[2]  # the EMA after the third update, not a later one
    for a, b in zip(jax.tree.leaves(weak), jax.tree.leaves(other["net"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    key, g = jax.random.key(14), 1.7
    guided = method.sample({"net": params["net"], "weak": weak}, key, num_samples=5, num_steps=1, guidance=g)
    strong = method.sample({"net": params["net"]}, key, num_samples=5, num_steps=1)
    weak_x = method.sample({"net": weak}, key, num_samples=5, num_steps=1)
    np.testing.assert_allclose(np.asarray(guided), np.asarray(weak_x + g * (strong - weak_x)), atol=1e-5)
    with pytest.raises(ValueError, match="guide_snapshot_step"):
        method.sample({"net": params["net"]}, key, num_samples=5, num_steps=1, guidance=g)


@pytest.mark.parametrize(
    "cfg,message",
    [
        ({"mapping": "linear"}, "mapping must be one of"),
        ({"weighting": "snr"}, "weighting must be one of"),
        ({"q": 1.0}, "q > 1"),
        ({"reference_set": "all"}, "reference_set must be one of"),
        ({"phase_edges": (2.0, 1.0)}, "phase_edges must increase"),
        ({"phase_edges": (100.0,)}, "phase_edges must increase"),
        ({"edge_skip_eta": 0.3}, "edge_skip_eta applies to phased"),
        ({"reference_set": "own", "reference_bank": 8}, "reference_bank needs"),
    ],
)
def test_bad_sct_config_is_rejected(cfg, message):
    with pytest.raises(ValueError, match=message):
        build("sct", **cfg)


# ---------------------------------------------------------------------------
# Training


@pytest.mark.slow
def test_sct_trains_with_bank_and_snapshot_and_resumes_exactly(tmp_path):
    config = quiet(load_config("sct_toy2d"), 12)  # the small MLP: compiles in seconds
    config.method.reference_bank = 64
    config.method.guide_snapshot_step = 6
    config.train.checkpoint_every = 100
    straight, resumed = str(tmp_path / "a"), str(tmp_path / "b")
    train.train_and_evaluate(config, straight)
    train.train_and_evaluate(config, resumed, stop_at=5)
    train.train_and_evaluate(config, resumed)
    states = []
    for w in (straight, resumed):
        exp = experiment.setup(config, w)
        state, _ = exp.checkpointer.restore(12, exp.abstract_state)
        exp.checkpointer.close()
        states.append(jax.device_get(state))
    assert int(states[0].extra["bank_count"]) == 64 and int(states[0].extra["weak_step"]) == 6
    for a, b in zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[1])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_init_from_refuses_a_different_parameterization(tmp_path):
    config = quiet(load_config("ect_digits"), 2)
    config.train.init_from = "runs/some_teacher"
    exp = experiment.setup(config, str(tmp_path / "ect"))
    exp.checkpointer.close()
    with pytest.raises(ValueError, match="'trigflow' run .*'ect' needs a edm one"):
        experiment.check_pretrained_method(exp, load_config("trigflow_digits"))
    other_sigma = load_config("edm_digits")
    other_sigma.method.sigma_d = 1.0
    with pytest.raises(ValueError, match="sigma_d=1.0, this config uses method.sigma_d=0.5"):
        experiment.check_pretrained_method(exp, other_sigma)
    experiment.check_pretrained_method(exp, load_config("edm_digits"))  # the right kind passes


@pytest.mark.slow
def test_ect_tunes_from_an_edm_run(tmp_path):
    teacher = quiet(load_config("edm_toy2d"), 3)
    train.train_and_evaluate(teacher, str(tmp_path / "edm"))
    config = quiet(load_config("sct_toy2d"), 2)
    config.train.init_from = str(tmp_path / "edm")
    exp = experiment.setup(config, str(tmp_path / "sct"))
    state, _ = experiment.restore_or_init(exp)
    exp.checkpointer.close()
    _, pretrained = experiment.load_pretrained(str(tmp_path / "edm"))
    for a, b in zip(jax.tree.leaves(state.params["net"]), jax.tree.leaves(pretrained)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sct_models_are_built_from_every_net():
    """The denoiser wrapper works with the suite's networks (UNet and DiT with images, MLP)."""
    for model, info in (
        (dict(name="unet", channels=8, channel_mult=(1, 2), num_blocks=1, attn_resolutions=()), (8, 8, 1)),
        (dict(name="dit", patch=2, depth=1, hidden=32, num_heads=2), (8, 8, 1)),
        (dict(name="mlp", hidden=16, depth=1, emb_dim=16), (4,)),
    ):
        net = models.build(ml_collections.ConfigDict(model), data_shape=info, num_classes=0)
        method = methods.build(ml_collections.ConfigDict(dict(name="sct")), net, DatasetInfo("v", info, 0, 0.5))
        params = jax.jit(lambda k, m=method: m.init_params(k, {"x": jnp.zeros((1, *info))}))(jax.random.key(0))
        loss = jax.jit(lambda p, m=method: m.loss(p, {"x": jnp.zeros((4, *info))}, jax.random.key(1), 0)[0])
        assert np.isfinite(float(loss(params)))


@pytest.mark.slow
def test_guided_training_samples_wait_for_the_snapshot(tmp_path):
    """eval.guidance != 1 during training: unguided (with a warning) until the snapshot exists."""
    config = quiet(load_config("sct_toy2d"), 4)
    config.method.guide_snapshot_step = 3
    config.train.sample_every = 2
    config.eval.guidance = 1.5
    config.eval.nfes = (1,)
    config.eval.grid_size = 10
    summary = train.train_and_evaluate(config, str(tmp_path / "g"))
    assert summary["status"] == "finished"
    samples = sorted(os.listdir(tmp_path / "g" / "samples"))
    assert samples == ["step0000002_euler_nfe1.png", "step0000004_euler_nfe1.png"], samples
