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

SIGMA_D = 0.5
NETWORKS = {  # tiny versions of each network, with attention where the network has it
    "mlp": (dict(name="mlp", hidden=32, depth=2, emb_dim=16), (6,)),
    "unet": (
        dict(name="unet", channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,),
             emb_norm="adaptive_double"),
        (8, 8, 1),
    ),
    "dit": (dict(name="dit", hidden=64, depth=2, num_heads=2, patch=2), (8, 8, 4)),
    "edm2": (
        dict(name="edm2", channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,),
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


def perturbed(params, seed, scale=0.05):
    """Zero-initialized output layers give zero outputs and tangents: move every weight a little."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(tree, [p + scale * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)])


def relative(a, b) -> float:
    return float(jnp.linalg.norm((a - b).ravel()) / jnp.linalg.norm(b.ravel()))


def float_dtypes(tree) -> set:
    return {leaf.dtype for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.floating)}


@pytest.mark.parametrize("network", sorted(NETWORKS))
def test_bf16_parameters_stay_float32_and_outputs_agree(network):
    m32, shape = build(network, "meanflow", "float32")
    m16, _ = build(network, "meanflow", "bfloat16")
    example = {"x": jnp.zeros((1, *shape))}
    p16 = m16.init_params(jax.random.key(0), example)
    p32 = m32.init_params(jax.random.key(0), example)
    assert jax.tree.structure(p16) == jax.tree.structure(p32)
    assert float_dtypes(p16) == {jnp.dtype(jnp.float32)}, network

    params = perturbed(p32, 1)["net"]
    n = 8
    x = jax.random.normal(jax.random.key(2), (n, *shape))
    apply32 = jax.jit(lambda x, t, d: m32.apply_net(params, x, t, None, d, train=False))
    apply16 = jax.jit(lambda x, t, d: m16.apply_net(params, x, t, None, d, train=False))
    for t_value in (1e-3, 0.3, 0.999):
        t = jnp.full((n,), t_value)
        d = jnp.linspace(0.0, t_value, n)  # MeanFlow's interval h = t - r, from 0 to t
        out32, out16 = apply32(x, t, d), apply16(x, t, d)
        assert out16.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out16))), (network, t_value)
        assert relative(out16, out32) < 0.03, (network, t_value, relative(out16, out32))


def _problem(shape, n=8, seed=3):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return jax.random.uniform(k1, (n, *shape), minval=-1, maxval=1), SIGMA_D * jax.random.normal(k2, (n, *shape))


@pytest.mark.parametrize("network", ["unet", "dit", "edm2"])
def test_bf16_scm_rearranged_tangent_loss_and_gradient_agree_with_float32(network):
    m32, shape = build(network, "scm_sct", "float32")
    m16, _ = build(network, "scm_sct", "bfloat16")
    params = perturbed(m32.init_params(jax.random.key(0), {"x": jnp.zeros((1, *shape))}), 1)
    x0, z = _problem(shape)
    n = x0.shape[0]
    tangents = {
        m: jax.jit(lambda x_t, t, v, m=m: m.tangent(params["net"], x_t, t, v, train=False)[1]) for m in (m32, m16)
    }
    bc = lambda a: a.reshape(-1, *([1] * len(shape)))  # noqa: E731
    for t_value in (0.01, 0.8, m32.t_max, np.pi / 2 - 1e-3):  # the jvp must stay finite up to pi/2
        t = jnp.full((n,), t_value)
        x_t = bc(jnp.cos(t)) * x0 + bc(jnp.sin(t)) * z
        v = bc(jnp.cos(t)) * z - bc(jnp.sin(t)) * x0
        g32, g16 = tangents[m32](x_t, t, v), tangents[m16](x_t, t, v)
        assert g16.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(g16))), (network, t_value)
        assert relative(g16, g32) < 0.06, (network, t_value, relative(g16, g32))
    _check_loss_and_gradient(m32, m16, params, {"x": x0}, network)


@pytest.mark.parametrize("network", ["unet", "dit", "edm2"])
def test_bf16_meanflow_jvp_loss_and_gradient_agree_with_float32(network):
    m32, shape = build(network, "meanflow", "float32")
    m16, _ = build(network, "meanflow", "bfloat16")
    params = perturbed(m32.init_params(jax.random.key(0), {"x": jnp.zeros((1, *shape))}), 1)
    x0, eps = _problem(shape)
    n = x0.shape[0]
    jvps = {m: jax.jit(lambda z, r, t, v, m=m: m.u_and_dudt(params["net"], z, r, t, v)) for m in (m32, m16)}
    bc = lambda a: a.reshape(-1, *([1] * len(shape)))  # noqa: E731
    for t_value in (1e-3, 0.5, 1.0):  # t = 1 is pure noise
        t = jnp.full((n,), t_value)
        r = jnp.linspace(0.0, t_value, n)  # from the whole interval to r = t
        z_t = bc(1 - t) * x0 + bc(t) * eps
        v = eps - x0
        (u32, du32), (u16, du16) = jvps[m32](z_t, r, t, v), jvps[m16](z_t, r, t, v)
        assert du16.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(du16))), (network, t_value)
        assert relative(u16, u32) < 0.03, (network, t_value, relative(u16, u32))
        assert relative(du16, du32) < 0.06, (network, t_value, relative(du16, du32))
    _check_loss_and_gradient(m32, m16, params, {"x": x0}, network)


def _check_loss_and_gradient(m32, m16, params, batch, network):
    """Same parameters, batch and randomness: float32 loss, within 2% of the float32 computation;
    float32 gradients, finite, pointing the same way (cosine > 0.99); an optimizer + EMA update
    with them leaves parameters, Adam moments and EMAs in float32."""

    def loss_and_grad(method):
        def f(p):
            return method.loss(p, p, batch, jax.random.key(5), jnp.int32(10_000))[0]

        return jax.jit(jax.value_and_grad(f))(params)

    (l32, g32), (l16, g16) = loss_and_grad(m32), loss_and_grad(m16)
    assert l16.dtype == jnp.float32 and bool(jnp.isfinite(l16)), network
    assert abs(float(l16 - l32)) <= 0.02 * abs(float(l32)), (network, float(l16), float(l32))
    assert float_dtypes(g16) == {jnp.dtype(jnp.float32)}, network
    flat16 = jnp.concatenate([g.ravel() for g in jax.tree.leaves(g16)])
    flat32 = jnp.concatenate([g.ravel() for g in jax.tree.leaves(g32)])
    assert bool(jnp.all(jnp.isfinite(flat16))), network
    cosine = float(flat16 @ flat32 / (jnp.linalg.norm(flat16) * jnp.linalg.norm(flat32)))
    assert cosine > 0.99, (network, cosine)

    tx, _ = optim.build(OptimConfig(), 10)
    decays = {"ema_0.99": 0.99}
    updated, _ = jax.jit(lambda s, g, loss: state.apply_gradients(s, g, loss, tx, decays))(
        state.create(params, tx, decays), g16, l16
    )
    assert int(updated.nonfinite[0]) == -1, network  # the update was taken
    assert float_dtypes((updated.params, updated.opt_state, updated.ema)) == {jnp.dtype(jnp.float32)}, network
