"""Shortcut models (Frans et al. 2024) against their definitions and closed forms."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import CallLog, Recorder

from fewstep_jax import methods
from fewstep_jax.data import DatasetInfo

INFO = DatasetInfo(name="vec", shape=(3,), num_classes=0, data_std=1.0)
ALPHA, BETA, GAMMA = -0.7, 1.3, 0.05


class LinearVelocity(nn.Module):
    """s(x, t, k) = ALPHA x + BETA t + GAMMA k: the two half steps have a closed form."""

    num_classes: int = 0
    use_d: bool = True
    scale: float = 1.0  # makes outputs large enough to exercise the clipping

    @nn.compact
    def __call__(self, x, t, y=None, d=None, train=False):
        return self.scale * (ALPHA * x + BETA * t[:, None] + GAMMA * d[:, None])


def build(net, info=INFO, **cfg):
    return methods.build(ml_collections.ConfigDict(dict(name="shortcut", **cfg)), net, info)


def test_bootstrap_target_is_two_half_steps_at_the_next_level():
    method = build(LinearVelocity())
    levels = jnp.array([0, 1, 3, 6, 6, 2], jnp.int32)  # mixed levels in one batched call
    n = levels.shape[0]
    x = jax.random.normal(jax.random.key(0), (n, 3))
    dt = 2.0 ** -np.asarray(levels, np.float64)
    t = np.array([0.0, 0.5, 0.25, 1 - 1 / 64, 0.5, 0.75])
    target = method.bootstrap_targets({}, x, jnp.asarray(t, jnp.float32), levels, None)
    # Closed form with s = a x + b t + c k at level k + 1, half step h = dt / 2.
    x64, h, k1 = np.asarray(x, np.float64), dt[:, None] / 2, (np.asarray(levels) + 1.0)[:, None]
    v1 = ALPHA * x64 + BETA * t[:, None] + GAMMA * k1
    x_mid = x64 + h * v1
    v2 = ALPHA * x_mid + BETA * (t[:, None] + h) + GAMMA * k1
    np.testing.assert_allclose(np.asarray(target), (v1 + v2) / 2, rtol=1e-5, atol=1e-6)


def test_bootstrap_target_clips_like_the_official_code():
    method = build(LinearVelocity(scale=20.0))
    levels = jnp.array([0, 2], jnp.int32)
    x = jnp.array([[3.0, -3.0, 0.5], [1.0, 2.0, -1.0]])
    t = jnp.array([0.0, 0.25])
    target = np.asarray(method.bootstrap_targets({}, x, t, levels, None))
    assert np.all(np.abs(target) <= 4.0) and np.any(np.abs(target) == 4.0)
    # Recompute with explicit clipping of x_mid and of the target.
    s = lambda x, t, k: 20.0 * (ALPHA * x + BETA * t[:, None] + GAMMA * k[:, None])  # noqa: E731
    k1 = np.array([1.0, 3.0])
    h = np.array([0.5, 0.125])[:, None]
    v1 = s(np.asarray(x), np.asarray(t), k1)
    x_mid = np.clip(np.asarray(x) + h * v1, -4, 4)
    v2 = s(x_mid, np.asarray(t) + h[:, 0], k1)
    np.testing.assert_allclose(target, np.clip((v1 + v2) / 2, -4, 4), rtol=1e-5, atol=1e-5)


class LabelVelocity(nn.Module):
    """Velocity = label value (null -> -1): shows where guidance is applied."""

    num_classes: int = 10
    use_d: bool = True

    @nn.compact
    def __call__(self, x, t, y=None, d=None, train=False):
        val = jnp.where(y == self.num_classes, -1.0, y.astype(jnp.float32))
        return jnp.broadcast_to(val[:, None], x.shape)


def test_guidance_only_at_the_flow_level_half_steps():
    info = DatasetInfo(name="lab", shape=(2,), num_classes=10, data_std=1.0)
    method = build(LabelVelocity(), info, cfg_scale=2.0)
    levels = jnp.array([6, 5, 0], jnp.int32)  # only k = 6 has half steps at the flow level 7
    y = jnp.array([3, 3, 3])
    target = method.bootstrap_targets({}, jnp.zeros((3, 2)), jnp.zeros(3), levels, y)
    guided = -1.0 + 2.0 * (3.0 + 1.0)  # v_u + w (v_c - v_u)
    np.testing.assert_allclose(np.asarray(target[:, 0]), [min(guided, 4.0), 3.0, 3.0])


def test_every_level_gets_rows_and_small_batches_are_refused():
    method = build(LinearVelocity())
    levels = method.bootstrap_levels(32)  # batch 128, 1/4 bootstrap
    counts = np.bincount(levels, minlength=7)
    assert np.all(counts[:7] >= 4) and counts.sum() == 32 and levels.max() == 6
    assert method.split_rows(128) == (32, 96)
    assert build(LinearVelocity(), bootstrap_every=8).split_rows(128) == (16, 112)
    with pytest.raises(ValueError, match="cannot cover the 7 step-size levels; use a batch of at least 28"):
        method.bootstrap_levels(6)


@pytest.mark.parametrize("n", [1, 2, 4, 8, 128])
def test_sampler_calls_the_net_n_times_at_level_log2_n(n):
    log = CallLog()
    method = build(Recorder(log=log))
    with jax.disable_jit():
        method.sample({"net": {}}, jax.random.key(0), num_samples=2, num_steps=n)
    assert len(log.calls) == n == method.nfe(n, "euler")
    np.testing.assert_allclose([t for t, _ in log.calls], np.arange(n) / n, atol=1e-7)
    assert all(d == np.log2(n) for _, d in log.calls)


def test_sampler_rejects_other_step_counts_and_guidance_below_the_flow_level():
    method = build(LinearVelocity())
    for bad in (3, 6, 256, 0):
        with pytest.raises(ValueError, match=r"power-of-two number of steps up to 128"):
            method.sample({"net": {}}, jax.random.key(0), num_samples=2, num_steps=bad)
    info = DatasetInfo(name="lab", shape=(2,), num_classes=10, data_std=1.0)
    cond = build(LabelVelocity(), info)
    with pytest.raises(ValueError, match="guidance applies only at the flow level"):
        cond.sample({"net": {}}, jax.random.key(0), num_samples=2, num_steps=4, guidance=1.5)
    cond.sample({"net": {}}, jax.random.key(0), num_samples=2, num_steps=128, guidance=1.5)


class LandingVelocity(nn.Module):
    """s(x, t | y) = (c_y - x) / (1 - t), c_y = y (null label: -1): every step count lands exactly
    on c_y at t = 1 (the last step has dt = 1 - t), and CFG with scale w on c_null + w (c_y - c_null)."""

    num_classes: int = 10
    use_d: bool = True

    @nn.compact
    def __call__(self, x, t, y=None, d=None, train=False):
        c = jnp.where(y == self.num_classes, -1.0, y.astype(jnp.float32))
        return (c[:, None] - x) / (1.0 - t)[:, None]


class ScaleEvaluator:
    """Reads the guidance scale back from samples of LandingVelocity: w = (x + 1) / (y + 1)."""

    num_samples = 20

    def evaluate(self, samples, labels):
        return {"scale": float(np.mean((samples[:, 0] + 1.0) / (labels + 1.0)))}


def test_evaluation_over_nfes_guides_only_the_flow_level(tmp_path):
    """eval.guidance = 1.5 over NFEs (1, 4, 128) runs in one evaluation: 128 steps (the flow level)
    sample with 1.5, 1 and 4 steps with 1 (their guidance is baked in by training); the rows and
    the report record the scale used. Guidance at 1 or 4 steps used to be refused outright."""
    from fewstep_jax import evaluate
    from fewstep_jax.config_lib import EvalConfig

    info = DatasetInfo(name="lab", shape=(2,), num_classes=10, data_std=1.0)
    method = build(LandingVelocity(), info, cfg_scale=1.5)
    assert [method.sampling_guidance(k, 1.5) for k in (1, 4, 128)] == [1.0, 1.0, 1.5]
    ev = EvalConfig(nfes=(1, 4, 128), guidance=1.5, num_samples=20, batch_size=20)
    rows = evaluate.evaluate_steps(
        method, evaluate.SampleFns(method), {"net": {}}, ScaleEvaluator(), ev, jax.random.key(0), ev.nfes
    )
    assert [(r["steps"], r["nfe"], r["guidance"]) for r in rows] == [(1, 1, 1.0), (4, 4, 1.0), (128, 128, 1.5)]
    np.testing.assert_allclose([r["scale"] for r in rows], [1.0, 1.0, 1.5], rtol=1e-4)
    table = evaluate.write_report(rows, {"scale": 0.0}, primary="scale", out_dir=str(tmp_path), title="t")
    assert "| steps | NFE | guidance | scale |" in table and "| 128 | 128 | 1.5 | 1.5 |" in table
    # Called directly, the sampler still refuses guidance below the flow level.
    with pytest.raises(ValueError, match="guidance applies only at the flow level"):
        method.sample({"net": {}}, jax.random.key(0), num_samples=2, num_steps=4, guidance=1.5)


def test_flow_and_bootstrap_rows_use_disjoint_images():
    """Changing the bootstrap images moves only the bootstrap error, and vice versa."""
    method = build(LinearVelocity())
    x = jax.random.normal(jax.random.key(1), (64, 3))
    batch = {"x": x, "y": jnp.zeros((64,), jnp.int32)}
    rng = jax.random.key(2)
    params = {"net": {}}
    inputs = methods.LossInputs(ema_params=params)
    _, m0 = method.loss(params, batch, rng, 0, inputs)
    n_boot, _ = method.split_rows(64)
    _, m_boot = method.loss(params, {**batch, "x": x.at[:n_boot].add(5.0)}, rng, 0, inputs)
    _, m_flow = method.loss(params, {**batch, "x": x.at[n_boot:].add(5.0)}, rng, 0, inputs)
    assert float(m_boot["flow_mse"]) == float(m0["flow_mse"]) and float(m_boot["bootstrap_mse"]) != float(
        m0["bootstrap_mse"]
    )
    assert float(m_flow["bootstrap_mse"]) == float(m0["bootstrap_mse"]) and float(m_flow["flow_mse"]) != float(
        m0["flow_mse"]
    )


def test_config_errors():
    with pytest.raises(ValueError, match="set model.use_d=True"):
        build(LinearVelocity(use_d=False))
    with pytest.raises(ValueError, match="power of two"):
        build(LinearVelocity(), num_steps_max=100)
    with pytest.raises(ValueError, match="cfg_scale != 1 needs class-conditional data"):
        build(LinearVelocity(), cfg_scale=1.5)


@pytest.mark.parametrize(
    "cfg,n,expected_d",
    [
        (dict(), 4, 2.0),  # the code: the level k = log2 N
        (dict(d_input="step_size"), 4, 0.25),  # the paper's notation: the step size
        (dict(d_input="step_size"), 128, 1 / 128),
        (dict(d_input="step_size", flow_level_d="zero"), 128, 0.0),  # the paper's d = 0 flow level
        (dict(d_input="step_size", flow_level_d="zero"), 64, 1 / 64),
    ],
)
def test_paper_or_code_step_size_input(cfg, n, expected_d):
    log = CallLog()
    method = build(Recorder(log=log), **cfg)
    with jax.disable_jit():
        method.sample({"net": {}}, jax.random.key(0), num_samples=2, num_steps=n)
    assert [d for _, d in log.calls] == pytest.approx([expected_d] * n)


def test_zero_flow_level_reaches_the_finest_half_steps_and_flow_rows():
    log = CallLog()
    method = build(Recorder(log=log), d_input="step_size", flow_level_d="zero")
    with jax.disable_jit():  # one row at a time: the Recorder reads concrete inputs (no vmap)
        method.bootstrap_target({}, jnp.zeros(3), jnp.zeros(()), jnp.array(6), None)
        method.bootstrap_target({}, jnp.zeros(3), jnp.zeros(()), jnp.array(5), None)
    assert [d for _, d in log.calls] == [0.0, 0.0, 1 / 64, 1 / 64]  # two half steps each
    with pytest.raises(ValueError, match="needs d_input='step_size'"):
        build(LinearVelocity(), flow_level_d="zero")
