"""Tests for the DiT network (DiT, Peebles & Xie 2023): published sizes, adaLN-Zero init,
conditioning, dropout, batch independence, patchify layout, jvp vs finite differences, validation."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from ml_collections import ConfigDict

from fewstep_jax import models
from fewstep_jax.models import dit

NUM_CLASSES = 3
DIT_TINY = dict(name="dit", hidden=64, depth=2, num_heads=4, patch=2)

# Compile-time savers (as in test_models): 'rbg' keys compile initializers quickly, and LLVM
# backend optimizations change nothing about the HLO-level numerics these tests check.
_jit = partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def _key(seed: int) -> jax.Array:
    return jax.random.key(seed, impl="rbg")


def _build(cfg: dict, data_shape, num_classes: int = 0, **overrides):
    return models.build(ConfigDict({**cfg, **overrides}), data_shape=data_shape, num_classes=num_classes)


def _perturb(params, seed: int, scale: float = 0.2):
    """params + N(0, scale^2) on every leaf (host-side noise, one compilation), so the zero-init
    adaLN-Zero modulations and output layer no longer hide any dependency."""
    flat, unravel = ravel_pytree(params)
    noise = np.random.default_rng(seed).standard_normal(flat.shape).astype(flat.dtype)
    return _jit(lambda f, n: unravel(f + scale * n))(flat, noise)


def _inputs(data_shape, batch: int, seed: int, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((batch, *data_shape)), dtype)
    t = jnp.asarray(rng.uniform(0.1, 1.5, (batch,)), dtype)
    return x, t


def _param_shapes(net, data_shape, **kwargs):
    """Parameter ShapeDtypeStructs from abstract evaluation of init: no weight is materialized."""
    x = jax.ShapeDtypeStruct((1, *data_shape), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.float32)
    return jax.eval_shape(partial(net.init, **kwargs), _key(0), x, t)["params"]


# --------------------------------------------------------------------------------------------
# Published model sizes (DiT Table 1), counted from shapes only.


def _analytic_dit_params(hidden: int, depth: int, patch: int, channels: int, classes: int) -> int:
    """Parameter count of the architecture as described (independent of the Flax code)."""
    mlp = 4 * hidden
    cond = (256 * hidden + hidden) + (hidden * hidden + hidden) + (classes + 1) * hidden
    patch_embed = patch * patch * channels * hidden + hidden
    block = (
        (hidden * 6 * hidden + 6 * hidden)  # adaLN-Zero modulation
        + (hidden * 3 * hidden + 3 * hidden) + (hidden * hidden + hidden)  # qkv (bias), proj
        + (hidden * mlp + mlp) + (mlp * hidden + hidden)  # MLP
    )
    final = (hidden * 2 * hidden + 2 * hidden) + (hidden * patch * patch * channels + patch * patch * channels)
    return cond + patch_embed + depth * block + final


@pytest.mark.parametrize(
    "size,published,hidden,depth,exact",
    [("B", 130e6, 768, 12, 130_303_504), ("XL", 675e6, 1152, 28, 674_816_272)],
    ids=["DiT-B/2", "DiT-XL/2"],
)
def test_param_count_matches_published_size(size, published, hidden, depth, exact):
    """DiT-B/2 ~130M and DiT-XL/2 ~675M (Table 1) on 32x32x4 latents with 1000 classes. Ours lacks
    the learned-sigma half of the output layer and the reference's frozen pos_embed "parameter"
    (18,448 + 294,912 for XL/2), hence slightly below the reference's 675,129,632."""
    net = _build(dict(name="dit", size=size, patch=2), (32, 32, 4), num_classes=1000)
    shapes = _param_shapes(net, (32, 32, 4))
    count = models.count_params(shapes)
    assert count == exact == _analytic_dit_params(hidden, depth, 2, 4, 1000)
    assert abs(count - published) / published < 0.015, count
    assert all(s.dtype == jnp.float32 for s in jax.tree.leaves(shapes))
    assert shapes["cond"]["label"]["embedding"].shape == (1001, hidden)  # NULL row
    assert len([k for k in shapes if k.startswith("block_")]) == depth
    # The 2-D sin-cos positional embedding is fixed (a constant, not a parameter).
    blocks = {f"block_{i}" for i in range(depth)}
    assert set(shapes) == {"cond", "patch_embed", "final_adaLN_modulation", "final_linear"} | blocks


# --------------------------------------------------------------------------------------------
# A tiny, class-conditional, use_d DiT with dropout on two image shapes.


