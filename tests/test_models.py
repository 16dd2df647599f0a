"""Tests for fewstep_jax.models: interface, zero-init, conditioning, dropout, jvp, validation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from fewstep_jax import models
from fewstep_jax.models import layers

NUM_CLASSES = 3

# Small but complete networks: attention at a visited level plus the middle attention.
UNET_SMALL = dict(name="unet", channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,))
MLP_SMALL = dict(name="mlp", hidden=32, depth=2, emb_dim=16)


def _build(cfg: dict, data_shape, num_classes: int = 0, **overrides):
    return models.build(ConfigDict({**cfg, **overrides}), data_shape=data_shape, num_classes=num_classes)


def _init(net, data_shape, batch: int = 2, dtype=jnp.float32):
    x = jnp.zeros((batch, *data_shape), dtype)
    t = jnp.zeros((batch,), dtype)
    return jax.jit(net.init)(jax.random.key(0), x, t)["params"]


def _perturb(params, key, scale: float = 0.2):
    """Adds N(0, scale^2) noise to every leaf, so zero-init layers no longer hide dependencies."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    noisy = [p + scale * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)]
    return jax.tree.unflatten(treedef, noisy)


def _inputs(data_shape, batch: int, key, dtype=jnp.float32):
    kx, kt = jax.random.split(key)
    x = jax.random.normal(kx, (batch, *data_shape), dtype)
    t = jax.random.uniform(kt, (batch,), dtype, 0.1, 1.5)
    return x, t


# --------------------------------------------------------------------------------------------
# Shape, dtype and zero-initialized output.

SHAPE_CASES = [
    ("mlp_2d", MLP_SMALL, (2,), 4),
    ("unet_8x8x1", UNET_SMALL, (8, 8, 1), 2),
    ("unet_16x16x3", dict(name="unet", channels=16, channel_mult=(1, 2, 2), num_blocks=1,
                          attn_resolutions=(8,)), (16, 16, 3), 2),
    ("unet_32x32x3", dict(name="unet", channels=16, channel_mult=(1, 2, 2), num_blocks=1,
                          attn_resolutions=(16,)), (32, 32, 3), 2),
    ("unet_64x64x3", dict(name="unet", channels=8, channel_mult=(1, 1, 2, 2), num_blocks=1,
                          attn_resolutions=(8,)), (64, 64, 3), 1),
]


@pytest.mark.parametrize("name,cfg,data_shape,batch", SHAPE_CASES, ids=[c[0] for c in SHAPE_CASES])
def test_fresh_network_output_is_zero_with_input_shape(name, cfg, data_shape, batch):
    net = _build(cfg, data_shape, num_classes=NUM_CLASSES)
    params = _init(net, data_shape, batch)
    x, t = _inputs(data_shape, batch, jax.random.key(1))
    y = jnp.arange(batch, dtype=jnp.int32) % NUM_CLASSES
    out = jax.jit(net.apply)({"params": params}, x, t, y)
    assert out.shape == x.shape
    assert out.dtype == jnp.float32
    # EDM / DDPM++ zero-init output layer: the untrained network is exactly 0.
    np.testing.assert_array_equal(np.asarray(out), 0.0)


def test_bfloat16_compute_returns_float32_and_float32_params():
    net = _build(UNET_SMALL, (8, 8, 1), dtype="bfloat16")
    params = _perturb(_init(net, (8, 8, 1)), jax.random.key(2))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(_init(net, (8, 8, 1))))
    x, t = _inputs((8, 8, 1), 2, jax.random.key(3))
    out = jax.jit(net.apply)({"params": params}, x, t)
    assert out.dtype == jnp.float32 and out.shape == x.shape
    assert bool(jnp.all(jnp.isfinite(out))) and float(jnp.abs(out).max()) > 0


# --------------------------------------------------------------------------------------------
# Conditioning on t, y (with the NULL class) and d, with perturbed (non-zero) parameters.

COND_CASES = [
    ("mlp", MLP_SMALL, (2,)),
    ("unet", UNET_SMALL, (8, 8, 1)),
]


@pytest.fixture(scope="module", params=COND_CASES, ids=[c[0] for c in COND_CASES])
def cond_net(request):
    """A use_d, class-conditional, dropout network with perturbed params, and a jitted apply."""
    _, cfg, data_shape = request.param
    net = _build(cfg, data_shape, num_classes=NUM_CLASSES, use_d=True, dropout=0.3)
    params = _perturb(_init(net, data_shape), jax.random.key(4))
    apply = jax.jit(net.apply, static_argnames="train")
    return net, params, apply, data_shape


