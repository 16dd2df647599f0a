"""The flow-map core (methods/flowmap.py) and iMF, alpha-Flow, AYF and DMF against math.

A Gaussian data distribution N(mu, c^2) per coordinate has its flow map in closed form (t = 1
noise): sigma_t^2 = (1 - t)^2 c^2 + t^2, m_t = (1 - t) mu, Phi(z, t, s) = m_s + (sigma_s /
sigma_t)(z - m_t), v = -mu + (t - (1 - t) c^2) / sigma_t^2 (z - m_t). At the exact u every
method's residual vanishes (float64); every jvp is checked against a central finite difference;
the reductions between methods hold exactly (or at the stated order); the samplers compose and
gamma-sampling keeps the marginals; the schedules hit their endpoints; bad input fails in one line
before anything compiles.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from fewstep_jax import methods, models
from fewstep_jax.data import DatasetInfo
from fewstep_jax.methods import flowmap
from fewstep_jax.models import imf_dit

MU = np.array([0.7, -0.5])
C = np.array([0.6, 1.4])
GAUSS = DatasetInfo(name="gauss", shape=(2,), num_classes=0, data_std=1.0)
LABELED = DatasetInfo(name="gauss", shape=(2,), num_classes=3, data_std=1.0)


# ---------------------------------------------------------------------------
# The closed form (written from the definitions above, independently of the code under test)


def sigma(t, c=C):
    return jnp.sqrt((1 - t) ** 2 * c**2 + t**2)


def phi(z, t, s, mu=MU, c=C):
    """Phi(z, t, s) for z [B, 2], t, s [B]."""
    t, s = t[:, None], s[:, None]
    return (1 - s) * mu + sigma(s, c) / sigma(t, c) * (z - (1 - t) * mu)


def exact_u(z, t, r, mu=MU, c=C):
    """(z - Phi(z, t, r)) / (t - r) without the 0/0 at r = t: the slope (sigma_t - sigma_r) / (t - r)
    written as ((t + r) - c^2 (2 - t - r)) / (sigma_t + sigma_r)."""
    t, r = t[:, None], r[:, None]
    st, sr = sigma(t, c), sigma(r, c)
    return -mu + (z - (1 - t) * mu) * ((t + r) - c**2 * (2 - t - r)) / (st * (st + sr))


def exact_v(z, t, mu=MU, c=C):
    t = t[:, None]
    return -mu + (t - (1 - t) * c**2) / sigma(t, c) ** 2 * (z - (1 - t) * mu)


def points(n=64, seed=0):
    """z [n, 2], t > r [n] in (0.02, 0.98)."""
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    a, b = jax.random.uniform(k1, (n,), jnp.float64, 0.02, 0.98), jax.random.uniform(k2, (n,), jnp.float64, 0.02, 0.98)
    return jax.random.normal(k3, (n, 2), jnp.float64) * 1.3, jnp.maximum(a, b), jnp.minimum(a, b)


def test_closed_form_is_a_flow_map():
    """The test's own formulas: u(z, t, r) = (z - Phi) / (t - r), u(z, t, t) = v, and Phi composes
    (Phi(Phi(z, t, s), s, r) = Phi(z, t, r)); v is the time derivative of Phi along the ODE."""
    with jax.enable_x64(True):
        z, t, r = points()
        s = (t + r) / 2
        np.testing.assert_allclose(exact_u(z, t, r), (z - phi(z, t, r)) / (t - r)[:, None], rtol=1e-11, atol=1e-12)
        np.testing.assert_allclose(exact_u(z, t, t), exact_v(z, t), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(phi(phi(z, t, s), s, r), phi(z, t, r), rtol=1e-12, atol=1e-12)
        h = 1e-6
        np.testing.assert_allclose((phi(z, t, t + h) - phi(z, t, t - h)) / (2 * h), exact_v(z, t), rtol=1e-7, atol=1e-8)


# ---------------------------------------------------------------------------
# Residuals at the exact u


def test_every_residual_vanishes_at_the_exact_flow_map():
    """MeanFlow's identity (MeanFlow, DMF, alpha-Flow at alpha = 0), iMF's V - v, AYF's Eulerian g
    (r_w = 1) and Lagrangian l, all through the core's jvps, are zero to float64 rounding; a 5%
    error in u makes each of them large."""
    with jax.enable_x64(True):
        z, t, r = points()
        v = exact_v(z, t)
        for scale, small in ((1.0, True), (1.05, False)):

            def u_fn(z_, t_, r_, scale=scale):
                return scale * exact_u(z_, t_, r_)

            u, du_dt = flowmap.total_derivative(u_fn, z, t, r, v)
            residuals = {
                "meanflow": u - flowmap.mf_target(v, t, r, du_dt),
                "imf": u + (t - r)[:, None] * du_dt - v,
                "ayf_eulerian": (u - v) + (t - r)[:, None] * du_dt,
            }
            u2, du_dr = flowmap.partial_r(u_fn, z, t, r)
            x_r = z + (r - t)[:, None] * u2
            residuals["ayf_lagrangian"] = u2 + (r - t)[:, None] * du_dr - exact_v(x_r, r)
            for name, res in residuals.items():
                worst = float(jnp.max(jnp.abs(res)))
                assert (worst < 1e-10) if small else (worst > 1e-3), (name, scale, worst)


def test_alpha_half_is_exact_and_the_alpha_residual_is_second_order():
    """alpha = 1/2 with v~ = u(z_t, t, s) (a half step of the exact map) reproduces u(z_t, t, r)
    exactly; with v~ = v (alpha-Flow's Euler point z_s = z_t - (t - s) v) the residual of the exact
    u is O(alpha^2): halving alpha divides it by 4."""
    with jax.enable_x64(True):
        z, t, r = points()
        half = jnp.asarray(0.5, jnp.float64)
        s = half * r + (1 - half) * t
        v_half = exact_u(z, t, s)
        s2, z_s = flowmap.alpha_point(z, t, r, v_half, half)
        np.testing.assert_allclose(s2, s, rtol=0, atol=0)
        target = flowmap.alpha_target(v_half, exact_u(z_s, s, r), half)
        np.testing.assert_allclose(target, exact_u(z, t, r), rtol=1e-11, atol=1e-12)

        def residual(alpha):
            alpha = jnp.asarray(alpha, jnp.float64)
            s, z_s = flowmap.alpha_point(z, t, r, exact_v(z, t), alpha)
            return float(
                jnp.max(jnp.abs(flowmap.alpha_target(exact_v(z, t), exact_u(z_s, s, r), alpha) - exact_u(z, t, r)))
            )

        ratio = residual(0.02) / residual(0.01)
        assert 3.8 < ratio < 4.2, ratio


# ---------------------------------------------------------------------------
# Sampling


@pytest.mark.parametrize(
    "kind,steps,kw",
    [
        ("uniform", 1, {}),
        ("uniform", 3, {}),
        ("shifted", 4, dict(shift=1.5)),
        ("custom", 2, dict(custom=(1.0, 0.3, 0.0))),
        ("dyadic", 8, {}),
    ],
)
def test_one_and_k_step_compositions_agree_with_the_exact_map(kind, steps, kw):
    """z_1 -> mu + c z_1 for every schedule: the flow map composes exactly."""
    with jax.enable_x64(True):
        z1 = jax.random.normal(jax.random.key(1), (256, 2), jnp.float64)
        grid = flowmap.times(kind, steps, **kw)
        x = flowmap.sample(lambda z, t, r: exact_u(z, t.astype(z.dtype), r.astype(z.dtype)), z1, grid)
        # t is carried in float32 (the sampler's grid): the map is exact up to that rounding.
        np.testing.assert_allclose(x, MU + C * z1, rtol=1e-5, atol=1e-5)


def test_gamma_plan_keeps_every_marginal_and_has_its_limits():
    """After the jump to t' and z <- a z + b e, mean and variance are those of time s exactly:
    a (1 - t') = 1 - s and a^2 t'^2 + b^2 = s^2 (independently of c); gamma = 0 is Euler (t' = s,
    a = 1, b = 0), gamma = 1 is restart (t' = 0, a = 1 - s, b = s)."""
    grid = flowmap.times("uniform", 4)
    s = grid[1:]
    for gamma in (0.0, 0.3, 0.7, 1.0):
        jump, a, b = flowmap.gamma_plan(grid, gamma)
        np.testing.assert_allclose(a * (1 - jump), 1 - s, rtol=1e-14, atol=1e-15)
        np.testing.assert_allclose(a**2 * jump**2 + b**2, s**2, rtol=1e-13, atol=1e-15)
        assert np.all(jump <= s + 1e-15) and jump[-1] == 0.0 and b[-1] == 0.0
    jump, a, b = flowmap.gamma_plan(grid, 0.0)
    np.testing.assert_allclose(jump, s)
    np.testing.assert_array_equal(a, 1.0)
    np.testing.assert_array_equal(b, 0.0)
    jump, a, b = flowmap.gamma_plan(grid, 1.0)
    np.testing.assert_array_equal(jump, 0.0)
    np.testing.assert_allclose(a, 1 - s)
    np.testing.assert_allclose(b, s)


def test_gamma_sampling_lands_on_the_data_marginal_and_gamma_one_is_restart():
    """With the exact map every gamma draws N(mu, c^2) (Monte Carlo, 20k samples); gamma = 1 equals the
    consistency / restart sampler written by hand: x0 = z - t u(z, t, 0), z = (1 - s) x0 + s e_i."""
    with jax.enable_x64(True):
        n, rng = 20_000, jax.random.key(5)
        z1 = jax.random.normal(jax.random.key(2), (n, 2), jnp.float64)
        grid = flowmap.times("uniform", 3)

        def u_fn(z, t, r):
            return exact_u(z, t.astype(z.dtype), r.astype(z.dtype))

        for gamma in (0.5, 1.0):
            x = np.asarray(flowmap.sample(u_fn, z1, grid, gamma=gamma, rng=rng))
            assert np.all(np.abs(x.mean(0) - MU) < 4 * C / np.sqrt(n)), (gamma, x.mean(0))
            np.testing.assert_allclose(x.std(0), C, rtol=0.03)
        z = np.asarray(z1)
        for i, (t, s) in enumerate(zip(grid[:-1], grid[1:])):
            x0 = z - t * np.asarray(exact_u(jnp.asarray(z), jnp.full(n, t), jnp.zeros(n)))
            e = np.asarray(jax.random.normal(jax.random.fold_in(rng, i), (n, 2), jnp.float32), np.float64)
            z = (1 - s) * x0 + s * e
        np.testing.assert_allclose(
            np.asarray(flowmap.sample(u_fn, z1, grid, gamma=1.0, rng=rng)), z, rtol=1e-5, atol=1e-5
        )


def test_schedules_at_their_endpoints():
    for kind, kw in (("uniform", {}), ("shifted", dict(shift=1.5)), ("shifted", dict(shift=0.5)), ("dyadic", {})):
        for steps in (1, 2, 4):
            grid = flowmap.times(kind, steps, **kw)
            assert grid[0] == 1.0 and grid[-1] == 0.0 and grid.size == steps + 1 and np.all(np.diff(grid) < 0)
    np.testing.assert_array_equal(flowmap.times("uniform", 2), [1.0, 0.5, 0.0])  # never silently 1 step
    # DMF's shift t -> s t / (1 + (s - 1) t): at t = 1/2 with s = 1.5, 0.75 / 1.25 = 0.6.
    np.testing.assert_allclose(flowmap.times("shifted", 2, shift=1.5), [1.0, 0.6, 0.0], rtol=1e-15)
    np.testing.assert_array_equal(flowmap.times("shifted", 3, shift=1.0), flowmap.times("uniform", 3))


def test_alpha_curriculum_and_warmup_at_their_landmarks():
    """alpha(k) = 1 - sigmoid(25 (k - mid) / (end - start)): 1 up to k_start, 1/2 at mid, 0 after k_end;
    snapped to 0 below 0.005 and to 1 above 0.995 (sigmoid(-25/2) is 3.7e-6 from 1 at the window's start)."""
    a = lambda k, **kw: float(flowmap.sigmoid_curriculum(k, 100, 300, **kw))  # noqa: E731
    assert a(0) == 1.0 and a(100) == 1.0 and a(200) == 0.5 and a(300) == 0.0 and a(10_000) == 0.0
    np.testing.assert_allclose(a(180), 1 - 1 / (1 + np.exp(-25 * (180 - 200) / 200)), rtol=1e-6)
    assert a(120) == 1.0  # 1 - sigmoid(-10) = 0.99995 > 0.995: snapped
    assert 0.005 < a(220) < 0.995 and a(260) == 0.0  # 1 - sigmoid(7.5) = 5.5e-4: snapped
    assert a(200, mid=250.0) > 0.5
    np.testing.assert_allclose(
        [float(flowmap.linear_warmup(k, 100, 0.99)) for k in (0, 50, 100, 500)], [0.0, 0.495, 0.99, 0.99], rtol=1e-6
    )


@pytest.mark.parametrize("beta", [1.0, 2.0])
def test_omega_sampler_has_the_power_law_cdf(beta):
    """iMF's CFG scale on [1, 8] with density ~ omega^-beta: the CDF is log w / log 8 (beta = 1) or
    (w^(1-beta) - 1) / (8^(1-beta) - 1); Kolmogorov-Smirnov distance within the 0.1% critical value."""
    n = 40_000
    w = np.sort(np.asarray(flowmap.power_law(jax.random.key(3), n, 8.0, beta), np.float64))
    assert w.min() >= 1.0 and w.max() <= 8.0
    cdf = np.log(w) / np.log(8.0) if beta == 1.0 else (w ** (1 - beta) - 1) / (8.0 ** (1 - beta) - 1)
    ks = np.max(np.maximum(np.arange(1, n + 1) / n - cdf, cdf - np.arange(n) / n))
    assert ks < 1.95 / np.sqrt(n), ks
    # The check can fail: a uniform draw on [1, 8] is far off.
    assert np.max(np.abs((w - 1) / 7 - cdf)) > 0.1


# ---------------------------------------------------------------------------
# Networks and methods on small MLPs (float64)


def mlp(use_d=True, num_classes=0, depth=3, dtype="float64"):
    cfg = dict(name="mlp", hidden=16, depth=depth, emb_dim=16, dtype=dtype, use_d=use_d)
    return models.build(ml_collections.ConfigDict(cfg), data_shape=(2,), num_classes=num_classes)


def build(name, net, info=GAUSS, **cfg):
    return methods.build(ml_collections.ConfigDict(dict(name=name, **cfg)), net, info)


def random_params(method, seed=0, scale=0.3):
    """Weights drawn everywhere (zero-initialized layers would hide the network), float64."""
    example = {"x": jnp.zeros((1, 2), jnp.float64), "y": jnp.zeros((1,), jnp.int32)}
    shapes = jax.eval_shape(method.init_params, jax.random.key(seed), example)
    rng = np.random.default_rng(seed)

    def draw(leaf):
        std = 1.0 / np.sqrt(leaf.shape[-2]) if len(leaf.shape) >= 2 else scale
        return jnp.asarray(std * rng.standard_normal(leaf.shape), jnp.float64)

    return jax.tree.map(draw, shapes)


def central_difference(u_fn, z, t, r, dz, dt, dr, eps=1e-6):
    return (u_fn(z + eps * dz, t + eps * dt, r + eps * dr) - u_fn(z - eps * dz, t - eps * dt, r - eps * dr)) / (2 * eps)


def method_u_fns(params_of):
    """(name, u_fn(z, t, r)) of every new method's network, y fixed."""
    out = []
    alpha = build("alphaflow", mlp())
    out.append(("alphaflow", lambda z, t, r, p=params_of(alpha): alpha.flow_map(p["net"], z, t, r)))
    ayf = build("ayf", mlp(), teacher="unread")
    out.append(("ayf", lambda z, t, r, p=params_of(ayf): ayf.flow_map(p["net"], z, t, r)))
    dmf = build("dmf", mlp(use_d=False), split=2, label_dropout=0.0)
    out.append(("dmf", lambda z, t, r, p=params_of(dmf): dmf.flow_map(p["net"], z, t, r)))
    imf = build("imf", mlp(use_d=False), omega_max=1.0, label_dropout=0.0)
    ones = jnp.ones((8,), jnp.float64)

    def imf_u(z, t, r, p=params_of(imf)):
        return imf.network(p["net"], z, t, r, 2.0 * ones, 0.2 * ones, 0.9 * ones, None)

    out.append(("imf", imf_u))
    return out


def test_every_jvp_matches_a_central_finite_difference():
    """D_t u (tangents (w, 1, 0)) and d_r u (tangents (0, 0, 1)) of each method's network, which is
    fed h = t - r (or r itself): float64 central differences along the same direction. Holding h
    fixed while t moves (a precomputed h) gives other numbers."""
    with jax.enable_x64(True):
        z, t, r = points(8, seed=4)
        w = jax.random.normal(jax.random.key(9), z.shape, jnp.float64)
        for name, u_fn in method_u_fns(lambda m: random_params(m)):
            _, du_dt = flowmap.total_derivative(u_fn, z, t, r, w)
            np.testing.assert_allclose(du_dt, central_difference(u_fn, z, t, r, w, 1.0, 0.0), rtol=1e-6, atol=1e-8)
            _, du_dr = flowmap.partial_r(u_fn, z, t, r)
            np.testing.assert_allclose(du_dr, central_difference(u_fn, z, t, r, 0 * w, 0.0, 1.0), rtol=1e-6, atol=1e-8)
            assert float(jnp.mean(jnp.abs(du_dr))) > 1e-3, name  # the network really sees r
            fixed_h = central_difference(u_fn, z, t, r, w, 1.0, 1.0)  # r moves with t: h fixed
            assert float(jnp.max(jnp.abs(fixed_h - du_dt))) > 1e-4, name


# ---------------------------------------------------------------------------
# Reductions


def test_r_equal_t_gives_the_guided_velocity_for_every_target():
    """At r = t: alpha-Flow's target is v~ in all three switch branches, DMF's and AYF's MeanFlow
    residual targets are the velocity (g = F - v_phi), iMF's V is u."""
    with jax.enable_x64(True):
        z, t, _ = points(16, seed=6)
        v = jax.random.normal(jax.random.key(7), z.shape, jnp.float64)
        af = build("alphaflow", mlp())
        p = random_params(af)["net"]
        for alpha in (0.0, 0.4, 1.0):
            np.testing.assert_array_equal(af.targets(p, z, t, t, v, None, jnp.asarray(alpha)), v)
        dmf = build("dmf", mlp(use_d=False), split=2, label_dropout=0.0)
        pd = random_params(dmf)["net"]
        u, du_dt = flowmap.total_derivative(lambda a, b, c: dmf.flow_map(pd, a, b, c), z, t, t, v)
        assert float(jnp.mean(jnp.abs(du_dt))) > 1e-3
        np.testing.assert_array_equal(flowmap.mf_target(v, t, t, du_dt), v)
        np.testing.assert_array_equal(u + (t - t)[:, None] * du_dt, u)  # iMF's V at r = t


def test_alpha_one_is_flow_matching_and_alpha_to_zero_is_meanflow():
    """alpha = 1: u_tgt = clip(v~) and the loss is mean_b alpha-weighted l / (sg(l) + c) of flow matching
    (by hand); alpha -> 0: (u_tgt - u) / alpha on r != t rows tends to the MeanFlow target minus u with
    an O(alpha) error (the jvp branch of the same switch is that target)."""
    with jax.enable_x64(True):
        net = mlp()
        one = build("alphaflow", net, alpha_schedule="constant", alpha_value=1.0, ratio_r_eq_t=0.5)
        params = random_params(one)
        batch = {"x": jnp.asarray(MU + C * np.random.default_rng(0).standard_normal((32, 2)))}
        rng = jax.random.key(11)
        loss, _ = one.loss(params, batch, rng, jnp.asarray(0))
        k_tr, k_e, _, _ = jax.random.split(rng, 4)
        t, r = one.sample_t_r(k_tr, 32)
        e = jax.random.normal(k_e, (32, 2), jnp.float64)
        x = batch["x"]
        z, v = (1 - t[:, None]) * x + t[:, None] * e, e - x
        u = net.apply({"params": params["net"]}, z, t, d=t - r)
        target = np.where((np.asarray(r) == np.asarray(t))[:, None], np.asarray(v), np.clip(np.asarray(v), -4, 4))
        ell = np.mean((np.asarray(u) - target) ** 2, axis=1)
        np.testing.assert_allclose(float(loss), np.mean(ell / (ell + 1e-3)), rtol=1e-10)

        zero = build("alphaflow", net, alpha_schedule="constant", alpha_value=0.0)
        p = params["net"]
        zz, tt, rr = points(16, seed=12)
        vv = jax.random.normal(jax.random.key(13), zz.shape, jnp.float64)
        u0 = zero.flow_map(p, zz, tt, rr)
        mf = zero.targets(p, zz, tt, rr, vv, None, jnp.asarray(0.0))
        errors = []
        for alpha in (1e-3, 5e-4):
            slope = (zero.targets(p, zz, tt, rr, vv, None, jnp.asarray(alpha)) - u0) / alpha
            errors.append(float(jnp.max(jnp.abs(slope - (mf - u0)))))
        assert errors[0] < 1e-2 and 1.8 < errors[0] / errors[1] < 2.2, errors


class ShortcutLinear(nn.Module):
    """s(x, t', k) = A x + B t' + G k (data-time velocity of the shortcut convention)."""

    num_classes: int = 0
    use_d: bool = True

    @nn.compact
    def __call__(self, x, t, y=None, d=None, train=False):
        return -0.4 * x + 0.3 * t[:, None] + 0.05 * d[:, None]


def test_alpha_half_with_the_shortcut_half_step_is_the_shortcut_target():
    """alpha = 1/2 of the core with v~ = u(z_t, t, s), s the midpoint, on the shortcut model seen as a
    flow map (u = -s(z, 1 - t, k)) is minus the suite's bootstrap target at level k."""
    with jax.enable_x64(True):
        sc = build("shortcut", ShortcutLinear(), GAUSS)
        levels = jnp.array([0, 1, 3, 5], jnp.int32)
        dt = jnp.exp2(-levels.astype(jnp.float64))
        t_data = jnp.array([0.0, 0.5, 0.25, 0.5], jnp.float64)
        x = jax.random.normal(jax.random.key(14), (4, 2), jnp.float64) * 0.5
        expected = sc.bootstrap_targets({}, x, t_data, levels, None)
        t, r = 1.0 - t_data, 1.0 - t_data - dt
        half = jnp.asarray(0.5, jnp.float64)
        v_half = sc.average_velocity({}, x, t, t - dt / 2)
        s, z_s = flowmap.alpha_point(x, t, r, v_half, half)
        target = flowmap.alpha_target(v_half, sc.average_velocity({}, z_s, s, r), half)
        np.testing.assert_allclose(target, -expected, rtol=1e-12, atol=1e-12)


class Wrapped(nn.Module):
    """An MLP taking iMF's inputs and ignoring the guidance ones (so MeanFlow's net and this one agree)."""

    net: nn.Module
    takes_guidance_inputs = True
    condition_on_t = False

    @nn.compact
    def __call__(self, x, t, y=None, d=None, train=False, extra=None, heads="u"):
        return self.net(x, t, y=y, d=d, train=train)


def test_imf_without_guidance_v_head_or_model_tangent_is_meanflow():
    """omega = 1, tangent e - x, no v-head: iMF's v-loss equals MeanFlow's loss and gradient (same
    draws, same network) to float64 rounding."""
    with jax.enable_x64(True):
        net = mlp()
        mf = build(
            "meanflow",
            net,
            t_logit_mean=-0.4,
            t_logit_std=1.0,
            r_logit_mean=-0.4,
            r_logit_std=1.0,
            ratio_r_neq_t=0.5,
            adaptive_p=1.0,
            adaptive_c=0.01,
            label_dropout=0.0,
        )
        imf = build("imf", Wrapped(net), omega_max=1.0, tangent="sample", v_head=False, label_dropout=0.0)
        params = random_params(mf)
        batch = {"x": jnp.asarray(MU + C * np.random.default_rng(1).standard_normal((32, 2)))}
        rng = jax.random.key(15)

        def value_and_grad(method, p):
            return jax.value_and_grad(lambda q: method.loss(q, batch, rng, jnp.asarray(0))[0])(p)

        loss_mf, grad_mf = value_and_grad(mf, params)
        loss_imf, grad_imf = value_and_grad(imf, {"net": {"net": params["net"]}})
        np.testing.assert_allclose(float(loss_imf), float(loss_mf), rtol=1e-12)
        for a, b in zip(jax.tree.leaves(grad_imf["net"]["net"]), jax.tree.leaves(grad_mf["net"])):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
        # With the v-head tangent the loss differs (the check can fail).
        other = build("imf", Wrapped(net), omega_max=1.0, tangent="boundary", v_head=False, label_dropout=0.0)
        assert (
            abs(float(other.loss({"net": {"net": params["net"]}}, batch, rng, jnp.asarray(0))[0]) - float(loss_mf))
            > 1e-6
        )


class ExactStudent(nn.Module):
    """F(z, t, s) = scale * exact u with s = t - d: the student at (or off) the exact flow map."""

    scale: float = 1.0
    num_classes: int = 0
    use_d: bool = True

    @nn.compact
    def __call__(self, x, t, y=None, d=None, train=False):
        self.param("unused", nn.initializers.zeros, (1,), jnp.float64)
        return self.scale * exact_u(x, t, t - d)


class FlowTeacher(nn.Module):
    """The suite's flow matching at data time tau = 1 - t: x0 - e = -v(z, 1 - tau)."""

    @nn.compact
    def __call__(self, x, tau, y=None, train=False):
        return -exact_v(x, 1.0 - tau)


def posterior_mean(x_sigma, sigma_level):
    """E[x | x + sigma e = x_sigma] for x ~ N(MU, C^2)."""
    s2 = sigma_level[:, None] ** 2
    return MU + C**2 / (C**2 + s2) * (x_sigma - MU)


class EDMTeacher(nn.Module):
    """F with EDM's preconditioning that gives the exact denoiser: F = (D - c_skip x) / c_out."""

    sigma_d: float = 0.5

    @nn.compact
    def __call__(self, inp, c_noise, y=None, train=False):
        sig = jnp.exp(4.0 * c_noise)[:, None]
        x = inp * jnp.sqrt(sig**2 + self.sigma_d**2)
        c_skip = self.sigma_d**2 / (sig**2 + self.sigma_d**2)
        c_out = sig * self.sigma_d / jnp.sqrt(sig**2 + self.sigma_d**2)
        return (posterior_mean(x, sig[:, 0]) - c_skip * x) / c_out


class TrigFlowTeacher(nn.Module):
    """F(x_s / sigma_d, s) with cos(s) x_s - sin(s) sigma_d F = the exact denoiser."""

    sigma_d: float = 0.5

    @nn.compact
    def __call__(self, u, s, y=None, train=False):
        x_s = u * self.sigma_d
        x_sigma = x_s / jnp.cos(s)[:, None]
        denoised = posterior_mean(x_sigma, self.sigma_d * jnp.tan(s))
        return (jnp.cos(s)[:, None] * x_s - denoised) / (jnp.sin(s)[:, None] * self.sigma_d)


@pytest.mark.parametrize(
    "kind,teacher", [("flow", FlowTeacher()), ("edm", EDMTeacher()), ("trigflow", TrigFlowTeacher())]
)
def test_ayf_teacher_velocity_of_each_parameterization_is_the_exact_velocity(kind, teacher):
    with jax.enable_x64(True):
        ayf = build("ayf", ExactStudent(), teacher="unread", teacher_kind=kind)
        ayf.teachers = {"teacher": (teacher, 0.5)}
        z, t, _ = points(32, seed=16)
        np.testing.assert_allclose(
            ayf.teacher_velocity("teacher", {}, z, t, None), exact_v(z, t), rtol=1e-10, atol=1e-10
        )


def test_ayf_residuals_reduce_to_meanflow_and_flow_matching_distillation():
    """r_w = 1 without normalization: g = F - (v_phi - (t - s) dF/dt), MeanFlow distillation, with
    dF/dt a float64 central difference along (v_phi, 1, 0); r_w = 0: g = F - v_phi. At the exact
    student both Eulerian and Lagrangian g vanish (zero loss and zero gradient), off it they do not."""
    with jax.enable_x64(True):
        batch = {"x": jnp.asarray(MU + C * np.random.default_rng(2).standard_normal((32, 2)))}
        rng = jax.random.key(17)
        for objective in ("eulerian", "lagrangian"):
            for scale in (1.0, 1.1):
                ayf = build(
                    "ayf",
                    ExactStudent(scale=scale),
                    teacher="unread",
                    objective=objective,
                    tangent_warmup=0,
                    r_max=1.0,
                    tangent_norm=False,
                )
                ayf.teachers = {"teacher": (FlowTeacher(), 0.5)}
                params = {"net": {"unused": jnp.zeros((1,), jnp.float64)}}
                terms = ayf.residual(params, batch, rng, jnp.asarray(0), {"teacher": {}})
                worst = float(jnp.max(jnp.abs(terms["g"])))
                assert (worst < 1e-10) if scale == 1.0 else (worst > 1e-3), (objective, scale, worst)
        ayf = build("ayf", ExactStudent(scale=1.1), teacher="unread", tangent_warmup=0, r_max=1.0, tangent_norm=False)
        ayf.teachers = {"teacher": (FlowTeacher(), 0.5)}
        params = {"net": {"unused": jnp.zeros((1,), jnp.float64)}}
        terms = ayf.residual(params, batch, rng, jnp.asarray(0), {"teacher": {}})
        z, t, r = terms["z_t"], terms["t"], terms["r"]
        v_phi = exact_v(z, t)

        def student(z_, t_, r_):
            return 1.1 * exact_u(z_, t_, r_)

        dF = central_difference(student, z, t, r, v_phi, 1.0, 0.0)
        np.testing.assert_allclose(terms["g"], student(z, t, r) - (v_phi - (t - r)[:, None] * dF), rtol=1e-6, atol=1e-8)
        no_warmup = build(
            "ayf", ExactStudent(scale=1.1), teacher="unread", tangent_warmup=10, r_max=1.0, tangent_norm=False
        )
        no_warmup.teachers = ayf.teachers
        g0 = no_warmup.residual(params, batch, rng, jnp.asarray(0), {"teacher": {}})["g"]  # r_w = 0 at step 0
        np.testing.assert_allclose(g0, student(z, t, r) - v_phi, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "cfg,shape,num_classes",
    [
        (dict(name="mlp", hidden=16, depth=3, emb_dim=16), (2,), 0),
        (dict(name="unet", channels=8, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(2,)), (4, 4, 1), 3),
        (dict(name="dit", hidden=16, depth=2, num_heads=2, patch=2), (4, 4, 2), 3),
    ],
)
def test_dmf_is_the_base_network_at_r_equal_t_and_takes_its_weights(cfg, shape, num_classes):
    """u(x, t, t) = -net(x, 1 - t) bit for bit for the MLP, the UNet and DiT; the parameter tree is the
    flow network's (train.init_from copies it); r != t changes the output; the conditioned layers
    are counted (MLP depth, UNet ResBlocks, DiT blocks + final layer)."""
    info = DatasetInfo(name="x", shape=shape, num_classes=num_classes, data_std=1.0)
    net = models.build(ml_collections.ConfigDict(cfg), data_shape=shape, num_classes=num_classes)
    dmf = build("dmf", net, info, split=1, label_dropout=0.0)
    flow = build("flow", net, info)
    example = {"x": np.zeros((1, *shape), np.float32)}
    shapes = jax.eval_shape(flow.init_params, jax.random.key(1), example)["net"]
    assert jax.tree.structure(shapes) == jax.tree.structure(
        jax.eval_shape(dmf.init_params, jax.random.key(0), example)["net"]
    )
    assert dmf.num_layers == {"mlp": 3, "unet": 8, "dit": 3}[cfg["name"]]
    rng = np.random.default_rng(3)
    params = jax.tree.map(lambda a: jnp.asarray(0.3 * rng.standard_normal(a.shape), a.dtype), shapes)
    x = jax.random.normal(jax.random.key(2), (3, *shape))
    t, r = jnp.array([0.2, 0.5, 0.9]), jnp.array([0.1, 0.0, 0.4])
    y = jnp.array([0, 2, num_classes]) if num_classes else None

    base = -flow.apply_net(params, x, 1.0 - t, y)  # eager: no compilation of these small networks
    same, other = dmf.flow_map(params, x, t, t, y), dmf.flow_map(params, x, t, r, y)
    np.testing.assert_array_equal(same, base)
    assert float(jnp.max(jnp.abs(other - base))) > 1e-4


def test_dmf_decoupled_mlp_by_hand():
    """The MLP's forward pass written out (models/mlp.py) with its first `split` conditioned projections
    fed SiLU(E(1 - t)) and the others SiLU(E(1 - r)): u = -out (float64)."""
    from fewstep_jax.models.layers import positional_embedding

    with jax.enable_x64(True):
        dmf = build("dmf", mlp(use_d=False), split=2, label_dropout=0.0)
        p = random_params(dmf)["net"]
        z, t, r = points(5, seed=21)

        def dense(layer, h):
            return h @ layer["kernel"] + layer["bias"]

        def embedding(time):
            e = positional_embedding(time, 16)
            return dense(p["cond"]["time"]["dense_1"], jax.nn.silu(dense(p["cond"]["time"]["dense_0"], e)))

        early, late = jax.nn.silu(embedding(1.0 - t)), jax.nn.silu(embedding(1.0 - r))
        h = dense(p["in_proj"], z)
        for i in range(3):
            h = jax.nn.silu(h + dense(p[f"cond_proj_{i}"], early if i < 2 else late))
            h = dense(p[f"hidden_{i}"], h)
        expected = -dense(p["out_proj"], jax.nn.silu(h))
        np.testing.assert_allclose(dmf.flow_map(p, z, t, r), expected, rtol=1e-12, atol=1e-12)


def test_dmf_meanflow_ablation_starts_as_the_base_network_and_learns_r():
    """conditioning='interval' (the paper's "MF" rows): the base network's weights plus a new interval
    embedder whose last layer starts at zero, so it is the base network at every r until trained;
    with that layer moved, r matters."""
    net = mlp(use_d=False, dtype="float32")
    dmf = build("dmf", net, conditioning="interval", label_dropout=0.0)
    flow = build("flow", net)
    example = {"x": np.zeros((1, 2), np.float32)}
    params = dmf.init_params(jax.random.key(0), example)["net"]
    base = jax.tree.map(lambda a: a + 0.2, flow.init_params(jax.random.key(1), example)["net"])
    assert set(params) == set(base) | {"interval_embedding"}
    params = dict(params, **base)
    x, t, r = jax.random.normal(jax.random.key(2), (3, 2)), jnp.array([0.3, 0.6, 0.9]), jnp.array([0.0, 0.2, 0.5])
    expected = -flow.apply_net(base, x, 1.0 - t)
    np.testing.assert_allclose(dmf.flow_map(params, x, t, r), expected, rtol=1e-6, atol=1e-7)
    moved = dict(params, interval_embedding=jax.tree.map(lambda a: a + 0.3, params["interval_embedding"]))
    assert float(jnp.max(jnp.abs(dmf.flow_map(moved, x, t, r) - dmf.flow_map(moved, x, t, t)))) > 1e-4


def test_dmf_loss_by_hand():
    """(l_FM + l_MF) / 2 with l = log(mean(delta^2) e^-phi + 0.01) + phi, phi = 0 at init, the MF target
    v - (t - r) du/dt with du/dt a central difference of the decoupled network (float64)."""
    with jax.enable_x64(True):
        dmf = build("dmf", mlp(use_d=False), split=2, label_dropout=0.0)
        params = random_params(dmf)
        params["logvar"] = jax.tree.map(jnp.zeros_like, params["logvar"])
        batch = {"x": jnp.asarray(MU + C * np.random.default_rng(3).standard_normal((16, 2)))}
        rng = jax.random.key(18)
        loss, _ = dmf.loss(params, batch, rng, jnp.asarray(0))
        _, k_tf, k_ef, k_tr, k_er, _ = jax.random.split(rng, 6)
        x = np.asarray(batch["x"])
        sig = lambda k, m: 1 / (1 + np.exp(-(m + np.asarray(jax.random.normal(k, (16,)), np.float64))))  # noqa: E731
        t_f = sig(k_tf, 0.0)
        e_f = np.asarray(jax.random.normal(k_ef, (16, 2), jnp.float64))
        z_f = (1 - t_f[:, None]) * x + t_f[:, None] * e_f
        net = lambda z, t, r: dmf.flow_map(params["net"], jnp.asarray(z), jnp.asarray(t), jnp.asarray(r))  # noqa: E731
        l_fm = np.log(np.mean((np.asarray(net(z_f, t_f, t_f)) - (e_f - x)) ** 2, axis=1) + 0.01)
        k_t, k_r = jax.random.split(k_tr)
        a, b = sig(k_t, 0.4), sig(k_r, -1.2)
        t, r = np.maximum(a, b), np.minimum(a, b)
        e = np.asarray(jax.random.normal(k_er, (16, 2), jnp.float64))
        z, v = (1 - t[:, None]) * x + t[:, None] * e, e - x
        du = np.asarray(
            central_difference(net, jnp.asarray(z), jnp.asarray(t), jnp.asarray(r), jnp.asarray(v), 1.0, 0.0)
        )
        target = v - (t - r)[:, None] * du
        l_mf = np.log(np.mean((np.asarray(net(z, t, r)) - target) ** 2, axis=1) + 0.01)
        np.testing.assert_allclose(float(loss), np.mean(0.5 * (l_fm + l_mf)), rtol=1e-7)


def test_imf_guidance_inputs_interval_masking_and_dropped_rows():
    """omega~ = omega inside [t_min, t_max], 1 outside; the r = t rows get [0, 1]; dropped rows are the
    first ones (r = t), with the null label and v_g = v_hat; elsewhere v_g = v_hat + (1 - 1/omega~)(v_c - v_u)."""
    with jax.enable_x64(True):
        imf = build("imf", mlp(use_d=False, num_classes=3), LABELED, label_dropout=0.5)
        params = random_params(imf)
        batch = {"x": jnp.asarray(np.random.default_rng(4).standard_normal((64, 2))), "y": jnp.arange(64) % 3}
        terms = imf.training_terms(params, batch, jax.random.key(19), train=False)
        t, lo, hi, w, wu = (np.asarray(terms[k]) for k in ("t", "t_min", "t_max", "omega", "omega_used"))
        eq = np.arange(64) < 32
        assert np.all(lo[eq] == 0.0) and np.all(hi[eq] == 1.0) and np.all(lo[~eq] <= 0.5) and np.all(hi[~eq] >= 0.5)
        inside = (t >= lo) & (t <= hi)
        assert 0 < inside[~eq].sum() < 32
        np.testing.assert_array_equal(wu, np.where(inside, w, 1.0))
        assert np.all((w >= 1.0) & (w <= 8.0)) and np.any(w > 2.0)
        dropped = np.asarray(terms["dropped"])
        assert (
            dropped.sum() > 0 and np.all(np.flatnonzero(dropped) == np.arange(dropped.sum())) and np.all(dropped <= eq)
        )
        np.testing.assert_array_equal(np.asarray(terms["y_in"])[dropped], 3)
        np.testing.assert_array_equal(np.asarray(terms["v_g"])[dropped], np.asarray(terms["v_hat"])[dropped])
        v_c, v_u = imf.boundary_velocities(params["net"], terms["z_t"], terms["t"], terms["omega_used"], batch["y"])
        expected = terms["v_hat"] + (1 - 1 / terms["omega_used"])[:, None] * (v_c - v_u)
        np.testing.assert_allclose(
            np.asarray(terms["v_g"])[~dropped], np.asarray(expected)[~dropped], rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(terms["tangent"], v_c, rtol=1e-6)


# ---------------------------------------------------------------------------
# The iMF DiT and DiT's qk-norm


def test_imf_dit_heads_rope_and_sizes():
    """Zero-initialized outputs; u and v heads differ once weights move; the rotary embedding makes
    q.k depend on the position difference only; the inference parameter count of B/2 is the paper's
    89M (configs/imf_imagenet256.py lists all four sizes)."""
    net = imf_dit.IMFDiT(hidden=16, depth=2, num_heads=2, patch=2, aux_depth=1, num_classes=5)
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))
    t = jnp.array([0.3, 0.8])
    extra = jnp.array([[0.5, 0.1, 0.9], [0.0, 0.0, 1.0]])
    params = jax.jit(lambda k: net.init(k, x, t, y=jnp.array([1, 5]), d=t / 2, extra=extra, heads="uv"))(
        jax.random.key(1)
    )
    u, v = net.apply(params, x, t, y=jnp.array([1, 5]), d=t / 2, extra=extra, heads="uv")
    assert float(jnp.max(jnp.abs(u))) == 0.0 and float(jnp.max(jnp.abs(v))) == 0.0
    rng = np.random.default_rng(2)  # numpy draws: no random-number kernel to compile per shape
    moved = jax.tree.map(lambda a: a + 0.05 * rng.standard_normal(a.shape).astype(np.float32), params)
    u, v = net.apply(moved, x, t, y=jnp.array([1, 5]), d=t / 2, extra=extra, heads="uv")
    assert float(jnp.max(jnp.abs(u - v))) > 1e-3
    np.testing.assert_array_equal(net.apply(moved, x, t, y=jnp.array([1, 5]), d=t / 2, extra=extra), u)
    np.testing.assert_array_equal(net.apply(moved, x, t, y=jnp.array([1, 5]), d=t / 2, extra=extra, heads="v"), v)
    q = jax.random.normal(jax.random.key(3), (1, 1, 1, 8))
    k = jax.random.normal(jax.random.key(4), (1, 1, 1, 8))
    angles = jnp.asarray(imf_dit.rope_angles(8, 12))

    def score(i, j):
        return float(jnp.sum(imf_dit.apply_rope(q, angles[i : i + 1]) * imf_dit.apply_rope(k, angles[j : j + 1])))

    np.testing.assert_allclose(score(3, 1), score(9, 7), rtol=1e-5)
    assert abs(score(3, 1) - score(3, 2)) > 1e-3
    for size, millions in (("B", 89),):
        big = models.build(
            ml_collections.ConfigDict(dict(name="imf_dit", size=size)), data_shape=(32, 32, 4), num_classes=1000
        )
        shapes = jax.eval_shape(
            lambda: big.init(jax.random.key(0), jnp.zeros((1, 32, 32, 4)), jnp.zeros((1,)), heads="uv")
        )
        leaves = jax.tree_util.tree_leaves_with_path(shapes["params"])
        inference = sum(np.prod(a.shape) for path, a in leaves if not str(path[0].key).startswith("v_"))
        assert round(inference / 1e6) == millions, (size, inference)


def test_dit_qk_norm_option():
    """Off by default (no new weights); on, the queries and keys are RMS-normalized per head with scales
    starting at 1, and scaling the qkv kernel's query part leaves the output unchanged."""
    cfg = dict(name="dit", hidden=16, depth=1, num_heads=2, patch=2)
    x, t = jax.random.normal(jax.random.key(0), (2, 4, 4, 2)), jnp.array([0.2, 0.7])
    plain = models.build(ml_collections.ConfigDict(cfg), data_shape=(4, 4, 2), num_classes=0)
    normed = models.build(ml_collections.ConfigDict(dict(cfg, qk_norm=True)), data_shape=(4, 4, 2), num_classes=0)
    assert "q_norm" not in jax.eval_shape(plain.init, jax.random.key(1), x, t)["params"]["block_0"]
    params = jax.jit(normed.init)(jax.random.key(1), x, t)["params"]
    np.testing.assert_array_equal(params["block_0"]["q_norm"], np.ones(8))
    rng = np.random.default_rng(5)
    params = jax.tree.map(lambda a: a + 0.3 * rng.standard_normal(a.shape).astype(np.float32), params)
    out = normed.apply({"params": params}, x, t)
    kernel = params["block_0"]["qkv"]["kernel"]
    scaled = dict(
        params,
        block_0=dict(
            params["block_0"],
            qkv=dict(
                params["block_0"]["qkv"],
                kernel=kernel.at[:, :16].mul(3.0),
                bias=params["block_0"]["qkv"]["bias"].at[:16].mul(3.0),
            ),
        ),
    )
    np.testing.assert_allclose(normed.apply({"params": scaled}, x, t), out, rtol=1e-4, atol=1e-5)
    # Without the norm the same rescaling changes the output (the check can fail).
    bare = dict(params)
    bare["block_0"] = {k: v for k, v in params["block_0"].items() if k not in ("q_norm", "k_norm")}
    bare_scaled = dict(scaled, block_0={k: v for k, v in scaled["block_0"].items() if k not in ("q_norm", "k_norm")})
    assert (
        float(jnp.max(jnp.abs(plain.apply({"params": bare_scaled}, x, t) - plain.apply({"params": bare}, x, t)))) > 1e-4
    )


# ---------------------------------------------------------------------------
# Bad input: one-line errors before anything compiles


@pytest.mark.parametrize(
    "name,net,info,cfg,match",
    [
        ("alphaflow", "d", GAUSS, dict(alpha_schedule="constant", alpha_value=1.5), r"alpha must be in \[0, 1\]"),
        ("alphaflow", "d", GAUSS, dict(alpha_value=-0.1), r"alpha must be in \[0, 1\]"),
        ("alphaflow", "d", GAUSS, dict(cfg_omega=2.0, label_dropout=0.1), "asked of an unconditional model"),
        ("dmf", "plain", GAUSS, dict(split=3), r"split=3 is outside the network's depth.*\[1, 2\]"),
        ("dmf", "plain", GAUSS, dict(split=-1), r"outside the network's depth"),
        ("dmf", "plain", GAUSS, dict(guidance_omega=0.6), "asked of an unconditional model"),
        ("dmf", "d", GAUSS, dict(), "set model.use_d=False"),
        ("imf", "plain", GAUSS, dict(omega_max=8.0), "asked of an unconditional model"),
        ("imf", "plain", LABELED, dict(tangent="v_head", v_head=False), "needs the auxiliary v-head"),
        ("ayf", "d", GAUSS, dict(teacher="x", teacher_kind="meanflow"), "teacher_kind must be one of"),
        ("ayf", "d", GAUSS, dict(teacher=""), "needs method.teacher"),
        ("ayf", "d", GAUSS, dict(teacher="x", autoguidance=2.0), "needs method.weak_teacher"),
    ],
)
def test_bad_configs_fail_in_one_line(name, net, info, cfg, match):
    network = mlp(use_d=net == "d", num_classes=info.num_classes, dtype="float32")
    with pytest.raises(ValueError, match=match) as error:
        build(name, network, info, **cfg)
    assert "\n" not in str(error.value)


def test_bad_requests_fail_in_one_line():
    dmf = build("dmf", mlp(use_d=False, dtype="float32"), split=2)
    with pytest.raises(ValueError, match="guidance=2.0 was asked of an unconditional model"):
        dmf.sample({"net": {}}, jax.random.key(0), num_samples=2, num_steps=1, guidance=2.0)
    with pytest.raises(ValueError, match="cannot sample with 0 steps"):
        dmf.sample({"net": {}}, jax.random.key(0), num_samples=2, num_steps=0)
    imf = build("imf", mlp(use_d=False, dtype="float32"), omega_max=1.0, label_dropout=0.0)
    with pytest.raises(ValueError, match="asked of an unconditional model"):
        imf.sample({"net": {}}, jax.random.key(0), num_samples=2, num_steps=1, guidance=3.0)
    with pytest.raises(ValueError, match="power-of-two number of steps"):
        flowmap.times("dyadic", 3)
    with pytest.raises(ValueError, match="needs a schedule of 3 times"):
        flowmap.times("custom", 2, custom=(1.0, 0.0))
    with pytest.raises(ValueError, match="must decrease strictly from 1 to 0"):
        flowmap.times("custom", 2, custom=(1.0, 0.6, 0.1))
    with pytest.raises(ValueError, match="unknown schedule 'cosine'"):
        flowmap.times("cosine", 2)
    with pytest.raises(ValueError, match=r"gamma must be in \[0, 1\]"):
        build("alphaflow", mlp(dtype="float32"), sample_gamma=1.5)
    ayf = build("ayf", mlp(dtype="float32"), teacher="runs/mf")

    def loader(workdir):
        return ml_collections.ConfigDict(dict(method=dict(name="meanflow"), data=dict(name="gauss"))), {}

    with pytest.raises(ValueError, match=r"runs/mf is a 'meanflow' run, not a diffusion or flow model"):
        ayf.load_frozen(loader)

    def edm_loader(workdir):
        return ml_collections.ConfigDict(dict(method=dict(name="edm", sigma_d=0.5), data=dict(name="gauss"))), {}

    with pytest.raises(
        ValueError, match=r"is a 'edm' run \(edm parameterization\); method.teacher_kind='flow' needs a flow one"
    ):
        ayf.load_frozen(edm_loader)

    def other_data_loader(workdir):
        return ml_collections.ConfigDict(dict(method=dict(name="flow"), data=dict(name="digits"))), {}

    wrong_data = r"^ayf: the teacher at runs/mf was trained on 'digits' \(this run: 'gauss'\)$"
    with pytest.raises(ValueError, match=wrong_data):
        ayf.load_frozen(other_data_loader)
    with pytest.raises(ValueError, match="the decoupled flow map needs one of the networks"):
        edm2 = models.build(
            ml_collections.ConfigDict(
                dict(name="edm2", channels=8, channel_mult=(1,), attn_resolutions=(), channels_per_head=8)
            ),
            data_shape=(8, 8, 1),
            num_classes=0,
        )
        build("dmf", edm2, DatasetInfo(name="x", shape=(8, 8, 1), num_classes=0, data_std=1.0))
