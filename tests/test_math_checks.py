"""Math checks with toy networks of known output: every expected value is written out in the test
(numpy, float64 where the code runs in float64) from the methods' equations, never from the
modules' own scaling, proposal or weighting helpers. Each test names the wrong formula it catches.

Random draws are reproduced from the documented key splits of the losses and samplers (part of
their contract, as in the other method tests); everything computed from those draws is by hand.
"""

from __future__ import annotations

from statistics import NormalDist

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from fewstep_jax import methods
from fewstep_jax.data import DatasetInfo


def build(name, net, info, **cfg):
    return methods.build(ml_collections.ConfigDict(dict(name=name, **cfg)), net, info)


def f64(x):
    return np.asarray(x, np.float64)


# ---------------------------------------------------------------------------
# TrigFlow / sCM (Lu & Song 2024): t in [0, pi/2], t = 0 data, x_t = cos t x0 + sin t z, z ~ N(0, sd^2)

SD = 0.5  # sigma_d != 1, so e^tau / sigma_d and e^tau * sigma_d differ
TRIG = DatasetInfo(name="vec", shape=(3,), num_classes=0, data_std=SD)
FA, FB = 0.6, -0.8


class TrigLinear(nn.Module):
    """F(u, t) = FA u + FB t^2: depends on both inputs, so d F / d t along the trajectory is
    FA du/dt + 2 FB t (known in closed form)."""

    num_classes: int = 0

    @nn.compact
    def __call__(self, u, t, y=None, d=None, train=False):
        return FA * u + FB * (t**2)[:, None]


def trig_F(u, t):
    return FA * u + FB * (t**2)[:, None]


def trig_f(x_t, t):
    """f(x_t, t) = cos t x_t - sin t sd F(x_t / sd, t) (sCM eq. 7), numpy float64."""
    c, s = np.cos(t)[:, None], np.sin(t)[:, None]
    return c * x_t - s * SD * trig_F(x_t / SD, t)


def proposal_quantiles(qs, p_mean, p_std, sigma_d):
    """Quantiles of t = arctan(exp(tau) / sigma_d), tau ~ N(p_mean, p_std^2) (t is increasing in tau)."""
    return np.array([np.arctan(np.exp(p_mean + p_std * NormalDist().inv_cdf(q)) / sigma_d) for q in qs])


@pytest.mark.parametrize("name", ["scm_sct", "trigflow"])
def test_time_proposal_has_the_exact_quantiles_of_arctan_exp_tau_over_sigma_d(name):
    """Guards t = arctan(e^tau * sigma_d) (or any other map) in place of arctan(e^tau / sigma_d):
    empirical quantiles of 200k draws against the closed-form quantiles (sCM sec. 3)."""
    method = build(name, TrigLinear(), TRIG, sigma_d=SD, p_mean=-1.0, p_std=1.4)
    t = f64(method.sample_time(jax.random.key(0), 200_000))
    qs = [0.02, 0.1, 0.25, 0.5, 0.75, 0.9, 0.98]
    expected = proposal_quantiles(qs, -1.0, 1.4, SD)
    # Standard error of these quantiles is < 3e-3 in t; arctan(e^tau sigma_d) moves them by 0.03-0.64.
    np.testing.assert_allclose(np.quantile(t, qs), expected, atol=0.01)
    wrong = proposal_quantiles(qs, -1.0, 1.4, 1.0 / SD)
    assert np.max(np.abs(wrong - expected)) > 0.4  # the check can tell the two apart


def sct_weight_params(method, w0):
    """w_phi(t) = w0 for every t: zero kernel, bias w0 (shapes from the head's own init)."""
    p = method.weighting_net.init(jax.random.key(0), jnp.zeros((1,), jnp.float32))["params"]
    p = jax.tree.map(lambda a: jnp.zeros(a.shape, jnp.float64), p)
    p["out"]["bias"] = jnp.full(p["out"]["bias"].shape, w0, jnp.float64)
    return p