def test_output_depends_on_t_y_and_d(cond_net):
    _, params, apply, data_shape = cond_net
    batch = 3
    x, t = _inputs(data_shape, batch, jax.random.key(5))
    y = jnp.array([0, 1, 2], jnp.int32)
    d = jnp.full((batch,), 0.25)
    v = {"params": params}
    base = apply(v, x, t, y, d)

    def differs(other):  # per example, every example must change
        diff = jnp.abs(other - base).reshape(batch, -1).max(axis=1)
        return bool(jnp.all(diff > 1e-4))

    assert differs(apply(v, x, t + 0.3, y, d)), "output does not depend on t"
    assert differs(apply(v, x, t, jnp.full((batch,), NUM_CLASSES, jnp.int32), d)), "label vs null"
    assert differs(apply(v, x, t, (y + 1) % NUM_CLASSES, d)), "output does not depend on y"
    assert differs(apply(v, x, t, y, d + 0.5)), "output does not depend on d"
    # d=None means zeros.
    np.testing.assert_array_equal(apply(v, x, t, y, None), apply(v, x, t, y, jnp.zeros(batch)))


def test_null_class_equals_y_none(cond_net):
    _, params, apply, data_shape = cond_net
    x, t = _inputs(data_shape, 3, jax.random.key(6))
    v = {"params": params}
    null = jnp.full((3,), NUM_CLASSES, jnp.int32)
    np.testing.assert_array_equal(apply(v, x, t, None), apply(v, x, t, null))


def test_dropout_only_in_train_and_keyed(cond_net):
    _, params, apply, data_shape = cond_net
    x, t = _inputs(data_shape, 3, jax.random.key(7))
    y = jnp.array([0, 1, 3], jnp.int32)
    v = {"params": params}
    k1, k2 = jax.random.key(8), jax.random.key(9)
    eval_a = apply(v, x, t, y, train=False, rngs={"dropout": k1})
    eval_b = apply(v, x, t, y, train=False, rngs={"dropout": k2})
    np.testing.assert_array_equal(eval_a, eval_b)
    np.testing.assert_array_equal(eval_a, apply(v, x, t, y))  # no rng needed in eval
    train_a = apply(v, x, t, y, train=True, rngs={"dropout": k1})
    np.testing.assert_array_equal(train_a, apply(v, x, t, y, train=True, rngs={"dropout": k1}))
    train_b = apply(v, x, t, y, train=True, rngs={"dropout": k2})
    assert float(jnp.abs(train_a - train_b).max()) > 1e-4
    assert float(jnp.abs(train_a - eval_a).max()) > 1e-4


def test_batch_independence(cond_net):
    """GroupNorm is per example: example i's output ignores the rest of the batch."""
    _, params, apply, data_shape = cond_net
    x, t = _inputs(data_shape, 4, jax.random.key(10))
    y = jnp.array([0, 1, 2, 3], jnp.int32)
    d = jnp.array([0.0, 0.1, 0.2, 0.3])
    v = {"params": params}
    full = apply(v, x, t, y, d)
    for i in (0, 2):
        single = apply(v, x[i : i + 1], t[i : i + 1], y[i : i + 1], d[i : i + 1])
        np.testing.assert_allclose(full[i : i + 1], single, rtol=1e-5, atol=1e-5)
    # And changing another example leaves example 0 unchanged.
    x2 = x.at[1:].set(10.0 * x[1:])
    np.testing.assert_allclose(apply(v, x2, t, y, d)[0], full[0], rtol=1e-5, atol=1e-5)


def test_grad_flows_to_all_params(cond_net):
    _, params, apply, data_shape = cond_net
    x, t = _inputs(data_shape, 2, jax.random.key(11))
    y = jnp.array([0, 1], jnp.int32)

    def loss(p):
        return jnp.mean(apply({"params": p}, x, t, y, t / 2) ** 2)

    value, grads = jax.value_and_grad(loss)(params)
    assert np.isfinite(float(value))
    norms = jax.tree.map(lambda g: float(jnp.abs(g).max()), grads)
    dead = [jax.tree_util.keystr(path) for path, n in jax.tree_util.tree_leaves_with_path(norms)
            if not n > 0]
    # Only the rows of label ids absent from y get no gradient from the label table.
    assert all("label" in p for p in dead), dead


# --------------------------------------------------------------------------------------------
# Forward-mode AD: what consistency models / MeanFlow differentiate.

@pytest.mark.parametrize("cfg,data_shape", [(MLP_SMALL, (2,)), (UNET_SMALL, (8, 8, 1))],
                         ids=["mlp", "unet"])
def test_jvp_matches_central_difference_float64(cfg, data_shape):
    with jax.enable_x64(True):
        net = _build(cfg, data_shape, num_classes=NUM_CLASSES, use_d=True, dtype="float64")
        params = _init(net, data_shape, dtype=jnp.float64)
        params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
        params = _perturb(params, jax.random.key(12))
        x, t = _inputs(data_shape, 2, jax.random.key(13), jnp.float64)
        y = jnp.array([1, NUM_CLASSES], jnp.int32)
        d = jnp.array([0.3, 0.7])
        kvx, kvt = jax.random.split(jax.random.key(14))
        vx = jax.random.normal(kvx, x.shape, jnp.float64)
        vt = jax.random.normal(kvt, t.shape, jnp.float64)

        def f(xx, tt):
            return net.apply({"params": params}, xx, tt, y, d)

        out, tangent = jax.jit(lambda a, b: jax.jvp(f, (a, b), (vx, vt)))(x, t)
        assert out.dtype == jnp.float64 and tangent.shape == x.shape
        eps = 1e-5
        f_jit = jax.jit(f)
        fd = (f_jit(x + eps * vx, t + eps * vt) - f_jit(x - eps * vx, t - eps * vt)) / (2 * eps)
        rel = float(jnp.linalg.norm(tangent - fd) / jnp.linalg.norm(tangent))
        assert float(jnp.linalg.norm(tangent)) > 0
        assert rel < 1e-6, rel


