"""Learning-rate schedules, optimizers, EMAs and the in-graph non-finite guard."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fewstep_jax import optim, state
from fewstep_jax.config_lib import OptimConfig, TrainConfig


def test_schedules_closed_form():
    cos = optim.learning_rate(OptimConfig(lr=1.0, schedule="cosine", end_factor=0.1), 100)
    np.testing.assert_allclose([cos(0), cos(50), cos(100), cos(200)], [1.0, 0.55, 0.1, 0.1], rtol=1e-6)
    lin = optim.learning_rate(OptimConfig(lr=2.0, schedule="linear", end_factor=0.0), 10)
    np.testing.assert_allclose([lin(0), lin(5), lin(10)], [2.0, 1.0, 0.0], atol=1e-6)
    inv = optim.learning_rate(OptimConfig(lr=1.0, schedule="inverse_sqrt", decay_steps=100), 1000)
    np.testing.assert_allclose([inv(50), inv(100), inv(400)], [1.0, 1.0, 0.5], rtol=1e-6)
    warm = optim.learning_rate(OptimConfig(lr=1.0, warmup_steps=4), 100)
    np.testing.assert_allclose([warm(0), warm(1), warm(3), warm(10)], [0.25, 0.5, 1.0, 1.0], rtol=1e-6)


@pytest.mark.parametrize("name", ["adam", "adamw", "radam"])
def test_optimizers_minimize_a_quadratic(name):
    tx, _ = optim.build(OptimConfig(name=name, lr=0.1, weight_decay=1e-4 if name == "adamw" else 0.0), 200)
    p = {"w": jnp.array([3.0, -2.0])}
    s = tx.init(p)
    for _ in range(300):
        g = jax.grad(lambda q: jnp.sum(q["w"] ** 2))(p)
        u, s = tx.update(g, s, p)
        p = optax.apply_updates(p, u)
    assert float(jnp.max(jnp.abs(p["w"]))) < 0.05


def test_gradient_clipping():
    """With a huge Adam eps the first update is -lr g / (|g| + eps): it shows the clipped g."""
    g = {"w": jnp.array([300.0, 400.0])}  # global norm 500
    for clip, expected_g in ((0.0, [300.0, 400.0]), (1.0, [0.6, 0.8])):
        tx, _ = optim.build(OptimConfig(name="adam", lr=1.0, eps=1e3, grad_clip=clip), 10)
        params = {"w": jnp.zeros(2)}
        update, _ = tx.update(g, tx.init(params), params)
        expected = -np.array(expected_g) / (np.abs(expected_g) + 1e3)
        np.testing.assert_allclose(np.asarray(update["w"]), expected, rtol=1e-4)


def test_weight_decay_needs_adamw():
    with pytest.raises(ValueError, match="weight_decay is only supported with adamw"):
        optim.build(OptimConfig(name="adam", weight_decay=0.1), 10)


def test_ema_decays_and_update():
    decays = state.ema_decays(TrainConfig(batch_size=100, ema_decays=(0.9,), ema_halflives=(200.0,)))
    assert decays == {"ema_0.9": 0.9, "ema_hl200": pytest.approx(0.5**0.5)}
    tx = optax.sgd(1.0)
    params = {"w": jnp.zeros(())}
    st = state.create(params, tx, decays)
    # Constant gradient -1 with SGD lr 1: params after k steps = k.
    for _ in range(3):
        st, _ = state.apply_gradients(st, {"w": -jnp.ones(())}, jnp.zeros(()), tx, decays)
    # EMA e_k = d e_{k-1} + (1 - d) k, e_0 = 0.
    for name, d in decays.items():
        e = 0.0
        for k in (1, 2, 3):
            e = d * e + (1 - d) * k
        np.testing.assert_allclose(float(st.ema[name]["w"]), e, rtol=1e-6)
    # Half-life: after `half_life` images the weight of the start is one half.
    assert decays["ema_hl200"] ** (200 / 100) == pytest.approx(0.5)


def test_nonfinite_update_is_skipped_and_recorded():
    tx = optax.sgd(1.0)
    decays = {"ema": 0.5}
    st = state.create({"w": jnp.ones(())}, tx, decays)
    st, _ = state.apply_gradients(st, {"w": jnp.ones(())}, jnp.ones(()), tx, decays)
    good = jax.device_get(st)
    st, _ = state.apply_gradients(st, {"w": jnp.array(jnp.nan)}, jnp.ones(()), tx, decays)
    assert list(np.asarray(st.nonfinite)) == [1, 2]  # step index 1, gradient norm
    assert float(st.params["w"]) == float(good.params["w"]) and float(st.ema["ema"]["w"]) == float(good.ema["ema"]["w"])
    st, _ = state.apply_gradients(st, {"w": jnp.ones(())}, jnp.array(jnp.inf), tx, decays)
    assert list(np.asarray(st.nonfinite)) == [1, 2]  # the first bad step is kept
    assert float(st.params["w"]) == float(good.params["w"])  # and nothing moves any more


def test_update_that_turns_parameters_nonfinite_is_skipped_even_with_finite_loss_and_grads():
    """A NaN learning rate (finite loss and gradients) must not write NaN parameters into the state."""
    tx = optax.sgd(jnp.nan)
    decays = {"ema": 0.5}
    st = state.create({"w": jnp.ones(())}, tx, decays)
    st, grad_norm = state.apply_gradients(st, {"w": jnp.ones(())}, jnp.ones(()), tx, decays)
    assert float(grad_norm) == 1.0
    assert list(np.asarray(st.nonfinite)) == [0, 3]
    assert state.NONFINITE_QUANTITIES[3] == "parameter update"
    assert float(st.params["w"]) == 1.0 and float(st.ema["ema"]["w"]) == 1.0 and int(st.step) == 1


def test_replace_nonfinite_is_torch_nan_to_num_with_edm_bounds():
    """EDM / ECT training loops: NaN -> 0, +inf -> 1e5, -inf -> -1e5, finite entries untouched."""
    grads = {"a": jnp.array([jnp.nan, 2.5, jnp.inf]), "b": jnp.array([[-jnp.inf, -3.0]])}
    fixed, count = state.replace_nonfinite(grads)
    np.testing.assert_array_equal(np.asarray(fixed["a"]), [0.0, 2.5, 1e5])
    np.testing.assert_array_equal(np.asarray(fixed["b"]), [[-1e5, -3.0]])
    assert int(count) == 3
    tx = optax.sgd(1e-6)
    st = state.create({"w": jnp.zeros(3)}, tx, {})
    st, _ = state.apply_gradients(st, {"w": fixed["a"]}, jnp.array(jnp.nan), tx, {}, check_loss=False)
    assert int(st.nonfinite[0]) == -1  # the loss is not checked under this policy
    np.testing.assert_allclose(np.asarray(st.params["w"]), [0.0, -2.5e-6, -0.1], rtol=1e-6)


def test_all_finite_over_many_leaves_matches_numpy():
    """state.all_finite (under jit) against numpy's isfinite over every entry: a single NaN, +inf
    or -inf in any one of 40 leaves is caught; the largest finite float32 values are not."""
    rng = np.random.default_rng(0)
    leaves = [rng.standard_normal((3, 5) if i % 2 else (7,)).astype(np.float32) for i in range(40)]
    leaves[3][0] = np.finfo(np.float32).max
    leaves[9][2, 4] = -np.finfo(np.float32).max
    check = jax.jit(state.all_finite)
    assert bool(check(leaves)) is True
    for bad in (np.nan, np.inf, -np.inf):
        for i in (0, 17, 39):
            tree = [leaf.copy() for leaf in leaves]
            tree[i].flat[-1] = bad
            want = all(np.isfinite(leaf).all() for leaf in tree)
            assert want is False and bool(check({"a": tree[:20], "b": tree[20:]})) is want