class CondDiT:
    """Fresh and perturbed params of a tiny DiT plus one jitted apply reused by every test."""

    def __init__(self, data_shape):
        self.data_shape = data_shape
        self.net = _build(DIT_TINY, data_shape, num_classes=NUM_CLASSES, use_d=True, dropout=0.3)
        x, t = _inputs(data_shape, 3, 0)
        self.fresh = _jit(self.net.init)(_key(0), x, t)["params"]
        # 0.1, not 0.2: the perturbed adaLN modulations act on a label embedding of unit scale, and
        # at 0.2 the net is so curved (outputs ~20) that the float64 central difference itself is
        # off by ~1e-6 (error scaling as eps^2); at 0.1 it is ~1e-10 with the same eps.
        self.params = _perturb(self.fresh, seed=1, scale=0.1)
        self._apply = _jit(self.net.apply, static_argnames="train")

    def __call__(self, x, t, y, d, *, train=False, seed=0, params=None):
        variables = {"params": self.params if params is None else params}
        return self._apply(variables, x, t, y, d, train=train, rngs={"dropout": _key(100 + seed)})


@pytest.fixture(scope="module", params=[(8, 8, 1), (16, 16, 3)], ids=["8x8x1", "16x16x3"])
def cond_dit(request) -> CondDiT:
    return CondDiT(request.param)


def test_fresh_output_is_exactly_zero(cond_dit):
    """adaLN-Zero gates and the zero-init final Dense: the untrained DiT outputs exactly 0."""
    x, t = _inputs(cond_dit.data_shape, 3, 2)
    y = jnp.array([0, 1, NUM_CLASSES], jnp.int32)
    out = cond_dit(x, t, y, t / 2, params=cond_dit.fresh)
    assert out.shape == x.shape and out.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out), 0.0)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(cond_dit.fresh))
    # Zero-initialized: every block's modulation and the final layer; nothing else.
    for name in ["block_0", "block_1"]:
        np.testing.assert_array_equal(cond_dit.fresh[name]["adaLN_modulation"]["kernel"], 0.0)
        assert float(jnp.abs(cond_dit.fresh[name]["qkv"]["kernel"]).max()) > 0
    np.testing.assert_array_equal(cond_dit.fresh["final_linear"]["kernel"], 0.0)


def test_output_depends_on_t_y_and_d(cond_dit):
    batch = 3
    x, t = _inputs(cond_dit.data_shape, batch, 6)
    y = jnp.array([0, 1, 2], jnp.int32)
    d = jnp.full((batch,), 0.25)
    base = cond_dit(x, t, y, d)
    assert bool(jnp.all(jnp.isfinite(base)))

    def differs(other):  # every example must change
        diff = jnp.abs(other - base).reshape(batch, -1).max(axis=1)
        return bool(jnp.all(diff > 1e-4))

    assert differs(cond_dit(x, t + 0.3, y, d)), "output does not depend on t"
    assert differs(cond_dit(x, t, jnp.full((batch,), NUM_CLASSES, jnp.int32), d)), "label vs null"
    assert differs(cond_dit(x, t, (y + 1) % NUM_CLASSES, d)), "output does not depend on y"
    assert differs(cond_dit(x, t, y, d + 0.5)), "output does not depend on d"
    assert differs(cond_dit(x + 0.5, t, y, d)), "output does not depend on x"


def test_y_none_is_null_class_and_d_none_is_zero(cond_dit):
    """Also eval mode of a dropout network without any rng, as samplers call it."""
    x, t = _inputs(cond_dit.data_shape, 3, 7)
    null = jnp.full((3,), NUM_CLASSES, jnp.int32)
    implicit = _jit(cond_dit.net.apply)({"params": cond_dit.params}, x, t)
    np.testing.assert_array_equal(implicit, cond_dit(x, t, null, jnp.zeros(3)))


def test_dropout_only_in_train_and_keyed(cond_dit):
    x, t = _inputs(cond_dit.data_shape, 3, 8)
    y = jnp.array([0, 1, NUM_CLASSES], jnp.int32)
    d = jnp.zeros(3)
    eval_a = cond_dit(x, t, y, d, train=False, seed=1)
    np.testing.assert_array_equal(eval_a, cond_dit(x, t, y, d, train=False, seed=2))
    train_a = cond_dit(x, t, y, d, train=True, seed=1)
    np.testing.assert_array_equal(train_a, cond_dit(x, t, y, d, train=True, seed=1))
    train_b = cond_dit(x, t, y, d, train=True, seed=2)
    assert float(jnp.abs(train_a - train_b).max()) > 1e-4
    assert float(jnp.abs(train_a - eval_a).max()) > 1e-4