def test_attention_matches_reference_and_is_jvp_safe():
    kq, kk, kv = jax.random.split(jax.random.key(15), 3)
    q = jax.random.normal(kq, (2, 5, 3, 4))
    k = jax.random.normal(kk, (2, 7, 3, 4))
    v = jax.random.normal(kv, (2, 7, 3, 4))
    ref = jax.nn.dot_product_attention(q, k, v, implementation="xla")
    np.testing.assert_allclose(layers.attention(q, k, v), ref, rtol=1e-5, atol=1e-5)
    _, tan = jax.jvp(layers.attention, (q, k, v), (q, k, v))
    assert tan.shape == q.shape and bool(jnp.all(jnp.isfinite(tan)))


def test_positional_embedding_convention():
    emb = layers.positional_embedding(jnp.array([0.0, 2.0]), 8)
    assert emb.shape == (2, 8) and emb.dtype == jnp.float32
    np.testing.assert_allclose(emb[0], [1, 1, 1, 1, 0, 0, 0, 0])
    freqs = 10000.0 ** (-np.arange(4) / 3)  # endpoint: 1 ... 1/max_period
    np.testing.assert_allclose(emb[1], np.concatenate([np.cos(2 * freqs), np.sin(2 * freqs)]),
                               rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="even"):
        layers.positional_embedding(jnp.zeros(2), 7)


def test_group_count_clamps_to_divisor():
    assert layers.group_count(64) == 32
    assert layers.group_count(8) == 8
    assert layers.group_count(48) == 16
    assert layers.group_count(3) == 1


def test_count_params():
    params = {"a": jnp.zeros((3, 4)), "b": {"c": jnp.zeros((5,))}}
    assert models.count_params(params) == 17


# --------------------------------------------------------------------------------------------
# Eager validation with messages that name the problem.

@pytest.mark.parametrize(
    "cfg,data_shape,match",
    [
        (dict(name="resnet"), (8, 8, 1), r"unknown model name 'resnet'.*'mlp'.*'unet'"),
        (dict(name="unet", chanels=32), (8, 8, 1), r"unknown key\(s\) \['chanels'\].*channels"),
        (dict(name="mlp", hiden=32), (2,), r"unknown key\(s\) \['hiden'\].*hidden"),
        (dict(name="unet", channel_mult=(1, 2, 2, 2)), (12, 12, 1), r"divisible by .*8"),
        (dict(name="unet"), (8, 16, 1), r"square"),
        (dict(name="unet"), (2,), r"3-D data_shape"),
        (dict(name="mlp"), (8, 8, 1), r"1-D data_shape"),
        (dict(name="unet", channel_mult=(1, 2), attn_resolutions=(16,)), (8, 8, 1),
         r"attn_resolutions \[16\] are not visited.*\(8, 4\)"),
        (dict(name="unet", dropout=1.0), (8, 8, 1), r"dropout must be in \[0, 1\)"),
        (dict(name="mlp", dtype="float16"), (2,), r"dtype must be one of"),
        (dict(name="unet", channels=30, num_heads=8), (8, 8, 1), r"num_heads=8 does not divide"),
    ],
    ids=["name", "unet_typo", "mlp_typo", "resolution", "nonsquare", "unet_rank", "mlp_rank",
         "attn_res", "dropout", "dtype", "heads"],
)
def test_build_validation_errors(cfg, data_shape, match):
    with pytest.raises(ValueError, match=match):
        _build(cfg, data_shape)


def test_passing_d_without_use_d_raises():
    net = _build(MLP_SMALL, (2,))
    params = _init(net, (2,))
    with pytest.raises(ValueError, match="use_d=False"):
        net.apply({"params": params}, jnp.zeros((2, 2)), jnp.zeros(2), d=jnp.zeros(2))


def test_unconditional_net_ignores_labels_and_has_no_table():
    net = _build(MLP_SMALL, (2,), num_classes=0)
    params = _perturb(_init(net, (2,)), jax.random.key(16))
    assert "label" not in params["cond"]
    x, t = _inputs((2,), 2, jax.random.key(17))
    apply = jax.jit(net.apply)
    np.testing.assert_array_equal(apply({"params": params}, x, t, jnp.array([0, 1])),
                                  apply({"params": params}, x, t))


def test_label_table_has_null_row():
    net = _build(UNET_SMALL, (8, 8, 1), num_classes=10)
    shapes = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, 8, 8, 1)), jnp.zeros(1))
    assert shapes["params"]["cond"]["label"]["embedding"].shape[0] == 11
