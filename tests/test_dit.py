"""Tests for the DiT network (DiT, Peebles & Xie 2023): published sizes, adaLN-Zero init, patchify
layout, validation. Conditioning, dropout, batch independence, gradients and jvp vs finite
differences are the interface tests every network shares, in test_models.py."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_models import DIT_TINY, NUM_CLASSES, CondNet, _build, _inputs, _jit, _key, _perturb

from fewstep_jax import models
from fewstep_jax.models import dit


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
# adaLN-Zero. The interface properties every network shares (zero output when fresh,
# conditioning, dropout, batch independence, gradients, jvp vs float64 finite differences) are
# tested for the DiT at 8x8x1 and 16x16x3 in test_models.py.


def test_adaln_zero_init():
    """Zero-initialized: every block's modulation and the final layer; nothing else."""
    fresh = CondNet(DIT_TINY, (8, 8, 1)).fresh
    for name in ["block_0", "block_1"]:
        np.testing.assert_array_equal(fresh[name]["adaLN_modulation"]["kernel"], 0.0)
        assert float(jnp.abs(fresh[name]["qkv"]["kernel"]).max()) > 0
    np.testing.assert_array_equal(fresh["final_linear"]["kernel"], 0.0)


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