def test_batch_independence(cond_dit):
    """LayerNorm is per token and attention stays within an example: example i ignores the rest."""
    x, t = _inputs(cond_dit.data_shape, 3, 9)
    y = jnp.array([0, 1, 2], jnp.int32)
    d = jnp.array([0.0, 0.1, 0.2])
    full = cond_dit(x, t, y, d)
    others = cond_dit(x.at[1:].multiply(10.0), t.at[1:].set(0.01), y.at[1:].set(NUM_CLASSES), d)
    # Tolerance: float32 roundoff relative to the output scale (a batch of 3 and a batch of 1 are
    # different XLA programs; measured ~5e-7 of the scale on CPU); a real cross-example dependency
    # would be of the output's own size.
    atol = 1e-5 * float(jnp.abs(full).max())
    np.testing.assert_allclose(others[0], full[0], rtol=1e-5, atol=atol)
    single = _jit(cond_dit.net.apply)({"params": cond_dit.params}, x[1:2], t[1:2], y[1:2], d[1:2])
    np.testing.assert_allclose(full[1:2], single, rtol=1e-5, atol=atol)


def test_grad_reaches_every_parameter(cond_dit):
    """jax.grad through the whole network; with perturbed params no parameter is dead."""
    x, t = _inputs(cond_dit.data_shape, 3, 10)
    y = jnp.array([0, 1, 2], jnp.int32)

    def loss(params):
        return jnp.mean(cond_dit.net.apply({"params": params}, x, t, y, t / 2) ** 2)

    value, grads = _jit(jax.value_and_grad(loss))(cond_dit.params)
    assert np.isfinite(float(value))
    dead = [jax.tree_util.keystr(path) for path, g in jax.tree_util.tree_leaves_with_path(grads)
            if not float(jnp.abs(g).max()) > 0]
    assert dead == [], dead


# --------------------------------------------------------------------------------------------
# Layout: patchify / positional embedding / unpatchify.


def test_patchify_unpatchify_is_local_without_blocks():
    """With depth 0 the DiT is per token (patch embed -> LN -> final Dense), so changing one input
    pixel changes exactly the output pixels of its own patch: patchify and unpatchify agree, also
    for non-square inputs and patch 4."""
    net = models.DiT(hidden=16, depth=0, num_heads=2, patch=4)
    data_shape = (8, 12, 2)
    x, t = _inputs(data_shape, 1, 20)
    params = _perturb(_jit(net.init)(_key(0), x, t)["params"], seed=21)
    apply = _jit(net.apply)
    base = apply({"params": params}, x, t)
    assert base.shape == x.shape
    row, col = 5, 6  # patch (1, 1): rows 4..7, cols 4..7
    moved = apply({"params": params}, x.at[0, row, col, 1].add(1.0), t)
    changed = np.asarray(jnp.abs(moved - base).max(axis=-1)[0] > 1e-6)
    expected = np.zeros(data_shape[:2], bool)
    expected[4:8, 4:8] = True
    np.testing.assert_array_equal(changed, expected)


def test_sincos_2d_embedding_layout():
    emb = dit.sincos_2d_embedding(2, 3, 8)  # 2 x 3 grid, quarter = 2 frequencies: 1, 1/100
    assert emb.shape == (6, 8)
    omega = np.array([1.0, 0.01])

    def emb_1d(p):
        return np.concatenate([np.sin(p * omega), np.cos(p * omega)])

    for i in range(2):
        for j in range(3):  # token i * 3 + j: [column part, row part]
            np.testing.assert_allclose(emb[i * 3 + j], np.concatenate([emb_1d(j), emb_1d(i)]), atol=1e-15)
    assert len({tuple(r) for r in np.round(emb, 12)}) == 6  # every position distinct
    with pytest.raises(ValueError, match="divisible by 4"):
        dit.sincos_2d_embedding(2, 2, 6)


def test_bfloat16_compute_returns_float32():
    """Traced only (abstract evaluation): float32 params and output with bfloat16 compute."""
    net = _build(DIT_TINY, (8, 8, 1), num_classes=NUM_CLASSES, dtype="bfloat16")
    x, t = _inputs((8, 8, 1), 2, 5)
    variables = jax.eval_shape(net.init, _key(0), x, t)
    assert all(s.dtype == jnp.float32 for s in jax.tree.leaves(variables))
    out = jax.eval_shape(net.apply, variables, x, t)
    assert out.dtype == jnp.float32 and out.shape == x.shape


# --------------------------------------------------------------------------------------------
# Forward-mode AD (sCM / MeanFlow differentiate the network with jax.jvp w.r.t. (x, t)).


