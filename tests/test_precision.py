"""The bf16 compute policy (`model.dtype='bfloat16'`) on every network.

Policy: parameters, optimizer state and EMAs stay float32; the heavy layers compute in bf16;
time / step-size embeddings, normalization statistics, the network output, jvp tangents and
losses are float32. Checked here against the float32 computation with the same parameters:
outputs, losses, gradients and the tangents of sCM's rearranged jvp and MeanFlow's jvp agree
within bf16 accuracy and stay finite over the whole time range.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from fewstep_jax import methods, models, optim, state
from fewstep_jax.config_lib import OptimConfig
from fewstep_jax.data import DatasetInfo
from fewstep_jax.methods.base import bcast

SIGMA_D = 0.5
NETWORKS = {  # tiny versions of each network, with attention where the network has it
    "mlp": (dict(name="mlp", hidden=32, depth=2, emb_dim=16), (6,)),
    "unet": (
        dict(name="unet", channels=16, channel_mult=(1,), num_blocks=1, attn_resolutions=(8,),
             emb_norm="adaptive_double"),
        (8, 8, 1),
    ),
    "dit": (dict(name="dit", hidden=64, depth=1, num_heads=2, patch=2), (8, 8, 4)),
    "edm2": (
        dict(name="edm2", channels=16, channel_mult=(1,), num_blocks=1, attn_resolutions=(8,),
             channels_per_head=16),
        (8, 8, 3),
    ),
}  # fmt: skip


def build(network: str, method: str, dtype: str):
    net_cfg, shape = NETWORKS[network]
    info = DatasetInfo(name="x", shape=shape, num_classes=0, data_std=SIGMA_D)
    cfg = ml_collections.ConfigDict(dict(net_cfg, dtype=dtype, use_d=method == "meanflow"))
    net = models.build(cfg, data_shape=shape, num_classes=0)
    method_cfg = dict(name=method)
    if method == "scm_sct":
        method_cfg.update(sigma_d=SIGMA_D, tangent_warmup=0)
    return methods.build(ml_collections.ConfigDict(method_cfg), net, info), shape


def init(method, shape, seed=0, scale=0.05):
    """The network's initial parameters, each moved a little (zero-initialized output layers would
    give zero outputs and tangents). Compiled without XLA's slow optimizations: it runs once."""
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        params = jax.jit(lambda key: method.init_params(key, {"x": jnp.zeros((1, *shape))}))(jax.random.key(seed))
    finally:
        jax.config.update("jax_disable_most_optimizations", False)
    rng = np.random.default_rng(seed + 1)
    return jax.tree.map(lambda p: jnp.asarray(np.asarray(p) + scale * rng.standard_normal(p.shape), p.dtype), params)


def relative(a, b) -> float:
    return float(jnp.linalg.norm((a - b).ravel()) / jnp.linalg.norm(b.ravel()))


def float_dtypes(tree) -> set:
    return {leaf.dtype for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.floating)}


@pytest.mark.parametrize("network", sorted(NETWORKS))
def test_bf16_parameters_stay_float32_and_outputs_agree(network):
    m32, shape = build(network, "meanflow", "float32")
    m16, _ = build(network, "meanflow", "bfloat16")
    example = {"x": jnp.zeros((1, *shape))}
    p16 = jax.eval_shape(lambda key: m16.init_params(key, example), jax.random.key(0))
    p32 = jax.eval_shape(lambda key: m32.init_params(key, example), jax.random.key(0))
    assert jax.tree.structure(p16) == jax.tree.structure(p32)
    assert float_dtypes(p16) == {jnp.dtype(jnp.float32)}, network

    params = init(m32, shape)["net"]
    n = 8
    x = jax.random.normal(jax.random.key(2), (n, *shape))
    apply32 = jax.jit(lambda x, t, d: m32.apply_net(params, x, t, None, d, train=False))
    apply16 = jax.jit(lambda x, t, d: m16.apply_net(params, x, t, None, d, train=False))
    for t_value in (1e-3, 0.3, 0.999):
        t = jnp.full((n,), t_value)
        d = jnp.linspace(0.0, t_value, n)  # MeanFlow's interval h = t - r, from 0 to t
        out32, out16 = apply32(x, t, d), apply16(x, t, d)
        assert out16.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out16))), (network, t_value)
        assert 1e-4 < relative(out16, out32) < 0.03, (network, t_value, relative(out16, out32))  # bf16, in effect


def float32_and_bf16(network, method, n=8, seed=3):
    """The float32 and the bf16 build of one method on one network, shared parameters, and a
    batch: data in [-1, 1] and Gaussian noise of std sigma_d, both [n, *shape]."""
    m32, shape = build(network, method, "float32")
    m16, _ = build(network, method, "bfloat16")
    k1, k2 = jax.random.split(jax.random.key(seed))
    x0 = jax.random.uniform(k1, (n, *shape), minval=-1, maxval=1)
    return m32, m16, init(m32, shape), x0, SIGMA_D * jax.random.normal(k2, (n, *shape))


