"""sCT / sCD (sCM, Lu & Song 2024) against math: the jvp tangent, the loss
gradient's discrete-time limit, the samplers, and distillation from an exact teacher."""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from fewstep_jax import methods, models
from fewstep_jax.data import DatasetInfo

SIGMA_D = 0.5
INFO = DatasetInfo(name="vec", shape=(3,), num_classes=0, data_std=SIGMA_D)


def perturbed(params, key, scale=0.3):
    """Random params everywhere (the zero-initialized output layer would hide the net)."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(tree, [p + scale * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)])


def build_sct(dtype="float64", dropout=0.0, **method_cfg):
    net = models.build(
        ml_collections.ConfigDict(dict(name="mlp", hidden=32, depth=2, emb_dim=32, dtype=dtype, dropout=dropout)),
        data_shape=INFO.shape,
        num_classes=0,
    )
    cfg = dict(name="scm_sct", sigma_d=SIGMA_D, **method_cfg)
    return methods.build(ml_collections.ConfigDict(cfg), net, INFO)


def random_problem(n=16, dtype=jnp.float64, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    x0 = jax.random.normal(k1, (n, 3), dtype) * 0.7
    z = SIGMA_D * jax.random.normal(k2, (n, 3), dtype)
    t = jax.random.uniform(k3, (n,), dtype, 0.05, 1.5)
    return x0, z, t


def trajectory(x0, z, tau):
    return jnp.cos(tau)[:, None] * x0 + jnp.sin(tau)[:, None] * z


def init_params(method, dtype=jnp.float64, seed=1):
    example = {"x": jnp.zeros((1, 3), dtype), "y": jnp.zeros((1,), jnp.int32)}
    params = method.init_params(jax.random.key(seed), example)
    return jax.tree.map(lambda p: p.astype(dtype), perturbed(params, jax.random.key(seed + 100)))


def test_tangent_equals_finite_difference_of_cos_t_f():
    """g (r = 1) == cos(t) d/dtau f^-(x(tau), tau) at tau = t along the sCT trajectory."""
    with jax.enable_x64(True):
        method = build_sct()
        params = init_params(method)
        x0, z, t = random_problem()
        dxdt = jnp.cos(t)[:, None] * z - jnp.sin(t)[:, None] * x0
        _, g = method.tangent(params["net"], trajectory(x0, z, t), t, dxdt, r=1.0, train=False)

        def f(tau):
            return method.consistency_fn(params["net"], trajectory(x0, z, tau), tau)

        h = 1e-5
        fd = jnp.cos(t)[:, None] * (f(t + h) - f(t - h)) / (2 * h)
        np.testing.assert_allclose(np.asarray(g), np.asarray(fd), rtol=1e-6, atol=1e-9)
        # The tangent is not trivially small: the test compares real numbers.
        assert float(jnp.mean(jnp.abs(g))) > 1e-2


def test_loss_gradient_is_the_dt_to_zero_limit_of_the_discrete_loss():
    """Without normalization and weighting (r = 1), grad of the sCM loss ==
    lim_{dt->0} grad E[(1/(sigma_d tan t)) mean_pix (f(x_t,t) - SG f(x_{t-dt},t-dt))^2] / dt."""
    with jax.enable_x64(True):
        method = build_sct(tangent_norm=False, adaptive_weighting=False, tangent_warmup=0)
        params = init_params(method)
        x0 = 0.7 * jax.random.normal(jax.random.key(5), (32, 3), jnp.float64)
        batch = {"x": x0, "y": jnp.zeros((32,), jnp.int32)}
        rng = jax.random.key(7)
        step = jnp.asarray(0, jnp.int32)
        grad_cont = jax.grad(lambda p: method.loss(p, batch, rng, step)[0])(params)

        # The same t and z the loss draws (its key split is part of its contract).
        k_t, k_z, *_ = jax.random.split(rng, 5)
        t = method.sample_time(k_t, 32).astype(jnp.float64)
        z = SIGMA_D * jax.random.normal(k_z, x0.shape, x0.dtype)

        def discrete(p, dt):
            f_now = method.consistency_fn(p["net"], trajectory(x0, z, t), t)
            f_prev = jax.lax.stop_gradient(method.consistency_fn(p["net"], trajectory(x0, z, t - dt), t - dt))
            per = jnp.mean((f_now - f_prev) ** 2, axis=1) / (SIGMA_D * jnp.tan(t))
            return jnp.mean(per) / dt

        errors = []
        for dt in (1e-3, 1e-4, 1e-5):
            grad_disc = jax.grad(discrete)(params, dt)
            a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(grad_cont)])
            b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(grad_disc)])
            errors.append(np.linalg.norm(a - b) / np.linalg.norm(a))
        assert errors[-1] < 1e-4, errors
        assert errors[0] > errors[1] > errors[2], errors  # first-order convergence in dt


def test_stop_gradient_pass_equals_trainable_pass_with_dropout():
    """Same dropout key in both passes: F - F^- = 0, so with normalization on and weighting off the
    loss value is exactly mean ||g||^2 / (||g|| + c)^2 / D."""
    method = build_sct(dtype="float32", dropout=0.3, adaptive_weighting=False, tangent_warmup=0)
    params = init_params(method, jnp.float32)
    x0, _, _ = random_problem(n=64, dtype=jnp.float32)
    batch = {"x": x0, "y": jnp.zeros((64,), jnp.int32)}
    rng = jax.random.key(3)
    loss, metrics = jax.jit(method.loss)(params, batch, rng, jnp.asarray(0))
    k_t, k_z, k_drop, *_ = jax.random.split(rng, 5)
    t = method.sample_time(k_t, 64)
    z = SIGMA_D * jax.random.normal(k_z, x0.shape)
    x_t = trajectory(x0, z, t)
    dxdt = jnp.cos(t)[:, None] * z - jnp.sin(t)[:, None] * x0
    F_m, g = method.tangent(params["net"], x_t, t, dxdt, r=1.0, train=True, dropout_rng=k_drop)
    F = method.apply_net(params["net"], x_t / SIGMA_D, t, train=True, dropout_rng=k_drop)
    # Equal up to float32 rounding (the jvp's primal is a differently fused graph); a
    # different dropout mask would differ by O(1) (checked below).
    np.testing.assert_allclose(np.asarray(F), np.asarray(F_m), rtol=1e-5, atol=1e-5)
    g_norm = jnp.linalg.norm(g, axis=1)
    expected = jnp.mean(g_norm**2 / (g_norm + 0.1) ** 2) / 3
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-5)
    assert float(metrics["tangent_nonfinite_frac"]) == 0.0
    # Dropout is really on: another key gives another output.
    F_other = method.apply_net(params["net"], x_t / SIGMA_D, t, train=True, dropout_rng=jax.random.key(99))
    assert not np.allclose(np.asarray(F), np.asarray(F_other))


def test_tangent_warmup_and_normalization():
    method = build_sct(dtype="float32", tangent_warmup=100)
    params = init_params(method, jnp.float32)
    x0, _, _ = random_problem(n=8, dtype=jnp.float32)
    batch = {"x": x0, "y": jnp.zeros((8,), jnp.int32)}
    loss = jax.jit(method.loss)
    for step, r in ((0, 0.0), (50, 0.5), (100, 1.0), (1000, 1.0)):
        _, m = loss(params, batch, jax.random.key(0), jnp.asarray(step))
        assert float(m["tangent_warmup_r"]) == pytest.approx(r)


def test_tangent_warmup_scales_only_the_time_derivative_term():
    """r = 0 leaves g = -cos(t)^2 (sigma_d F^- - dx_t/dt); g is affine in r (sCM Alg. 1)."""
    method = build_sct(dtype="float32")
    params = init_params(method, jnp.float32)
    x0, z, t = random_problem(dtype=jnp.float32)
    x_t = trajectory(x0, z, t)
    dxdt = jnp.cos(t)[:, None] * z - jnp.sin(t)[:, None] * x0
    F_m, g0 = method.tangent(params["net"], x_t, t, dxdt, r=0.0, train=False)
    expected = -(jnp.cos(t) ** 2)[:, None] * (SIGMA_D * F_m - dxdt)
    np.testing.assert_allclose(np.asarray(g0), np.asarray(expected), rtol=1e-5, atol=1e-6)
    _, g_half = method.tangent(params["net"], x_t, t, dxdt, r=0.5, train=False)
    _, g1 = method.tangent(params["net"], x_t, t, dxdt, r=1.0, train=False)
    np.testing.assert_allclose(np.asarray(g_half), np.asarray((g0 + g1) / 2), rtol=1e-4, atol=1e-5)


def test_adaptive_weight_is_trained_in_the_same_step():
    """d loss / d bias of w_phi at w = 0 is mean(err) - 1, with err = ||g / (||g|| + c)||^2 / D."""
    method = build_sct(dtype="float32", tangent_warmup=0)
    params = init_params(method, jnp.float32)
    params["weight"] = jax.tree.map(jnp.zeros_like, params["weight"])  # w_phi = 0 everywhere
    x0, _, _ = random_problem(n=32, dtype=jnp.float32)
    batch = {"x": x0, "y": jnp.zeros((32,), jnp.int32)}
    rng = jax.random.key(6)
    grads = jax.grad(lambda p: method.loss(p, batch, rng, jnp.asarray(0))[0])(params)
    k_t, k_z, *_ = jax.random.split(rng, 5)
    t = method.sample_time(k_t, 32)
    z = SIGMA_D * jax.random.normal(k_z, x0.shape)
    dxdt = jnp.cos(t)[:, None] * z - jnp.sin(t)[:, None] * x0
    _, g = method.tangent(params["net"], trajectory(x0, z, t), t, dxdt, r=1.0, train=True)
    g_norm = jnp.linalg.norm(g, axis=1)
    err = g_norm**2 / (g_norm + 0.1) ** 2 / 3
    np.testing.assert_allclose(float(grads["weight"]["out"]["bias"][0]), float(jnp.mean(err) - 1), rtol=1e-4)


def test_samplers_reproduce_f():
    method = build_sct(dtype="float32")
    params = init_params(method, jnp.float32)
    n, rng = 5, jax.random.key(4)
    x = jax.random.normal(jax.random.key(8), (n, 3))
    # f(x, 0) = x by construction.
    np.testing.assert_array_equal(np.asarray(method.consistency_fn(params["net"], x, jnp.zeros(n))), np.asarray(x))
    t_max = np.arctan(80.0 / SIGMA_D)
    assert method.sample_times(2) == pytest.approx([t_max, 1.1])
    assert method.sample_times(3) == pytest.approx([t_max, 1.1, 0.55])
    keys1 = jax.random.split(rng, 1)
    z0_one = SIGMA_D * jax.random.normal(keys1[0], (n, 3))
    np.testing.assert_allclose(
        np.asarray(method.sample(params, rng, num_samples=n, num_steps=1)),
        np.asarray(method.consistency_fn(params["net"], z0_one, jnp.full((n,), t_max, jnp.float32))),
        rtol=1e-6,
    )
    keys = jax.random.split(rng, 2)
    z0 = SIGMA_D * jax.random.normal(keys[0], (n, 3))
    x0 = method.consistency_fn(params["net"], z0, jnp.full((n,), t_max, jnp.float32))
    z1 = SIGMA_D * jax.random.normal(keys[1], (n, 3))
    renoised = np.cos(1.1) * x0 + np.sin(1.1) * z1
    two = method.consistency_fn(params["net"], renoised, jnp.full((n,), 1.1, jnp.float32))
    sampled = method.sample(params, rng, num_samples=n, num_steps=2)
    np.testing.assert_allclose(np.asarray(sampled), np.asarray(two), rtol=1e-5)
    # sigma_mid keeps the noise level: t_mid = arctan(sigma_mid / sigma_d).
    other = build_sct(dtype="float32", sigma_mid=0.98)
    assert other.sample_times(2)[1] == pytest.approx(np.arctan(0.98 / SIGMA_D))
    with pytest.raises(ValueError, match="samples with 'euler' only"):
        method.sample(params, rng, num_samples=n, num_steps=2, sampler="heun")
    with pytest.raises(ValueError, match="guidance"):
        method.sample(params, rng, num_samples=n, num_steps=2, guidance=2.0)


# ---------------------------------------------------------------------------
# sCD against the exact PF-ODE of Gaussian data

MU = np.array([0.4, -0.2, 0.1])
S = 0.3


def gaussian_stats(t):
    c, s = jnp.cos(t)[:, None], jnp.sin(t)[:, None]
    return c, s, c**2 * S**2 + s**2 * SIGMA_D**2


class ExactVelocity(nn.Module):
    """F*(x_t / sigma_d, t) = E[v_t | x_t] / sigma_d for x0 ~ N(MU, S^2 I)."""

    scale: float = 1.0  # != 1: a wrong teacher
    num_classes: int = 0

    @nn.compact
    def __call__(self, u, t, y=None, d=None, train=False):
        x_t = SIGMA_D * u
        c, s, var = gaussian_stats(t)
        resid = x_t - c * MU
        e_x0 = MU + c * S**2 / var * resid
        e_z = s * SIGMA_D**2 / var * resid
        return self.scale * (c * e_z - s * e_x0) / SIGMA_D


class ExactConsistency(nn.Module):
    """F with f(x_t, t) = MU + S (x_t - cos t MU) / sqrt(V_t): the exact PF-ODE flow map to t = 0."""

    num_classes: int = 0

    @nn.compact
    def __call__(self, u, t, y=None, d=None, train=False):
        x_t = SIGMA_D * u
        c, s, var = gaussian_stats(t)
        f = MU + S * (x_t - c * MU) / jnp.sqrt(var)
        return (c * x_t - f) / (s * SIGMA_D)


def scd_with_teacher(teacher):
    cfg = ml_collections.ConfigDict(dict(name="scm_scd", sigma_d=SIGMA_D, teacher="<exact>"))
    method = methods.build(cfg, ExactConsistency(), INFO)
    method.teacher_net = teacher
    return method


def test_scd_with_exact_teacher_has_zero_tangent():
    with jax.enable_x64(True):
        n = 256
        k1, k2, k3 = jax.random.split(jax.random.key(11), 3)
        x0 = MU + S * jax.random.normal(k1, (n, 3), jnp.float64)
        z = SIGMA_D * jax.random.normal(k2, (n, 3), jnp.float64)
        t = jax.random.uniform(k3, (n,), jnp.float64, 0.05, 1.5)
        x_t = trajectory(x0, z, t)
        frozen = {"teacher": {}}

        def tangent_of(method, dxdt):
            return method.tangent({}, x_t, t, dxdt, r=1.0, train=False)[1]

        exact = scd_with_teacher(ExactVelocity())
        g = tangent_of(exact, exact.velocity(x0, z, x_t, t, None, frozen, jnp.ones(n)))
        assert float(jnp.max(jnp.abs(g))) < 1e-10
        # The test can fail: a wrong teacher, or sCT's one-sample velocity, give a non-zero tangent.
        wrong = scd_with_teacher(ExactVelocity(scale=1.3))
        g_wrong = tangent_of(wrong, wrong.velocity(x0, z, x_t, t, None, frozen, jnp.ones(n)))
        assert float(jnp.mean(jnp.abs(g_wrong))) > 1e-2
        sct_velocity = jnp.cos(t)[:, None] * z - jnp.sin(t)[:, None] * x0
        assert float(jnp.mean(jnp.abs(tangent_of(exact, sct_velocity)))) > 1e-2


def test_method_config_errors():
    with pytest.raises(ValueError, match="scm_scd needs method.teacher"):
        methods.build(ml_collections.ConfigDict(dict(name="scm_scd")), ExactConsistency(), INFO)
    with pytest.raises(ValueError, match="scm_sct trains without a teacher"):
        methods.build(ml_collections.ConfigDict(dict(name="scm_sct", teacher="x")), ExactConsistency(), INFO)
    with pytest.raises(ValueError, match="teacher guidance needs class-conditional data"):
        methods.build(
            ml_collections.ConfigDict(dict(name="scm_scd", teacher="x", teacher_guidance_max=2.0)),
            ExactConsistency(),
            INFO,
        )


# ---------------------------------------------------------------------------
# Through the training loop: teacher -> sCT (init from its EMA) and sCD


@pytest.mark.slow
def test_sct_and_scd_train_from_a_trigflow_teacher(tmp_path):
    from conftest import load_config, quiet

    from fewstep_jax import train

    teacher = str(tmp_path / "teacher")
    train.train_and_evaluate(quiet(load_config("trigflow_toy2d"), 10), teacher)
    for name in ("scm_sct_toy2d", "scm_scd_toy2d"):
        config = quiet(load_config(name), 10)
        config.train.init_from = teacher
        if name == "scm_scd_toy2d":
            config.method.teacher = teacher
        config.train.eval_every = 10
        summary = train.train_and_evaluate(config, str(tmp_path / name))
        assert summary["status"] == "finished"
        assert np.isfinite(summary["eval"]["eval/euler_nfe2/swd"])
    with open(tmp_path / "scm_scd_toy2d" / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    logged = [r for r in records if "tangent_nonfinite_frac" in r]
    assert logged and all(r["tangent_nonfinite_frac"] == 0.0 for r in logged)
    assert all(r["g_norm/t0.0-0.4"] > 0 and r["g_norm/t1.2-1.6"] > 0 for r in logged)

    bad = quiet(load_config("scm_scd_toy2d"), 5)
    bad.method.teacher = str(tmp_path / "scm_sct_toy2d")  # an sCT run is not a TrigFlow teacher
    with pytest.raises(ValueError, match="not 'trigflow'"):
        train.train_and_evaluate(bad, str(tmp_path / "bad"))


# ---------------------------------------------------------------------------
# sCD with teacher guidance (sCM sec. 5, ImageNet-512 recipe)

LABELED = DatasetInfo(name="vec", shape=(3,), num_classes=10, data_std=SIGMA_D)


class LabelTeacher(nn.Module):
    """F = the label value (null class -> -1), broadcast."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, u, t, y=None, d=None, train=False):
        val = jnp.where(y == self.num_classes, -1.0, y.astype(u.dtype))
        return jnp.broadcast_to(val[:, None], u.shape)


