"""Self-attention that supports forward-mode AD at O(tokens) memory, next to the fused kernel.

sCM (Lu & Song 2024, sec. 4) and MeanFlow (Geng et al. 2025, eq. 8) push a tangent through the
whole network with jax.jvp, and MeanFlow then differentiates the result in reverse mode. Fused
attention kernels (cuDNN flash attention behind jax.nn.dot_product_attention) are custom_vjp
functions, which forward mode cannot go through, and plain einsum attention materializes the
[tokens, tokens] weights twice (primal and tangent). The missing piece is a forward-mode rule for
flash attention (rCM, Zheng et al. 2025, writes one as a FlashAttention-2 JVP kernel); here it is
written with XLA operations.

`attention(q, k, v, kind)` offers:
  'einsum'     layers.attention: einsum + float32 softmax; jvp and grad by plain autodiff.
               O(tokens^2) memory.
  'fused'      jax.nn.dot_product_attention (cuDNN flash attention on a GPU in bf16 / fp16, XLA
               elsewhere) with no custom rule: fastest without jvp; forward mode fails on cuDNN.
  'blockwise'  primal and tangent both computed blockwise (below), with the jax.custom_jvp rule.
  'auto'       the fused kernel for the primal, the blockwise tangent as its jax.custom_jvp rule:
               sampling and evaluation run the fused kernel, jax.jvp works everywhere.

The blockwise computation (flash attention, Dao et al. 2022, and its directional derivative):
queries are processed in blocks of `block_q` rows (lax.map over a jax.checkpoint-ed block
function), and for each query block the keys are visited in blocks of `block_k` (lax.scan) with an
online softmax: running max m, normalizer l = sum exp(s - m) and weighted sums, rescaled by
exp(m_old - m_new) whenever the max grows. For logits s = q k^T / sqrt(D), weights
p = softmax(s) and output o = p v, the tangent is (ds = (dq k^T + q dk^T) / sqrt(D))

    do_i = sum_j p_ij (ds_ij v_j + dv_j) - mu_i o_i,      mu_i = sum_j p_ij ds_ij,

so the same pass accumulates sum exp(s - m) ds and sum exp(s - m) (ds v + dv) next to l and
sum exp(s - m) v, and divides by l at the end. No [tokens, tokens] array exists; the largest
temporary is [B, H, block_q, block_k]. The pass is built from differentiable primitives (einsum,
exp, lax.scan, lax.map), so reverse mode goes through it too (jax.grad of a function of the jvp's
output, MeanFlow's loss), and the checkpoint around each query block makes the reverse pass
recompute that block's scan instead of storing it: O(tokens) memory in reverse mode as well.
Token counts that are not multiples of the block sizes are padded (padded keys get weight 0).
One level of forward mode is supported (a jvp of a jvp would push forward through the
rule's own jvp: fine for 'blockwise', an error for cuDNN in 'auto').

Reverse mode of a custom_jvp function goes through its rule: under plain jax.grad, 'auto' and
'blockwise' run their forward pass and differentiate by transposing the blockwise tangent (a
flash-style backward at O(tokens) memory), not by the fused kernel's own backward; use 'fused'
for methods that never take a jvp when that backward is the faster one.

Logits, softmax and every accumulator are computed in at least float32 (float64 stays float64);
the weighted sums take v's dtype as input; outputs and tangents have v's dtype.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from fewstep_jax.models import layers

Array = jax.Array

#: The values of model.attention (see the module docstring).
ATTENTION_KINDS = ("auto", "einsum", "fused", "blockwise")

#: Query / key block size of the blockwise computation. Sequences up to this length are one block
#: (the weights of one block are materialized, as einsum attention does).
DEFAULT_BLOCK = 512


def fused_attention(q: Array, k: Array, v: Array) -> Array:
    """The fused kernel where there is one: jax.nn.dot_product_attention(implementation='cudnn')
    (cuDNN flash attention) on a GPU for bf16 / fp16 inputs of a shape it takes. Elsewhere (CPU,
    TPU, float32 / float64, head sizes cuDNN refuses) XLA compiles attention from the einsums
    itself, so this is layers.attention, which is jax.nn.dot_product_attention's XLA
    implementation without its float32 cast of the softmax (float64 stays exact).

    q: [B, Lq, H, D]; k, v: [B, Lk, H, D] -> [B, Lq, H, D] in v's dtype.
    """
    dtype = jnp.result_type(q, k, v)
    if jax.default_backend() == "gpu" and dtype in (jnp.bfloat16, jnp.float16):
        try:
            out = jax.nn.dot_product_attention(
                q.astype(dtype), k.astype(dtype), v.astype(dtype), implementation="cudnn"
            )
            return out.astype(v.dtype)
        except (ValueError, NotImplementedError, RuntimeError):
            pass  # a head size, layout or cuDNN version the kernel does not take
    return layers.attention(q, k, v)


def _check_shapes(q: Array, k: Array, v: Array) -> None:
    if q.ndim != 4 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(
            f"attention expects q [B, Lq, H, D] and k, v [B, Lk, H, D]; got q {q.shape}, k {k.shape}, v {v.shape}"
        )


def _blocks(length: int, block: int) -> tuple[int, int]:
    """(block size, block count) covering `length` tokens with blocks of at most `block`, sized as
    evenly as possible so that padding stays below one token per block."""
    if block < 1:
        raise ValueError(f"attention block sizes must be >= 1, got {block}")
    count = -(-length // block)
    return -(-length // count), count


def _split(x: Array | None, size: int, count: int) -> Array | None:
    """[B, L, H, D] -> [count, B, size, H, D], zero-padded at the end of L."""
    if x is None:
        return None
    pad = size * count - x.shape[1]
    if pad:
        x = jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0)))
    return jnp.moveaxis(x.reshape(x.shape[0], count, size, *x.shape[2:]), 1, 0)


def _key_block(q, dq, block, scale, compute):
    """Logits and the unnormalized weights' ingredients of one key block for a query block.

    Returns (s, ds): s [B, H, Bq, Bk] with padded keys at -inf, ds the logits' tangent (or None).
    """
    k, _, dk, _, valid = block
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k.astype(compute)) * scale
    if valid is not None:
        s = jnp.where(valid, s, -jnp.inf)
    ds = None
    if dq is not None:
        ds = jnp.einsum("bqhd,bkhd->bhqk", dq, k.astype(compute)) + jnp.einsum("bqhd,bkhd->bhqk", q, dk.astype(compute))
        ds = ds * scale
    return s, ds


def _weighted(p: Array, values: Array, compute) -> Array:
    """sum_k p[b, h, q, k] values[b, k, h, d] -> [B, H, Bq, D], inputs in values' dtype,
    accumulated in `compute`."""
    return jnp.einsum("bhqk,bkhd->bhqd", p.astype(values.dtype), values, preferred_element_type=compute)


def _accumulate(carry, block, q, dq, scale, compute):
    """One online-softmax step: fold a key block into the running sums of a query block."""
    m, norm, acc_o, acc_mu, acc_do = carry
    _, v, _, dv, _ = block
    s, ds = _key_block(q, dq, block, scale, compute)
    # The max only stabilizes exp: the result does not depend on it, so no derivative flows there.
    m_new = jnp.maximum(m, jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True)))
    alpha = jnp.exp(m - m_new)
    p = jnp.exp(s - m_new)
    norm = alpha * norm + jnp.sum(p, axis=-1, keepdims=True)
    acc_o = alpha * acc_o + _weighted(p, v, compute)
    if ds is not None:
        pds = p * ds
        acc_mu = alpha * acc_mu + jnp.sum(pds, axis=-1, keepdims=True)
        acc_do = alpha * acc_do + _weighted(pds, v, compute) + _weighted(p, dv, compute)
    return (m_new, norm, acc_o, acc_mu, acc_do), None


def _query_block(q, dq, keys, scale, compute):
    """(o, do) of one query block q [B, Bq, H, D] against all key blocks `keys` (k, v, dk, dv,
    valid), each stacked on a leading block axis. do is None when dq is None."""
    q = q.astype(compute)
    dq = None if dq is None else dq.astype(compute)
    first = jax.tree.map(lambda a: a[0], keys)
    s, ds = _key_block(q, dq, first, scale, compute)
    m = jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True))
    p = jnp.exp(s - m)
    carry = (m, jnp.sum(p, axis=-1, keepdims=True), _weighted(p, first[1], compute), None, None)
    if ds is not None:
        pds = p * ds
        acc_do = _weighted(pds, first[1], compute) + _weighted(p, first[3], compute)
        carry = (*carry[:3], jnp.sum(pds, axis=-1, keepdims=True), acc_do)
    if keys[0].shape[0] > 1:
        rest = jax.tree.map(lambda a: a[1:], keys)
        step = functools.partial(_accumulate, q=q, dq=dq, scale=scale, compute=compute)
        carry, _ = jax.lax.scan(step, carry, rest)
    _, norm, acc_o, acc_mu, acc_do = carry
    o = acc_o / norm
    do = None if acc_do is None else acc_do / norm - (acc_mu / norm) * o
    to_tokens = functools.partial(jnp.swapaxes, axis1=1, axis2=2)  # [B, H, Bq, D] -> [B, Bq, H, D]
    return to_tokens(o), None if do is None else to_tokens(do)


def _blockwise(q, k, v, dq, dk, dv, block_q: int, block_k: int):
    _check_shapes(q, k, v)
    batch, length_q, heads, dim = q.shape
    length_k = k.shape[1]
    compute = layers.at_least_float32(jnp.result_type(q, k))
    scale = 1.0 / math.sqrt(dim)
    size_k, count_k = _blocks(length_k, block_k)
    valid = None
    if size_k * count_k != length_k:
        valid = (jnp.arange(size_k * count_k) < length_k).reshape(count_k, 1, 1, 1, size_k)
    keys = (
        _split(k, size_k, count_k),
        _split(v, size_k, count_k),
        _split(dk, size_k, count_k),
        _split(dv, size_k, count_k),
        valid,
    )
    size_q, count_q = _blocks(length_q, block_q)
    rows = functools.partial(_query_block, keys=keys, scale=scale, compute=compute)
    if count_q == 1 and count_k == 1:
        o, do = rows(q, dq)  # one block: einsum attention, nothing to recompute
    else:
        # Reverse mode recomputes each query block's scan instead of storing its [Bq, Lk] terms.
        rows = jax.checkpoint(rows, prevent_cse=count_q == 1)
        if count_q == 1:
            o, do = rows(q, dq)
        else:
            o, do = jax.lax.map(lambda qs: rows(*qs), (_split(q, size_q, count_q), _split(dq, size_q, count_q)))
            merge = lambda x: jnp.moveaxis(x, 0, 1).reshape(batch, size_q * count_q, heads, dim)[:, :length_q]
            o, do = merge(o), None if do is None else merge(do)
    o = o.astype(v.dtype)
    return o, None if do is None else do.astype(v.dtype)


def blockwise_attention(
    q: Array, k: Array, v: Array, *, block_q: int = DEFAULT_BLOCK, block_k: int = DEFAULT_BLOCK
) -> Array:
    """softmax(q k^T / sqrt(D)) v computed blockwise (online softmax, no [Lq, Lk] array).

    q: [B, Lq, H, D]; k, v: [B, Lk, H, D] -> [B, Lq, H, D] in v's dtype. Plain autodiff; see
    `attention(..., kind='blockwise')` for the version with the blockwise jvp rule.
    """
    return _blockwise(q, k, v, None, None, None, block_q, block_k)[0]


def blockwise_attention_jvp(
    q: Array,
    k: Array,
    v: Array,
    dq: Array,
    dk: Array,
    dv: Array,
    *,
    block_q: int = DEFAULT_BLOCK,
    block_k: int = DEFAULT_BLOCK,
) -> tuple[Array, Array]:
    """(o, do): attention and its tangent along (dq, dk, dv), in one blockwise pass (see the
    module docstring for the formula). Differentiable in reverse mode. Shapes as
    blockwise_attention; tangents have the shapes of their primals."""
    if dq.shape != q.shape or dk.shape != k.shape or dv.shape != v.shape:
        raise ValueError(
            f"tangent shapes {dq.shape}, {dk.shape}, {dv.shape} differ from q {q.shape}, k {k.shape}, v {v.shape}"
        )
    return _blockwise(q, k, v, dq, dk, dv, block_q, block_k)


@functools.lru_cache(maxsize=None)
def _with_blockwise_jvp(primal: str, block_q: int, block_k: int):
    """attention(q, k, v) with the fused ('fused') or blockwise ('blockwise') primal and the
    blockwise tangent as its jax.custom_jvp rule."""
    blocks = dict(block_q=block_q, block_k=block_k)

    @jax.custom_jvp
    def attention_with_blockwise_jvp(q, k, v):
        if primal == "fused":
            return fused_attention(q, k, v)
        return blockwise_attention(q, k, v, **blocks)

    @attention_with_blockwise_jvp.defjvp
    def blockwise_jvp(primals, tangents):
        out, tangent = blockwise_attention_jvp(*primals, *tangents, **blocks)
        if primal == "fused":
            out = fused_attention(*primals)
        return out, tangent.astype(out.dtype)

    return attention_with_blockwise_jvp


def attention(
    q: Array, k: Array, v: Array, kind: str = "auto", *, block_q: int = DEFAULT_BLOCK, block_k: int = DEFAULT_BLOCK
) -> Array:
    """Multi-head scaled dot-product attention softmax(q k^T / sqrt(D)) v (Vaswani et al. 2017)
    by one of ATTENTION_KINDS (module docstring). All kinds agree to float rounding.

    Args:
      q: [B, Lq, H, D]; k, v: [B, Lk, H, D] (the jax.nn.dot_product_attention layout).
      kind: 'auto' (fused primal, blockwise jvp), 'einsum', 'fused' or 'blockwise'.
      block_q, block_k: block sizes of the blockwise computation.
    Returns:
      [B, Lq, H, D] in v's dtype.
    """
    if kind == "einsum":
        return layers.attention(q, k, v)
    _check_shapes(q, k, v)
    if kind == "fused":
        return fused_attention(q, k, v)
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"attention kind must be one of {ATTENTION_KINDS}, got {kind!r}")
    for block in (block_q, block_k):
        _blocks(1, block)  # a bad block size fails here, not inside the traced rule
    primal = "fused" if kind == "auto" else "blockwise"
    return _with_blockwise_jvp(primal, int(block_q), int(block_k))(q, k, v).astype(v.dtype)