def test_jvp_matches_central_difference_float64(cond_dit):
    """jax.jvp w.r.t. (x, t) through attention, LayerNorm and adaLN equals a float64 central
    difference (relative L2 error < 1e-6)."""
    data_shape = cond_dit.data_shape
    with jax.enable_x64(True):
        net = _build(DIT_TINY, data_shape, num_classes=NUM_CLASSES, use_d=True, dtype="float64")
        x, t = _inputs(data_shape, 2, 11, jnp.float64)
        vx, vt = _inputs(data_shape, 2, 12, jnp.float64)
        y = jnp.array([1, NUM_CLASSES], jnp.int32)
        d = jnp.array([0.3, 0.7])
        eps = 1e-5

        @_jit
        def tangent_and_difference(params, x, t, vx, vt):
            params = jax.tree.map(lambda p: p.astype(jnp.float64), params)

            def f(xx, tt, yy, dd):
                return net.apply({"params": params}, xx, tt, yy, dd)

            out, tangent = jax.jvp(lambda a, b: f(a, b, y, d), (x, t), (vx, vt))
            both = f(jnp.concatenate([x + eps * vx, x - eps * vx]),
                     jnp.concatenate([t + eps * vt, t - eps * vt]),
                     jnp.concatenate([y, y]), jnp.concatenate([d, d]))
            return out, tangent, (both[:2] - both[2:]) / (2 * eps)

        out, tangent, fd = tangent_and_difference(cond_dit.params, x, t, vx, vt)
        assert out.dtype == jnp.float64 and tangent.dtype == jnp.float64 and tangent.shape == x.shape
        norm = float(jnp.linalg.norm(tangent))
        assert norm > 0
        rel = float(jnp.linalg.norm(tangent - fd)) / norm
        print(f"jvp vs central difference, {data_shape}: relative error {rel:.2e}")
        assert rel < 1e-6, rel


# --------------------------------------------------------------------------------------------
# Config: size shortcut and eager validation.


def test_size_fills_only_missing_fields():
    net = _build(dict(name="dit", size="B"), (32, 32, 4))
    assert (net.hidden, net.depth, net.num_heads, net.patch, net.mlp_ratio) == (768, 12, 12, 2, 4.0)
    net = _build(dict(name="dit", size="XL", depth=2, patch=4), (32, 32, 4))
    assert (net.hidden, net.depth, net.num_heads, net.patch) == (1152, 2, 16, 4)
    assert isinstance(_build(DIT_TINY, (8, 8, 1)), models.DiT)


@pytest.mark.parametrize(
    "cfg,data_shape,match",
    [
        (dict(DIT_TINY, hiden=64), (8, 8, 1), r"unknown key\(s\) \['hiden'\].*'hidden'"),
        (dict(DIT_TINY, patch=3), (8, 8, 1), r"divisible by model.patch=3"),
        (dict(DIT_TINY), (8, 9, 1), r"divisible by model.patch=2"),
        (dict(DIT_TINY, num_heads=5), (8, 8, 1), r"num_heads=5 does not divide model.hidden=64"),
        (dict(name="dit", size="M"), (8, 8, 1), r"model.size must be one of \['S', 'B', 'L', 'XL'\]"),
        (dict(name="dit", hidden=64), (8, 8, 1), r"model.size .* or explicit values for \['depth', 'num_heads'\]"),
        (dict(DIT_TINY, hidden=18, num_heads=2), (8, 8, 1), r"divisible by 4"),
        (dict(DIT_TINY), (8, 8), r"3-D data_shape"),
        (dict(DIT_TINY, dropout=1.0), (8, 8, 1), r"dropout must be in \[0, 1\)"),
        (dict(DIT_TINY, dtype="float16"), (8, 8, 1), r"dtype must be one of"),
    ],
    ids=["typo", "patch", "patch_width", "heads", "size", "missing", "hidden4", "rank", "dropout", "dtype"],
)
def test_build_validation_errors(cfg, data_shape, match):
    with pytest.raises(ValueError, match=match):
        _build(cfg, data_shape)


def test_dit_is_registered_not_planned():
    assert "dit" in models.REGISTRY and "dit" not in models.PLANNED_NETWORKS


def test_passing_d_without_use_d_raises():
    net = _build(DIT_TINY, (8, 8, 1))
    x, t = jnp.zeros((2, 8, 8, 1)), jnp.zeros(2)
    shapes = jax.eval_shape(net.init, _key(0), x, t)
    with pytest.raises(ValueError, match="use_d=False"):
        jax.eval_shape(partial(net.apply, d=t), shapes, x, t)


def test_module_rejects_bad_input_at_trace_time():
    net = models.DiT(hidden=16, depth=1, num_heads=2, patch=4)
    with pytest.raises(ValueError, match="divisible by patch=4"):
        jax.eval_shape(net.init, _key(0), jnp.zeros((1, 8, 6, 1)), jnp.zeros(1))
    with pytest.raises(ValueError, match="NHWC"):
        jax.eval_shape(net.init, _key(0), jnp.zeros((1, 8, 8)), jnp.zeros(1))