class DStudent(nn.Module):
    """F = d, broadcast: shows what reaches the student's `d` input."""

    num_classes: int = 10
    use_d: bool = True

    @nn.compact
    def __call__(self, u, t, y=None, d=None, train=False):
        return jnp.broadcast_to(d[:, None], u.shape).astype(u.dtype)


def test_scd_teacher_guidance_and_the_scale_input():
    cfg = dict(name="scm_scd", sigma_d=SIGMA_D, teacher="<test>", teacher_guidance_min=1.0, teacher_guidance_max=2.0)
    method = methods.build(ml_collections.ConfigDict(cfg), DStudent(), LABELED)
    method.teacher_net = LabelTeacher()
    n = 4
    x_t = jnp.zeros((n, 3))
    t = jnp.full((n,), 0.7)
    y = jnp.array([0, 3, 7, 9])
    s = jnp.array([1.0, 1.25, 1.5, 2.0])
    v = method.teacher_velocity({}, x_t, t, y, s)
    expected = SIGMA_D * (-1.0 + np.asarray(s) * (np.asarray(y) + 1.0))  # F_u + s (F_c - F_u)
    np.testing.assert_allclose(np.asarray(v[:, 0]), expected, rtol=1e-6)
    assert method.student_d(s) is s  # the per-example scale is the student's d
    # Sampling with guidance w feeds d = w: f = cos(t) x - sin(t) sigma_d w at t_max in one step.
    rng = jax.random.key(0)
    out = method.sample({"net": {}}, rng, num_samples=n, labels=y, num_steps=1, guidance=1.5)
    x = SIGMA_D * jax.random.normal(jax.random.split(rng, 1)[0], (n, 3))
    t_max = method.t_max
    np.testing.assert_allclose(
        np.asarray(out), np.cos(t_max) * np.asarray(x) - np.sin(t_max) * SIGMA_D * 1.5, rtol=1e-5, atol=1e-6
    )


@pytest.mark.slow
def test_guided_student_initializes_from_the_teacher(tmp_path):
    """A student with the extra d embedding takes every teacher weight; only d's are new."""
    from conftest import load_config, quiet
    from flax import traverse_util

    from fewstep_jax import experiment, train

    teacher = str(tmp_path / "teacher")
    train.train_and_evaluate(quiet(load_config("trigflow_toy2d"), 5), teacher)
    _, teacher_net = experiment.load_pretrained(teacher)
    config = quiet(load_config("scm_sct_toy2d"), 5)
    config.train.init_from = teacher
    config.model.use_d = True
    exp = experiment.setup(config, str(tmp_path / "student"))
    state, _ = experiment.restore_or_init(exp)
    exp.checkpointer.close()
    ours = traverse_util.flatten_dict(jax.device_get(state.params["net"]), sep="/")
    theirs = traverse_util.flatten_dict(jax.device_get(teacher_net), sep="/")
    assert set(theirs) < set(ours)
    new = set(ours) - set(theirs)
    assert new and all(k.startswith("cond/d/") for k in new), new  # the d embedder only
    for k, v in theirs.items():
        np.testing.assert_array_equal(ours[k], v)