@pytest.mark.parametrize("network", ["unet", "dit", "edm2"])
def test_bf16_scm_rearranged_tangent_loss_and_gradient_agree_with_float32(network):
    m32, m16, params, x0, z = float32_and_bf16(network, "scm_sct")
    n = x0.shape[0]
    tangents = {
        m: jax.jit(lambda x_t, t, v, m=m: m.tangent(params["net"], x_t, t, v, train=False)[1]) for m in (m32, m16)
    }
    for t_value in (0.01, 0.8, m32.t_max, np.pi / 2 - 1e-3):  # the jvp must stay finite up to pi/2
        t = jnp.full((n,), t_value)
        c, s = bcast(jnp.cos(t), x0), bcast(jnp.sin(t), x0)
        x_t, v = c * x0 + s * z, c * z - s * x0
        g32, g16 = tangents[m32](x_t, t, v), tangents[m16](x_t, t, v)
        assert g16.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(g16))), (network, t_value)
        assert relative(g16, g32) < 0.05, (network, t_value, relative(g16, g32))
    if network != "edm2":  # loss and gradient: UNet and DiT (compiling EDM2's twice more is slow)
        _check_loss_and_gradient(m32, m16, params, {"x": x0}, network)


@pytest.mark.parametrize("network", ["unet", "dit", "edm2"])
def test_bf16_meanflow_jvp_loss_and_gradient_agree_with_float32(network):
    m32, m16, params, x0, eps = float32_and_bf16(network, "meanflow")
    n = x0.shape[0]
    jvps = {m: jax.jit(lambda z, r, t, v, m=m: m.u_and_dudt(params["net"], z, r, t, v)) for m in (m32, m16)}
    for t_value in (1e-3, 0.5, 1.0):  # t = 1 is pure noise
        t = jnp.full((n,), t_value)
        r = jnp.linspace(0.0, t_value, n)  # from the whole interval to r = t
        z_t = bcast(1 - t, x0) * x0 + bcast(t, x0) * eps
        v = eps - x0
        (u32, du32), (u16, du16) = jvps[m32](z_t, r, t, v), jvps[m16](z_t, r, t, v)
        assert du16.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(du16))), (network, t_value)
        assert relative(u16, u32) < 0.03, (network, t_value, relative(u16, u32))
        assert relative(du16, du32) < 0.05, (network, t_value, relative(du16, du32))
    if network != "edm2":
        _check_loss_and_gradient(m32, m16, params, {"x": x0}, network)


def _check_loss_and_gradient(m32, m16, params, batch, network):
    """Same parameters, batch and randomness: a float32 loss, and the loss and every logged
    quantity within 2% of the float32 computation (sCM's and MeanFlow's adaptive weightings
    make the loss value itself nearly constant, so the raw errors and tangent norms they log
    are what tells bf16 apart); float32 gradients, finite, pointing the same way (cosine >
    0.999); an optimizer + EMA update with them leaves parameters, Adam moments and EMAs in
    float32."""

    def loss_and_grad(method):
        def f(p):
            return method.loss(p, batch, jax.random.key(5), jnp.int32(10_000))

        return jax.jit(jax.value_and_grad(f, has_aux=True))(params)

    ((l32, aux32), g32), ((l16, aux16), g16) = loss_and_grad(m32), loss_and_grad(m16)
    assert l16.dtype == jnp.float32 and bool(jnp.isfinite(l16)), network
    for name, value in {"loss": (l16, l32), **{k: (aux16[k], aux32[k]) for k in aux32}}.items():
        a16, a32 = float(value[0]), float(value[1])
        assert abs(a16 - a32) <= 0.02 * abs(a32) + 1e-6, (network, name, a16, a32)
    assert float_dtypes(g16) == {jnp.dtype(jnp.float32)}, network
    flat16 = jnp.concatenate([g.ravel() for g in jax.tree.leaves(g16)])
    flat32 = jnp.concatenate([g.ravel() for g in jax.tree.leaves(g32)])
    assert bool(jnp.all(jnp.isfinite(flat16))), network
    cosine = float(flat16 @ flat32 / (jnp.linalg.norm(flat16) * jnp.linalg.norm(flat32)))
    assert cosine > 0.999, (network, cosine)

    tx, _ = optim.build(OptimConfig(), 10)
    decays = {"ema_0.99": 0.99}
    updated, _ = jax.jit(lambda s, g, loss: state.apply_gradients(s, g, loss, tx, decays))(
        state.create(params, tx, decays), g16, l16
    )
    assert int(updated.nonfinite[0]) == -1, network  # the update was taken
    assert float_dtypes((updated.params, updated.opt_state, updated.ema)) == {jnp.dtype(jnp.float32)}, network