@pytest.mark.parametrize(
    "step,warmup,norm,w0",
    [
        (30, 80, True, 0.4),  # r = 3/8 mid-warmup, normalization and a known weight w = 0.4
        (30, 80, False, None),  # r = 3/8, raw tangent, no weighting: loss = mean ||g||^2 / D
        (0, 80, False, None),  # r = 0: g = -cos^2 t (sd F^- - dx_t/dt)
        (500, 80, True, -0.7),  # past the warmup: r = 1
    ],
)
def test_sct_loss_against_the_closed_form_tangent(step, warmup, norm, w0):
    """sCM Alg. 1 by hand, in float64, with F = FA u + FB t^2:
      t = arctan(e^tau / sd), tau ~ N(P_mean, P_std^2); x_t = cos t x0 + sin t z; dx/dt = cos t z - sin t x0
      g = -cos^2 t (sd F^- - dx/dt) - r cos t sin t (x_t + sd dF^-/dt),  r = min(1, step / H)
      g <- g / (||g|| + 0.1);  L = mean_b[ e^{w} ||g||^2 / D - w ]  (F - F^- = 0 in value).
    Guards: the proposal (arctan(e^tau sd)), r fixed at 1 during warmup, e^{2w} (or e^{-w}) as the
    adaptive weight. With w0 the gradient in w's bias, mean_b(e^{w} ||g||^2 / D - 1), is checked too."""
    with jax.enable_x64(True):
        method = build(
            "scm_sct",
            TrigLinear(),
            TRIG,
            sigma_d=SD,
            p_mean=-0.6,
            p_std=1.0,
            tangent_warmup=warmup,
            tangent_norm=norm,
            adaptive_weighting=w0 is not None,
        )
        n = 16
        x0 = 0.7 * jax.random.normal(jax.random.key(1), (n, 3), jnp.float64)
        params = {"net": {}}
        if w0 is not None:
            params["weight"] = sct_weight_params(method, w0)
        rng = jax.random.key(2)
        loss, metrics = method.loss(params, {"x": x0}, rng, jnp.asarray(step))

        k_t, k_z, *_ = jax.random.split(rng, 5)
        tau = -0.6 + 1.0 * f64(jax.random.normal(k_t, (n,)))
        z = SD * f64(jax.random.normal(k_z, (n, 3), jnp.float64))
        x = f64(x0)
        t = np.arctan(np.exp(tau) / SD)
        c, s = np.cos(t)[:, None], np.sin(t)[:, None]
        x_t = c * x + s * z
        dxdt = c * z - s * x
        r = min(1.0, step / warmup)
        dF_dt = FA * dxdt / SD + 2 * FB * t[:, None]  # total derivative of F(x_t / sd, t)
        g = -(c**2) * (SD * trig_F(x_t / SD, t) - dxdt) - r * c * s * (x_t + SD * dF_dt)
        if norm:
            g = g / (np.linalg.norm(g, axis=1, keepdims=True) + 0.1)
        err = np.sum(g**2, axis=1) / 3
        per = err if w0 is None else np.exp(w0) * err - w0
        np.testing.assert_allclose(float(metrics["tangent_warmup_r"]), r, rtol=1e-7)
        np.testing.assert_allclose(float(loss), per.mean(), rtol=1e-9)
        if w0 is not None:
            grad = jax.grad(lambda p: method.loss(p, {"x": x0}, rng, jnp.asarray(step))[0])(params)
            np.testing.assert_allclose(
                float(grad["weight"]["out"]["bias"][0]), np.mean(np.exp(w0) * err - 1), rtol=1e-8
            )


