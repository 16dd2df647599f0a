"""Attention kinds (models.attention) and block rematerialization (models.remat).

References are independent of the code under test: attention and its directional derivative in
numpy float64 (closed form, and central finite differences of the numpy attention), and the plain
einsum attention differentiated by JAX's autodiff (for gradients of a function of the jvp).
Memory is XLA's compiled plan (memory_analysis), so nothing here runs at scale.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from fewstep_jax import models
from fewstep_jax.models import attention as attention_lib
from fewstep_jax.models import layers

KINDS = attention_lib.ATTENTION_KINDS
# Lengths that are not multiples of the blocks: several query and key blocks, padded last blocks.
BLOCKS = dict(block_q=8, block_k=16)
# XLA's backend (LLVM) optimizations cost compile time and do not change what is checked; the
# memory test compiles with the defaults.
_jit = partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


def _numpy_attention(q, k, v):
    """softmax(q k^T / sqrt(D)) v per batch and head, [B, L, H, D] layout, float64."""
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", weights, v)


def _qkv(seed: int, lengths=(37, 45), batch=2, heads=3, dim=8):
    rng = np.random.default_rng(seed)
    lq, lk = lengths
    return [rng.standard_normal((batch, n, heads, dim)) for n in (lq, lk, lk)]


@pytest.mark.parametrize("kind", KINDS)
def test_outputs_and_tangents_match_numpy_float64(kind):
    q, k, v = _qkv(0)
    dq, dk, dv = _qkv(1)
    fn = partial(attention_lib.attention, kind=kind, **BLOCKS)
    np.testing.assert_allclose(_jit(fn)(q, k, v), _numpy_attention(q, k, v), rtol=0, atol=1e-13)

    out, tangent = _jit(lambda p, t: jax.jvp(fn, p, t))((q, k, v), (dq, dk, dv))
    eps = 1e-5
    plus = _numpy_attention(q + eps * dq, k + eps * dk, v + eps * dv)
    minus = _numpy_attention(q - eps * dq, k - eps * dk, v - eps * dv)
    np.testing.assert_allclose(out, _numpy_attention(q, k, v), rtol=0, atol=1e-13)
    np.testing.assert_allclose(tangent, (plus - minus) / (2 * eps), rtol=0, atol=1e-8)


def _score(attend, primals, tangents):
    """A scalar that mixes the jvp's primal and tangent outputs nonlinearly (as MeanFlow's loss does)."""
    out, tangent = jax.jvp(attend, primals, tangents)
    return jnp.sum(jnp.sin(out) * tangent) + 0.5 * jnp.sum(tangent**2)


@pytest.mark.parametrize("kind", ["auto", "blockwise"])  # 'einsum' is the reference, 'fused' it on CPU
def test_gradients_through_the_jvp_and_without_it_match_einsum(kind):
    q, k, v = _qkv(2)
    dq, dk, dv = _qkv(3)
    attend = partial(attention_lib.attention, kind=kind, **BLOCKS)
    grad = _jit(jax.grad(lambda p, t: _score(attend, p, t), argnums=(0, 1)))
    expected = jax.grad(lambda p, t: _score(layers.attention, p, t), argnums=(0, 1))((q, k, v), (dq, dk, dv))
    got = grad((q, k, v), (dq, dk, dv))
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-11)

    # Plain reverse mode, which goes through the custom_jvp rule for 'auto' and 'blockwise'.
    def loss(fn, q, k, v):
        return jnp.sum(jnp.cos(fn(q, k, v)))

    got = _jit(jax.grad(partial(loss, attend), argnums=(0, 1, 2)))(q, k, v)
    expected = jax.grad(partial(loss, layers.attention), argnums=(0, 1, 2))(q, k, v)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["auto", "blockwise"])
def test_bfloat16_inputs_keep_their_dtype_and_stay_close_to_float32(kind):
    q, k, v = (jnp.asarray(a, jnp.float32) for a in _qkv(4))
    dq, dk, dv = (jnp.asarray(a, jnp.float32) for a in _qkv(5))
    attend = partial(attention_lib.attention, kind=kind, **BLOCKS)
    half = [a.astype(jnp.bfloat16) for a in (q, k, v, dq, dk, dv)]
    out, tangent = _jit(lambda a: jax.jvp(attend, a[:3], a[3:]))(half)
    assert out.dtype == tangent.dtype == jnp.bfloat16
    ref_out, ref_tangent = jax.jvp(layers.attention, (q, k, v), (dq, dk, dv))
    for got, ref in ((out, ref_out), (tangent, ref_tangent)):
        err = jnp.linalg.norm(got.astype(jnp.float32) - ref) / jnp.linalg.norm(ref)
        assert float(err) < 2e-2  # bf16 inputs carry 8 bits: relative errors of a few 1e-3


def _temp_bytes(fn, tokens: int, dim: int = 8) -> int:
    spec = jax.ShapeDtypeStruct((1, tokens, 1, dim), jnp.float32)
    return jax.jit(fn).lower(*[spec] * 6).compile().memory_analysis().temp_size_in_bytes


def _jvp_of(kind: str):
    attend = partial(attention_lib.attention, kind=kind, block_q=128, block_k=128)
    return lambda q, k, v, dq, dk, dv: jax.jvp(attend, (q, k, v), (dq, dk, dv))


def _grad_of_jvp(kind: str):
    attend = partial(attention_lib.attention, kind=kind, block_q=128, block_k=128)
    return jax.grad(lambda *a: _score(attend, a[:3], a[3:]), argnums=tuple(range(6)))


def test_blockwise_jvp_memory_grows_linearly_in_tokens_and_einsum_quadratically():
    """XLA's compiled temporary memory at 1024 and 4096 tokens (one head of size 8, float32): the
    blockwise jvp, and the reverse pass through it, stay below one [tokens, tokens] matrix and
    grow at most 4x for 4x the tokens; einsum attention's jvp holds [tokens, tokens] weights
    and grows about 16x."""
    small, large = 1024, 4096
    matrix = large * large * 4
    for make in (_jvp_of, _grad_of_jvp):
        blockwise = [_temp_bytes(make("blockwise"), n) for n in (small, large)]
        assert blockwise[1] < matrix / 4, (make.__name__, blockwise)
        assert blockwise[1] <= 4 * blockwise[0], (make.__name__, blockwise)
    einsum = [_temp_bytes(_jvp_of("einsum"), n) for n in (small, large)]
    assert einsum[1] >= matrix and einsum[1] >= 12 * einsum[0], einsum


def test_bad_kind_block_or_shapes_are_refused():
    q, k, v = _qkv(6, lengths=(4, 4))
    with pytest.raises(ValueError, match="attention kind must be one of"):
        attention_lib.attention(q, k, v, "flash")
    with pytest.raises(ValueError, match="block sizes must be >= 1"):
        attention_lib.attention(q, k, v, "blockwise", block_k=0)
    with pytest.raises(ValueError, match=r"k, v \[B, Lk, H, D\]"):
        attention_lib.attention(q, k[..., :4], v, "auto")
    with pytest.raises(ValueError, match="tangent shapes"):
        attention_lib.blockwise_attention_jvp(q, k, v, q[:, :2], k, v)


# Tiny networks with attention at 8x8 inputs (DiT: 16 tokens; UNet: 4x4 and the middle; EDM2:
# 8x8 and the middle).
NETWORKS = {
    "dit": dict(name="dit", hidden=32, depth=2, num_heads=2, patch=2),
    "unet": dict(name="unet", channels=8, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,)),
    "edm2": dict(
        name="edm2", channels=8, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(8,), channels_per_head=8
    ),
}
SHAPE = (8, 8, 3)
# Per network: the parameter names that mark an attention layer and a block the network
# rematerializes (every residual / transformer block, and the UNet's attention blocks).
ATTENTION_PARAM = {"dit": "qkv", "unet": "qkv", "edm2": "attn_qkv"}
BLOCK_PARAMS = {"dit": ("qkv",), "unet": ("qkv", "norm_0"), "edm2": ("conv_res0",)}


def _inputs(seed: int = 7):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((2, *SHAPE)))
    return x, jnp.asarray(rng.standard_normal((2, *SHAPE))), jnp.asarray([0.3, 1.1])


def _build(cfg: dict, **overrides):
    return models.build(ConfigDict({**cfg, **overrides}), data_shape=SHAPE, num_classes=0)


@pytest.mark.parametrize("network", sorted(NETWORKS))
def test_networks_pass_attention_kind_and_remat_policy_to_every_block(network):
    """Traced (not compiled) with dropout in training mode: the blockwise jvp rule appears once per
    attention layer for 'auto' / 'blockwise' and never for 'einsum'; each block is one
    jax.checkpoint under a remat policy and none without; the parameter tree never changes."""
    x, _, t = _inputs()
    trees = []
    for attention, remat in (("einsum", "none"), ("auto", "dots_saveable"), ("blockwise", "nothing_saveable")):
        net = _build(NETWORKS[network], attention=attention, remat=remat, dropout=0.2)
        params = jax.eval_shape(net.init, jax.random.key(0), x, t)["params"]
        trees.append(jax.tree.structure(params))
        apply = partial(net.apply, train=True, rngs={"dropout": jax.random.key(1)})
        text = str(jax.make_jaxpr(lambda p: apply({"params": p}, x, t))(params))
        subtrees = [sub for sub in params.values() if isinstance(sub, dict)]
        attention_layers = sum(ATTENTION_PARAM[network] in sub for sub in subtrees)
        blocks = sum(any(name in sub for name in BLOCK_PARAMS[network]) for sub in subtrees)
        assert attention_layers > 0 and blocks >= attention_layers
        rule_calls = text.count("name=attention_with_blockwise_jvp")
        assert rule_calls == (0 if attention == "einsum" else attention_layers), (attention, rule_calls)
        assert text.count("remat2[") == (0 if remat == "none" else blocks), (remat, text.count("remat2["))
    assert trees[1] == trees[0] and trees[2] == trees[0]


def test_dit_jvp_and_gradients_agree_across_attention_kinds_and_remat_policies():
    """MeanFlow-shaped use in float64: jax.grad of a function of (F, dF/dt) from one jax.jvp of the
    network; blockwise attention with every block rematerialized against einsum without."""
    x, dx, t = _inputs()
    results = []
    for attention, remat in (("einsum", "none"), ("blockwise", "nothing_saveable")):
        net = _build(NETWORKS["dit"], attention=attention, remat=remat, dtype="float64")
        if not results:
            shapes = jax.eval_shape(net.init, jax.random.key(0), x, t)["params"]
            rng = np.random.default_rng(8)
            params = jax.tree.map(lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape)), shapes)

        def loss(p, net=net):
            out, tangent = jax.jvp(lambda x, t: net.apply({"params": p}, x, t), (x, t), (dx, jnp.ones_like(t)))
            return jnp.sum(out * jnp.sin(tangent))

        results.append(_jit(jax.value_and_grad(loss))(params))
    (value, grads), (other_value, other_grads) = results
    assert float(jnp.abs(value)) > 0
    np.testing.assert_allclose(other_value, value, rtol=1e-10)
    for g, e in zip(jax.tree.leaves(other_grads), jax.tree.leaves(grads)):
        np.testing.assert_allclose(g, e, rtol=1e-9, atol=1e-12 * float(jnp.abs(e).max()))


def test_remat_policies_trade_memory_in_the_compiled_step():
    """Rematerialization changes XLA's memory plan of a jvp + grad step: keeping nothing but each
    block's inputs needs less temporary memory than keeping everything, and keeping the matmul
    results lies in between. XLA:CPU expands jax.checkpoint's optimization barriers before CSE
    (which then merges the recomputation with the forward pass) unless told not to."""
    sizes = {}
    x = jax.ShapeDtypeStruct((8, 8, 8, 3), jnp.float32)
    t = jax.ShapeDtypeStruct((8,), jnp.float32)
    options = {"xla_backend_optimization_level": 0, "xla_disable_hlo_passes": "cse_barrier_expander"}
    keep_barriers = partial(jax.jit, compiler_options=options)
    for remat in ("none", "dots_saveable", "nothing_saveable"):
        net = _build(NETWORKS["dit"], depth=3, remat=remat)
        params = jax.eval_shape(net.init, jax.random.key(0), x, t)["params"]

        def loss(p, x, t, net=net):
            out, tangent = jax.jvp(lambda x, t: net.apply({"params": p}, x, t), (x, t), (x, jnp.ones_like(t)))
            return jnp.sum(out * jax.lax.stop_gradient(tangent))

        compiled = keep_barriers(jax.grad(loss)).lower(params, x, t).compile()
        sizes[remat] = compiled.memory_analysis().temp_size_in_bytes
    assert sizes["nothing_saveable"] < sizes["dots_saveable"] < sizes["none"], sizes


@pytest.mark.parametrize("network", sorted(NETWORKS))
def test_bad_attention_or_remat_config_is_refused(network):
    for key, value in (("attention", "flash"), ("remat", "full")):
        with pytest.raises(ValueError, match=rf"model.{key} must be one of"):
            models.build(ConfigDict({**NETWORKS[network], key: value}), data_shape=SHAPE, num_classes=0)