@pytest.mark.parametrize("name", ["scm_sct", "scm_scd"])
def test_sct_multistep_sampler_with_a_linear_network(name):
    """Guards a wrong consistency function in the sampler. By hand (sCM sec. 5, eq. 7):
    x = sd z_0 at t_max = arctan(sigma_max / sd), x0 = f(x, t_max); for each later t_i:
    x = cos t_i x0 + sin t_i sd z_i, x0 = f(x, t_i); f(x, t) = cos t x - sin t sd F(x / sd, t)."""
    cfg = dict(sigma_d=SD, sigma_max=2.0)
    if name == "scm_scd":
        cfg["teacher"] = "<unused>"
    method = build(name, TrigLinear(), TRIG, **cfg)
    t_max = np.arctan(2.0 / SD)
    n, rng = 6, jax.random.key(3)
    for steps, times in ((1, [t_max]), (2, [t_max, 1.1]), (3, [t_max, 1.1, 0.55])):
        out = method.sample({"net": {}}, rng, num_samples=n, num_steps=steps)
        keys = jax.random.split(rng, steps)
        x0 = np.zeros((n, 3))
        for i, t_i in enumerate(times):
            noise = SD * f64(jax.random.normal(keys[i], (n, 3), jnp.float32))
            x = noise if i == 0 else np.cos(t_i) * x0 + np.sin(t_i) * noise
            x0 = trig_f(x, np.full(n, t_i))
        np.testing.assert_allclose(f64(out), x0, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_trigflow_sampler_starts_at_std_sigma_d_and_steps_by_hand(sampler):
    """Guards the starting noise scale: x_t ~ N(0, sd^2) at t_max, i.e. x_sigma = x_t / cos t_max has
    std sqrt(sigma_max^2 + sd^2) (a small sigma_max = 1 makes sigma_max alone 11% off). With
    eps = N(0, I) from the sampler's key: 1 step = f(sd eps, t_max). 2 steps in EDM's sigma space
    (sigma = sd tan t, D(x_sigma, sigma) = f(cos t x_sigma, t)) on the grid [1, 0.2, 0] by hand."""
    method = build("trigflow", TrigLinear(), TRIG, sigma_d=SD, sigma_max=1.0, sigma_min=0.2)
    n, rng = 6, jax.random.key(4)
    eps = f64(jax.random.normal(rng, (n, 3), jnp.float32))

    def D(x_sigma, sigma):
        t = np.full(n, np.arctan(sigma / SD))
        return trig_f(np.cos(t)[:, None] * x_sigma, t)

    one = method.sample({"net": {}}, rng, num_samples=n, num_steps=1, sampler=sampler)
    np.testing.assert_allclose(f64(one), trig_f(SD * eps, np.full(n, np.arctan(1.0 / SD))), rtol=2e-5, atol=2e-6)

    x = np.sqrt(1.0**2 + SD**2) * eps  # x_sigma at sigma_max
    d1 = (x - D(x, 1.0)) / 1.0
    x_pred = x + (0.2 - 1.0) * d1
    if sampler == "heun":
        d2 = (x_pred - D(x_pred, 0.2)) / 0.2
        x_pred = x + (0.2 - 1.0) * (d1 + d2) / 2
    expected = D(x_pred, 0.2)  # the last step lands on sigma = 0: x_0 = D(x, sigma)
    two = method.sample({"net": {}}, rng, num_samples=n, num_steps=2, sampler=sampler)
    np.testing.assert_allclose(f64(two), expected, rtol=2e-5, atol=2e-6)


# ---------------------------------------------------------------------------
# EDM preconditioning, ECT and SCT (Karras et al. 2022 Table 1; ECT; SCT sec. 4.1)

VEC4 = DatasetInfo(name="vec", shape=(4,), num_classes=0, data_std=SD)
EA, EB = 0.7, -0.45


class EdmLinear(nn.Module):
    """F(u, c_noise) = EA u + EB c_noise: D then depends on c_in (through u), c_noise, c_out, c_skip."""

    num_classes: int = 0

    @nn.compact
    def __call__(self, u, c_noise, y=None, d=None, train=False):
        return EA * u + EB * c_noise[:, None]


def edm_D(x, sigma, shift=0.0):
    """EDM Table 1 (ECT's eval shift on c_skip / c_out):
    c_skip = sd^2 / ((s - shift)^2 + sd^2), c_out = (s - shift) sd / sqrt(s^2 + sd^2),
    c_in = 1 / sqrt(s^2 + sd^2), c_noise = ln(s) / 4;  D = c_skip x + c_out F(c_in x, c_noise)."""
    s = np.asarray(sigma, np.float64)[:, None]
    c_skip = SD**2 / ((s - shift) ** 2 + SD**2)
    c_out = (s - shift) * SD / np.sqrt(s**2 + SD**2)
    c_in = 1.0 / np.sqrt(s**2 + SD**2)
    return c_skip * x + c_out * (EA * c_in * x + EB * np.log(s) / 4)


@pytest.mark.parametrize("name,shift", [("edm", 0.0), ("ect", 0.0), ("ect", 0.003), ("sct", 0.0), ("sct", 0.003)])
def test_denoiser_is_edm_table1_preconditioning(name, shift):
    """Guards other c_skip / c_out / c_in / c_noise: D(x, sigma) over sigma in [0.004, 80] in float64."""
    with jax.enable_x64(True):
        method = build(name, EdmLinear(), VEC4, sigma_d=SD)
        sigma = np.array([0.004, 0.01, 0.05, 0.3, SD, 1.0, 3.0, 20.0, 80.0])
        x = f64(jax.random.normal(jax.random.key(5), (sigma.size, 4), jnp.float64)) * (1 + sigma[:, None])
        D = method.denoise({}, jnp.asarray(x), jnp.asarray(sigma), shift=shift)
        np.testing.assert_allclose(f64(D), edm_D(x, sigma, shift), rtol=1e-12, atol=1e-14)


def test_ect_sampler_with_the_shifted_preconditioning_by_hand():
    """ECT sec. 4 with a known network: x = 80 z_0, x0 = D_shift(x, 80); then x = x0 + t_i z_i,
    x0 = D_shift(x, t_i) with t_mid = 0.821 and the eval shift 0.003 on c_skip / c_out."""
    method = build("ect", EdmLinear(), VEC4, sigma_d=SD, sigma_min_shift=0.003)
    n, rng = 5, jax.random.key(6)
    for steps, times in ((1, [80.0]), (2, [80.0, 0.821])):
        out = method.sample({"net": {}}, rng, num_samples=n, num_steps=steps)
        keys = jax.random.split(rng, steps)
        x0 = np.zeros((n, 4))
        for i, t_i in enumerate(times):
            x = (0.0 if i == 0 else x0) + t_i * f64(jax.random.normal(keys[i], (n, 4), jnp.float32))
            x0 = edm_D(x, np.full(n, t_i), 0.003)
        np.testing.assert_allclose(f64(out), x0, rtol=2e-5, atol=2e-6)


DISTINCT = np.array(
    [
        [0.3, -0.7, 0.1, 0.5],
        [-0.6, 0.2, 0.9, -0.1],
        [0.8, 0.6, -0.4, 0.0],
        [-0.2, -0.9, -0.5, 0.7],
        [0.1, 0.4, 0.3, -0.8],
        [0.9, -0.3, 0.6, 0.4],
        [-0.8, 0.7, -0.2, 0.2],
        [0.0, 0.0, -0.9, -0.6],
    ]
)


def posterior_eps(x_t, t, data, eps):
    """SCT sec. 4.1 on the reference set = the whole batch (own sample included):
    w_ij = softmax_j(-||x_t,i - x0_j||^2 / (2 t_i^2)), x0_hat = sum_j w_ij x0_j,
    eps_hat = (x_t - x0_hat) / t. Float64; also returns w."""
    logits = -np.sum((x_t[:, None, :] - data[None]) ** 2, -1) / (2 * t[:, None] ** 2)
    w = np.exp(logits - logits.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    return (x_t - w @ data) / t[:, None], w


def test_sct_target_eps_is_the_self_normalized_posterior_estimate_on_distinct_points():
    """Guards uniform (or otherwise wrong) reference weights: on 8 distinct points at noise levels
    where the posterior weights are far from uniform and far from one-hot, eps_hat and the logged
    own weight equal the float64 self-normalized posterior estimator."""
    with jax.enable_x64(True):
        method = build("sct", EdmLinear(), VEC4, sigma_d=SD)
        n = DISTINCT.shape[0]
        t = np.array([0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.9, 1.2])
        eps = f64(jax.random.normal(jax.random.key(7), (n, 4), jnp.float64))
        x_t = DISTINCT + t[:, None] * eps
        eps_hat, metrics = method.target_eps(
            jnp.asarray(DISTINCT), None, jnp.asarray(x_t), jnp.asarray(t), jnp.asarray(eps), None, {}
        )
        expected, w = posterior_eps(x_t, t, DISTINCT, eps)
        assert np.all(w.max(1) < 0.9) and np.all(w.max(1) > 2.0 / n)  # neither one-hot nor uniform
        uniform = (x_t - DISTINCT.mean(0)) / t[:, None]
        assert np.min(np.abs(uniform - expected).max(1)) > 0.05
        np.testing.assert_allclose(f64(eps_hat), expected, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(float(metrics["ref_own_weight"]), np.mean(np.diag(w)), rtol=1e-9)


def test_sct_loss_by_hand_on_distinct_points():
    """The whole SCT loss in float64 (inv_dt weighting, c = 0, smooth mapping at an integer exponent):
    t = exp(P_mean + P_std N), r = max(0, t (1 - n(t) / q^(1 + it / d))), n(t) = 1 + k sigmoid(-b t);
    x_r = x_t - (t - r) eps_hat (posterior estimate); target D(x_r, r), or x_r where r = 0;
    L = mean_i ||D(x_t, t) - target_i|| / (t - r). Guards the weights and the preconditioning."""
    with jax.enable_x64(True):
        method = build("sct", EdmLinear(), VEC4, sigma_d=SD, p_mean=-0.7, p_std=0.6)
        # ECT's tick loop counts the stage one step late: exponent 1 + (it - 1) / 25k = 2, q^2 = 4
        n, it = DISTINCT.shape[0], 25_001
        rng = jax.random.key(8)
        loss, metrics = method.loss({"net": {}}, {"x": jnp.asarray(DISTINCT)}, rng, jnp.asarray(it))
        k_t, k_e, _, _ = jax.random.split(rng, 4)
        t = np.exp(-0.7 + 0.6 * f64(jax.random.normal(k_t, (n,))))
        eps = f64(jax.random.normal(k_e, (n, 4), jnp.float64))
        r = np.maximum(0.0, t * (1 - (1 + 8 / (1 + np.exp(t))) / 4.0))
        x_t = DISTINCT + t[:, None] * eps
        eps_hat, w = posterior_eps(x_t, t, DISTINCT, eps)
        x_r = x_t - (t - r)[:, None] * eps_hat
        target = np.where((r > 0)[:, None], edm_D(x_r, np.where(r > 0, r, 1.0)), x_r)
        per = np.linalg.norm(edm_D(x_t, t) - target, axis=1) / (t - r)
        assert np.all(w.max(1) < 0.99)  # the references matter in every row
        np.testing.assert_allclose(float(loss), per.mean(), rtol=1e-9)
        np.testing.assert_allclose(float(metrics["ref_own_weight"]), np.mean(np.diag(w)), rtol=1e-9)


# ---------------------------------------------------------------------------
# Shortcut models (Frans et al. 2024): t = 0 noise, t = 1 data,
# x_t = (1 - (1 - 1e-5) t) x0 + t x1, v = x1 - (1 - 1e-5) x0

SA, SB, SC = -0.6, 1.3, 0.25


class ShortcutLinear(nn.Module):
    """s(x, t, d) = SA x + SB t + SC d."""

    num_classes: int = 0
    use_d: bool = True

    @nn.compact
    def __call__(self, x, t, y=None, d=None, train=False):
        return SA * x + SB * t.astype(x.dtype)[:, None] + SC * d.astype(x.dtype)[:, None]


def shortcut_s(x, t, d):
    return SA * x + SB * np.asarray(t, np.float64)[:, None] + SC * np.asarray(d, np.float64)[:, None]


def test_shortcut_loss_flow_and_bootstrap_rows_by_hand():
    """Guards the flow rows' x_t and target (shortcut sec. 3 / official code, eps = 1e-5) and the
    bootstrap rows, all in float64 with M = 4 (levels 1, 1, 0, 0 for the 4 bootstrap rows of 16):
    flow rows: t = randint(0, M) / M, pred s(x_t, t, log2 M), target x1 - (1 - eps) x0;
    bootstrap rows at level k: t = floor(U 2^k) / 2^k, target = clip((v1 + v2) / 2, +-4) with
    v1 = s(x_t, t, k + 1), v2 = s(clip(x_t + 2^-(k+1) v1, +-4), t + 2^-(k+1), k + 1)."""
    with jax.enable_x64(True):
        method = build("shortcut", ShortcutLinear(), VEC4, num_steps_max=4, bootstrap_every=4)
        n, n_boot, m, e = 16, 4, 4, 1e-5
        x1 = f64(0.8 * jax.random.normal(jax.random.key(9), (n, 4), jnp.float64))
        rng = jax.random.key(10)
        inputs = methods.LossInputs(ema_params={"net": {}})
        loss, metrics = method.loss({"net": {}}, {"x": jnp.asarray(x1)}, rng, 0, inputs)

        k_flow, k_boot = jax.random.split(rng)
        kf_t, kf_z, _, _ = jax.random.split(k_flow, 4)
        t_f = f64(jax.random.randint(kf_t, (n - n_boot,), 0, m)) / m
        z_f = f64(jax.random.normal(kf_z, (n - n_boot, 4), jnp.float64))
        tf = t_f[:, None]
        xt_f = (1 - (1 - e) * tf) * z_f + tf * x1[n_boot:]
        v_f = x1[n_boot:] - (1 - e) * z_f
        err_f = np.mean((shortcut_s(xt_f, t_f, np.full(n - n_boot, 2.0)) - v_f) ** 2, axis=1)

        kb_t, kb_z = jax.random.split(k_boot)
        k = np.array([1.0, 1.0, 0.0, 0.0])
        t_b = np.floor(f64(jax.random.uniform(kb_t, (n_boot,))) * 2**k) / 2**k
        z_b = f64(jax.random.normal(kb_z, (n_boot, 4), jnp.float64))
        tb = t_b[:, None]
        xt_b = (1 - (1 - e) * tb) * z_b + tb * x1[:n_boot]
        half = 2.0 ** -(k + 1)
        v1 = shortcut_s(xt_b, t_b, k + 1)
        x_mid = np.clip(xt_b + half[:, None] * v1, -4, 4)
        v2 = shortcut_s(x_mid, t_b + half, k + 1)
        target_b = np.clip((v1 + v2) / 2, -4, 4)
        err_b = np.mean((shortcut_s(xt_b, t_b, k) - target_b) ** 2, axis=1)

        # rtol 1e-7: the code forms (1 - eps) t with float32 t (rounding ~1e-9 here); dropping the
        # eps = 1e-5 moves the flow error by ~1e-5.
        np.testing.assert_allclose(float(metrics["flow_mse"]), err_f.mean(), rtol=1e-7)
        np.testing.assert_allclose(float(metrics["bootstrap_mse"]), err_b.mean(), rtol=1e-7)
        np.testing.assert_allclose(float(loss), np.concatenate([err_b, err_f]).mean(), rtol=1e-7)


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_shortcut_sampler_is_euler_with_its_own_step_size(steps):
    """Guards the sampler's update: x ~ N(0, I); x <- x + (1/N) s(x, i/N, log2 N), i < N (sec. 3.2)."""
    method = build("shortcut", ShortcutLinear(), VEC4, num_steps_max=8)
    n, rng = 5, jax.random.key(11)
    out = method.sample({"net": {}}, rng, num_samples=n, num_steps=steps)
    x = f64(jax.random.normal(rng, (n, 4), jnp.float32))
    for i in range(steps):
        x = x + shortcut_s(x, np.full(n, i / steps), np.full(n, np.log2(steps))) / steps
    np.testing.assert_allclose(f64(out), x, rtol=2e-5, atol=2e-6)


# ---------------------------------------------------------------------------
# MeanFlow (Geng et al. 2025): t = 0 data, t = 1 noise, z_t = (1 - t) x + t e, v = e - x

LAB = DatasetInfo(name="vec", shape=(3,), num_classes=4, data_std=1.0)
MF_SLOPE = np.array([0.5, -0.3, 0.8, 1.1, -0.6])  # per label, index 4 = the null class
MF_BIAS = np.array([0.2, -0.4, 0.1, 0.6, -0.9])
MB, MC = 0.7, -1.2


class MeanFlowAffine(nn.Module):
    """u(z, t, h | y) = a_y z + MB t + MC h + b_y: depends on z, t, h and the label, so
    du/dt along (v_g, dr = 0, dt = 1) = a_y v_g + MB + MC (h = t - r moves with t)."""

    num_classes: int = 4
    use_d: bool = True

    @nn.compact
    def __call__(self, z, t, y=None, d=None, train=False):
        a = jnp.asarray(MF_SLOPE, z.dtype)[y][:, None]
        b = jnp.asarray(MF_BIAS, z.dtype)[y][:, None]
        return a * z + MB * t[:, None] + MC * d[:, None] + b


def mf_u(z, t, h, y):
    return MF_SLOPE[y][:, None] * z + MB * t[:, None] + MC * h[:, None] + MF_BIAS[y][:, None]


@pytest.mark.parametrize("policy, ratio", [("independent", 1.0), ("independent", 0.5), ("first_rows", 0.5)])
def test_meanflow_targets_and_loss_by_hand_with_dropped_rows(policy, ratio):
    """Guards the dropped rows' target (null label in u and du/dt, unguided v_g = v) and the guided
    rows' (eq. 19). By hand in float64 (uniform t, r sorted; the first n - round(n ratio) rows r = t):
      v_g = omega v + kappa u(z, t, 0 | y) + (1 - omega - kappa) u(z, t, 0 | null) (kept rows), v (dropped)
      u_tgt = v_g - clip(t - r, 0, 1) (a_y v_g + MB + MC),  y = null on dropped rows
      loss = mean_b l / (l + c)^p,  l = sum_pix (u - u_tgt)^2."""
    with jax.enable_x64(True):
        omega, kappa, p, c = 1.5, 0.3, 0.75, 0.01
        method = build(
            "meanflow",
            MeanFlowAffine(),
            LAB,
            t_sampling="uniform",
            ratio_r_neq_t=ratio,
            label_dropout=0.4,
            label_dropout_policy=policy,
            cfg_omega=omega,
            cfg_kappa=kappa,
            adaptive_p=p,
            adaptive_c=c,
        )
        n = 32
        x = f64(0.8 * jax.random.normal(jax.random.key(12), (n, 3), jnp.float64))
        y = np.arange(n) % 4
        batch = {"x": jnp.asarray(x), "y": jnp.asarray(y)}
        rng = jax.random.key(13)
        terms = method.training_terms({}, batch, rng)
        loss, _ = method.loss({"net": {}}, batch, rng, jnp.asarray(0))

        k_tr, k_e, k_lab, _ = jax.random.split(rng, 4)
        k_t, k_r = jax.random.split(k_tr)
        a, b = f64(jax.random.uniform(k_t, (n,))), f64(jax.random.uniform(k_r, (n,)))
        t, r = np.maximum(a, b), np.minimum(a, b)
        n_eq = n - int(round(n * ratio))
        r[:n_eq] = t[:n_eq]
        e = f64(jax.random.normal(k_e, (n, 3), jnp.float64))
        coin = np.asarray(jax.random.bernoulli(k_lab, 0.4, (n,)))
        # independent: each row by its own coin; first_rows (official code): the first
        # (number of heads) rows, never more than the r = t rows
        dropped = coin if policy == "independent" else np.arange(n) < min(coin.sum(), n_eq)
        assert 4 <= dropped.sum() <= n - 4
        z = (1 - t[:, None]) * x + t[:, None] * e
        v = e - x
        null = np.full(n, 4)
        zero = np.zeros(n)
        guided = omega * v + kappa * mf_u(z, t, zero, y) + (1 - omega - kappa) * mf_u(z, t, zero, null)
        v_g = np.where(dropped[:, None], v, guided)
        y_in = np.where(dropped, 4, y)
        u = mf_u(z, t, t - r, y_in)
        du_dt = MF_SLOPE[y_in][:, None] * v_g + MB + MC
        u_tgt = v_g - np.clip(t - r, 0, 1)[:, None] * du_dt

        np.testing.assert_array_equal(np.asarray(terms["dropped"]), dropped)
        np.testing.assert_allclose(f64(terms["u"]), u, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(f64(terms["u_tgt"])[dropped], u_tgt[dropped], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(f64(terms["u_tgt"]), u_tgt, rtol=1e-12, atol=1e-12)
        ell = np.sum((u - u_tgt) ** 2, axis=1)
        np.testing.assert_allclose(float(loss), np.mean(ell / (ell + c) ** p), rtol=1e-10)
