"""Tests for the EDM2 network and EDM2's training-dynamics pieces (Karras et al. 2024): published
sizes, magnitude preservation of the MP layers, forced weight normalization as a projection, the
power-function EMA. The network-interface tests (zero output when fresh, conditioning, dropout,
batch independence, gradients, jvp vs float64 finite differences) run in test_models.py."""

from __future__ import annotations

import math
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import load_config
from ml_collections import ConfigDict
from test_models import EDM2_TINY, _build, _inputs, _jit, _key

from fewstep_jax import data as data_lib
from fewstep_jax import methods, models, state
from fewstep_jax.config_lib import TrainConfig, validate
from fewstep_jax.models import edm2
from fewstep_jax.models.unet import visited_resolutions

# --------------------------------------------------------------------------------------------
# Published sizes (EDM2 Table 2), counted from shapes only.


def _analytic_edm2_params(channels: int, mult, blocks: int, attn, res: int, img: int, classes: int) -> int:
    """Parameter count of the architecture of EDM2 Fig. 21 as described (independent of the Flax
    code): bias-free MP layers, one scalar gain per block plus the output gain."""
    widths = [channels * m for m in mult]
    emb = max(widths)
    total = widths[0] * emb + classes * emb  # noise embedding and label layers

    def block(cin, cout, flavor, attention):
        n = 9 * (cout if flavor == "enc" else cin) * cout + emb * cout + 9 * cout * cout + 1
        n += cin * cout if cin != cout else 0
        return n + (4 * cout * cout if attention else 0)  # qkv (3 cout^2) and proj (cout^2)

    total += 9 * (img + 1) * widths[0]  # first conv sees the image plus a constant channel
    skips, c = [widths[0]], widths[0]
    for level, w in enumerate(widths):
        r = res >> level
        if level:
            total += block(c, c, "enc", False)
            skips.append(c)
        for _ in range(blocks):
            total += block(c, w, "enc", r in attn)
            c = w
            skips.append(c)
    for level in reversed(range(len(widths))):
        r = res >> level
        if level == len(widths) - 1:
            total += block(c, c, "dec", True) + block(c, c, "dec", False)
        else:
            total += block(c, c, "dec", False)
        for _ in range(blocks + 1):
            cin = c + skips.pop()
            c = widths[level]
            total += block(cin, c, "dec", r in attn)
    return total + 9 * c * img + 1


def _count(size: str, data_shape, classes: int = 1000) -> tuple[int, dict]:
    net = _build(dict(name="edm2", size=size), data_shape, num_classes=classes)
    x = jax.ShapeDtypeStruct((1, *data_shape), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.float32)
    shapes = jax.eval_shape(net.init, _key(0), x, t)["params"]
    return models.count_params(shapes), shapes


@pytest.mark.parametrize(
    "size,published",
    [("XS", 125e6), ("S", 280e6), ("M", 498e6), ("L", 778e6), ("XL", 1119e6), ("XXL", 1523e6)],
)
def test_param_count_matches_published_size_imagenet512(size, published):
    """ImageNet-512 latents (64x64x4, 1000 classes), EDM2 Table 2. Measured: XS 124,713,125;
    S 280,212,709; M 497,807,653; L 777,497,957; XL 1,119,283,621; XXL 1,523,164,645."""
    count, shapes = _count(size, (64, 64, 4))
    channels = models.EDM2_SIZES[size]
    assert count == _analytic_edm2_params(channels, (1, 2, 3, 4), 3, (16, 8), 64, 4, 1000)
    assert abs(count - published) / published < 0.01, count
    assert all(s.dtype == jnp.float32 for s in jax.tree.leaves(shapes))
    # The label layer maps one-hot labels (NULL = all zeros), no extra row: EDM2's shape exactly.
    assert shapes["emb_label"]["weight"].shape == (1000, 4 * channels)


@pytest.mark.parametrize("size", ["S", "M", "L", "XL"])
def test_param_count_imagenet64(size):
    """The ImageNet-64 networks of sCM / ECT / SCT (64x64x3, 1000 classes). Measured: S 280,209,253;
    M 497,803,045; L 777,492,197; XL 1,119,276,709 (one image channel less than the latent nets)."""
    count, _ = _count(size, (64, 64, 3))
    assert count == _analytic_edm2_params(models.EDM2_SIZES[size], (1, 2, 3, 4), 3, (16, 8), 64, 3, 1000)


# --------------------------------------------------------------------------------------------
# Magnitude preservation (EDM2 sec. 2.2-2.5): unit-magnitude inputs give unit-magnitude outputs.


def _rms(a, axis=None):
    return np.sqrt(np.mean(np.square(np.asarray(a, np.float64)), axis=axis))


def test_mp_conv_has_unit_output_magnitude_whatever_the_weight_scale():
    """Weights stored at scales 1e-2 ... 1e2 per output channel: MPConv's outputs keep unit RMS
    (forward weight normalization, eq. 47); the same weights in a plain layer scaled by
    1 / sqrt(fan_in) give RMS equal to the stored scale."""
    rng = np.random.default_rng(0)
    scales = np.exp(rng.uniform(np.log(1e-2), np.log(1e2), 32)).astype(np.float32)
    x = jnp.asarray(rng.standard_normal((4096, 64)), jnp.float32)
    w = rng.standard_normal((64, 32)).astype(np.float32) * scales
    out = edm2.MPConv(32).apply({"params": {"weight": jnp.asarray(w)}}, x)
    np.testing.assert_allclose(_rms(out, axis=0), 1.0, atol=0.1)
    plain = _rms(np.asarray(x) @ w / math.sqrt(64), axis=0)
    assert np.max(np.abs(np.log(plain))) > np.log(10.0)
    # 3x3 convolution: unit magnitude away from the zero-padded border.
    xc = jnp.asarray(rng.standard_normal((16, 12, 12, 8)), jnp.float32)
    wc = rng.standard_normal((3, 3, 8, 16)).astype(np.float32) * scales[:16]
    outc = edm2.MPConv(16, (3, 3)).apply({"params": {"weight": jnp.asarray(wc)}}, xc)
    np.testing.assert_allclose(_rms(outc[:, 1:-1, 1:-1], axis=(0, 1, 2)), 1.0, atol=0.1)
    # gain scales the output magnitude linearly.
    out2 = edm2.MPConv(32).apply({"params": {"weight": jnp.asarray(w)}}, x, gain=2.5)
    np.testing.assert_allclose(np.asarray(out2), 2.5 * np.asarray(out), rtol=1e-5, atol=1e-5)


def test_mp_silu_sum_cat_fourier_magnitudes():
    # mp_silu (eq. 81): E[SiLU(x)^2] for x ~ N(0, 1) by Gauss-Hermite quadrature, float64.
    nodes, weights = np.polynomial.hermite_e.hermegauss(200)
    weights = weights / np.sqrt(2 * np.pi)
    silu = nodes / (1 + np.exp(-nodes))
    second_moment = np.sum(weights * silu**2)
    assert abs(second_moment / edm2.SILU_MAGNITUDE**2 - 1) < 2e-3  # plain SiLU: 0.355
    assert abs(second_moment - 1) > 0.5

    rng = np.random.default_rng(1)
    a = rng.standard_normal((20000, 16))
    b = rng.standard_normal((20000, 48))
    # mp_sum (eq. 88): unit magnitude for any balance; a plain lerp shrinks it.
    for t in (0.3, 0.5, 0.9):
        assert abs(_rms(edm2.mp_sum(a[:, :16], b[:, :16], t)) - 1) < 0.02
    assert abs(_rms((1 - 0.3) * a[:, :16] + 0.3 * b[:, :16]) - 1) > 0.2
    np.testing.assert_array_equal(edm2.mp_sum(a, a * 2, 0.0), a)
    # mp_cat (eq. 103): unit total magnitude; a's energy share is (1-t)^2 / ((1-t)^2 + t^2)
    # whatever the widths (plain concatenation: N_a / (N_a + N_b) = 0.25 here).
    t = 0.3
    cat = np.asarray(edm2.mp_cat(a, b, t))
    assert abs(_rms(cat) - 1) < 0.02
    share = np.sum(cat[:, :16] ** 2) / np.sum(cat**2)
    assert abs(share - (1 - t) ** 2 / ((1 - t) ** 2 + t**2)) < 0.01
    # MPFourier (eq. 75): unit magnitude at every input value; fixed constants (seeded).
    feats = edm2.mp_fourier(jnp.asarray([-2.0, 0.0, 0.7, 3.0]), 4096)
    np.testing.assert_allclose(_rms(feats, axis=1), 1.0, atol=0.05)
    np.testing.assert_array_equal(feats, edm2.mp_fourier(jnp.asarray([-2.0, 0.0, 0.7, 3.0]), 4096))
    other = edm2.mp_fourier(jnp.asarray([0.7]), 4096, seed=edm2.D_SEED)
    assert float(jnp.abs(other[0] - feats[2]).max()) > 0.5


def _tiny_params(net, data_shape, seed: int):
    """Random params of the tiny EDM2 without compiling its initializers: N(0, 1) weights at
    random per-channel scales, gains ~ U(0.5, 1.5)."""
    x, t = _inputs(data_shape, 2, 0)
    shapes = jax.eval_shape(net.init, _key(0), x, t, jnp.zeros(2, jnp.int32))["params"]
    rng = np.random.default_rng(seed)

    def draw(path, s):
        if path[-1].key == edm2.WEIGHT:
            scale = np.exp(rng.uniform(-2.0, 2.0, s.shape[-1]))
            return (rng.standard_normal(s.shape) * scale).astype(np.float32)
        return rng.uniform(0.5, 1.5, s.shape).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def _weight_leaves(tree):
    return [(jax.tree_util.keystr(p), np.asarray(v)) for p, v in jax.tree_util.tree_leaves_with_path(tree)
            if p[-1].key == edm2.WEIGHT]


def test_projection_makes_rows_unit_is_idempotent_and_leaves_gains():
    """Forced weight normalization (eq. 66): every MP weight row (one output channel) gets unit
    magnitude, mean(w_i^2) = 1 over its fan-in; a second projection changes nothing; gains are
    untouched; networks without MP layers get the identity."""
    net = _build(EDM2_TINY, (16, 16, 3), num_classes=3)
    params = _tiny_params(net, (16, 16, 3), seed=3)
    project = _jit(models.param_projection(net))
    once = project(params)
    twice = project(once)
    leaves = _weight_leaves(once)
    assert len(leaves) >= 30
    for name, w in leaves:
        rows = w.reshape(-1, w.shape[-1])
        np.testing.assert_allclose(np.mean(rows.astype(np.float64) ** 2, axis=0), 1.0, rtol=1e-5, err_msg=name)
    for (_, a), (_, b) in zip(leaves, _weight_leaves(twice)):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(once["out_gain"], params["out_gain"])
    np.testing.assert_array_equal(once["enc_8_block0"]["emb_gain"], params["enc_8_block0"]["emb_gain"])
    unet = _build(dict(name="unet", channels=8, channel_mult=(1,), num_blocks=1), (4, 4, 1))
    tree = {"conv_in": {"kernel": jnp.full((3, 3, 1, 8), 3.0)}}
    assert models.param_projection(unet)(tree) is tree


def test_forward_invariant_to_rescaling_stored_weights_and_magnitude_preserving():
    """Rescaling every stored MP weight row by a positive factor (0.25 ... 4) leaves the output
    unchanged (forward normalization; only the eps of normalize() differs); changing the weights'
    directions changes it. With unit output gain, unit-magnitude inputs give an output of unit
    magnitude through the whole network."""
    net = _build(EDM2_TINY, (16, 16, 3), num_classes=3)
    params = _jit(models.param_projection(net))(_tiny_params(net, (16, 16, 3), seed=4))
    params = dict(params, out_gain=jnp.ones(()))
    rng = np.random.default_rng(5)

    def per_row(fn):
        return jax.tree_util.tree_map_with_path(
            lambda p, v: fn(v) if p[-1].key == edm2.WEIGHT else v, params)

    rescaled = per_row(lambda w: w * np.exp(rng.uniform(np.log(0.25), np.log(4.0), w.shape[-1])).astype(np.float32))
    turned = per_row(lambda w: w + 0.5 * rng.standard_normal(w.shape).astype(np.float32))
    x, t = _inputs((16, 16, 3), 4, 6)
    y = jnp.array([0, 1, 2, 3], jnp.int32)
    apply = _jit(net.apply)
    base, scaled, other = (np.asarray(apply({"params": p}, x, t, y)) for p in (params, rescaled, turned))
    scale = np.linalg.norm(base)
    assert np.linalg.norm(scaled - base) / scale < 2e-3
    assert np.linalg.norm(other - base) / scale > 0.1
    assert 0.7 < _rms(base) < 1.4


def test_dropout_only_at_resolutions_up_to_dropout_res():
    """ECT's ImageNet-64 option: with dropout_res = 8, blocks at 8x8 drop and blocks at 16x16 do
    not; 0 means every block (traced abstractly; no compilation)."""
    rates: dict[str, float] = {}

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, edm2.Block) and context.method_name == "__call__":
            rates[context.module.name] = context.module.dropout
        return next_fun(*args, **kwargs)

    x, t = _inputs((16, 16, 3), 1, 0)
    for dropout_res, expect_16 in ((8, 0.0), (0, 0.3)):
        rates.clear()
        net = _build(EDM2_TINY, (16, 16, 3), dropout=0.3, dropout_res=dropout_res)
        with nn.intercept_methods(record):
            jax.eval_shape(partial(net.init, train=True), _key(0), x, t)
        assert len(rates) == 10
        for name, rate in rates.items():
            assert rate == (0.3 if name.split("_")[1] == "8" else expect_16), (name, rate)


# --------------------------------------------------------------------------------------------
# The hooks: projection in the training state, the learned log-variance head in EDM2's form.


def test_apply_gradients_projects_before_the_emas_and_guard_skips_it():
    tx = optax.sgd(1.0)
    params = {"w": jnp.array([3.0, 4.0])}

    def unit(p):  # project onto the unit circle
        return {"w": p["w"] / jnp.linalg.norm(p["w"])}

    decays = {"ema": 0.5}
    st = state.create(unit(params), tx, decays)
    st, _ = state.apply_gradients(st, {"w": jnp.array([-0.4, 0.2])}, jnp.zeros(()), tx, decays, project=unit)
    raw = np.array([0.6, 0.8]) + np.array([0.4, -0.2])
    np.testing.assert_allclose(st.params["w"], raw / np.linalg.norm(raw), rtol=1e-6)
    np.testing.assert_allclose(st.ema["ema"]["w"], 0.5 * np.array([0.6, 0.8]) + 0.5 * raw / np.linalg.norm(raw),
                               rtol=1e-6)
    good = jax.device_get(st)
    st, _ = state.apply_gradients(st, {"w": jnp.array([jnp.nan, 0.0])}, jnp.zeros(()), tx, decays, project=unit)
    np.testing.assert_array_equal(st.params["w"], good.params["w"])


def test_edm_method_projects_network_and_mp_log_variance_head():
    """The `edm` method with EDM2's head (logvar_form='mp_fourier') on the EDM2 network: one
    projection covers params['net'] and params['logvar'] (the training loop calls it at init and
    after every step)."""
    net = _build(EDM2_TINY, (16, 16, 3), num_classes=3)
    info = data_lib.DatasetInfo(name="test", shape=(16, 16, 3), num_classes=3, data_std=0.5)
    method = methods.build(ConfigDict(dict(name="edm", learned_weighting=True, logvar_form="mp_fourier")), net, info)
    params = {"net": _tiny_params(net, (16, 16, 3), seed=7),
              "logvar": {"out": {"weight": jnp.full((128, 1), 5.0)}}}
    projected = _jit(method.project_params)(params)
    for name, w in _weight_leaves(projected):
        np.testing.assert_allclose(np.mean(w.reshape(-1, w.shape[-1]) ** 2, axis=0), 1.0, rtol=1e-5, err_msg=name)
    assert len(_weight_leaves(projected)) == len(_weight_leaves(params))
    u = method.logvar_net.apply({"params": projected["logvar"]}, jnp.array([0.1, 1.0]))
    # u = <w_hat, MPFourier(c)> with a unit-norm w_hat: all-equal weights give mean(features) * 1.
    feats = edm2.mp_fourier(jnp.array([0.1, 1.0]) * 1.0, 128, seed=edm2.LOGVAR_SEED)
    np.testing.assert_allclose(u, jnp.sum(feats, axis=1) / math.sqrt(128) / (1 + 1e-4), rtol=1e-5)
    with pytest.raises(ValueError, match="logvar_form must be one of"):
        methods.build(ConfigDict(dict(name="edm", logvar_form="fourier")), net, info)


@pytest.mark.parametrize(
    "name,variants",
    [("trigflow_imagenet64", ("s", "m", "l", "xl", "smoke")), ("edm_imagenet64", ("s", "m", "l", "xl", "smoke")),
     ("ect_imagenet64", ("s", "m", "smoke")), ("sct_imagenet64", ("s", "m")),
     ("scm_sct_imagenet64", ("s", "xl")), ("scm_scd_imagenet64", ("s", "xl"))],
)
def test_imagenet64_configs_build_their_edm2_network_and_method(name, variants):
    """The ImageNet-64 paper configs name a buildable EDM2 network and method (the dataset itself
    is checked elsewhere), and their EMA section validates."""
    info = data_lib.DatasetInfo(name="imagenet64", shape=(64, 64, 3), num_classes=1000, data_std=0.5)
    for variant in variants:
        config = load_config(name, variant)
        net = models.build(config.model, data_shape=info.shape, num_classes=info.num_classes)
        assert isinstance(net, models.EDM2)
        if variant != "smoke":
            assert net.channels == models.EDM2_SIZES[variant.upper()]
        methods.build(config.method, net, info)
        assert state.ema_decays(TrainConfig(**{k: tuple(v) if isinstance(v, list) else v
                                              for k, v in config.train.items()}))


@pytest.mark.parametrize(
    "cfg,match",
    [
        (dict(name="edm2"), r"needs model.size .* or an explicit model.channels"),
        (dict(name="edm2", size="XXXL"), r"model.size must be one of \['XS', 'S', 'M', 'L', 'XL', 'XXL'\]"),
        (dict(EDM2_TINY, channels_per_head=12), r"channels_per_head=12 does not divide attention widths"),
        (dict(EDM2_TINY, attn_resolutions=(4,)), r"attn_resolutions \[4\] are not visited"),
        (dict(EDM2_TINY, res_balance=1.5), r"res_balance must be in \[0, 1\]"),
        (dict(EDM2_TINY, dropout_res=-1), r"dropout_res must be an int >= 0"),
        (dict(EDM2_TINY, chanels=8), r"unknown key\(s\) \['chanels'\]"),
    ],
    ids=["no_size", "size", "heads", "attn_res", "balance", "dropout_res", "typo"],
)
def test_build_validation_errors(cfg, match):
    with pytest.raises(ValueError, match=match):
        _build(cfg, (16, 16, 3))


def test_size_fills_channels_and_explicit_channels_win():
    assert _build(dict(name="edm2", size="m"), (64, 64, 3)).channels == 256
    assert _build(dict(name="edm2", size="XL", channels=64), (64, 64, 3)).channels == 64
    assert "edm2" in models.REGISTRY and "edm2" not in models.PLANNED_NETWORKS
    assert visited_resolutions(64, (1, 2, 3, 4)) == (64, 32, 16, 8)


# --------------------------------------------------------------------------------------------
# EDM2's power-function EMA (sec. 3.1, App. C).


def test_sigma_rel_gamma_round_trip_and_published_pairs():
    # EDM2 sec. 3.1 tracks gamma = 16.97 and 6.94, i.e. sigma_rel = 0.05 and 0.10.
    assert state.sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=0.01)
    assert state.sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=0.01)
    for sr in (0.005, 0.01, 0.05, 0.1, 0.2, 0.28):
        assert state.gamma_to_sigma_rel(state.sigma_rel_to_gamma(sr)) == pytest.approx(sr, rel=1e-10)
    # sigma_rel is the std of the profile density (gamma + 1) x^gamma on [0, 1] (Gauss-Legendre).
    nodes, weights = np.polynomial.legendre.leggauss(100)
    x, w = (nodes + 1) / 2, weights / 2
    for gamma in (1.0, 7.0, 17.0):  # integer exponents: the quadrature is exact
        density = (gamma + 1) * x**gamma
        mean = np.sum(w * density * x)
        std = math.sqrt(np.sum(w * density * x**2) - mean**2)
        assert state.gamma_to_sigma_rel(gamma) == pytest.approx(std, rel=1e-10)
    with pytest.raises(ValueError, match="sigma_rel must be in"):
        state.sigma_rel_to_gamma(0.3)


def test_power_ema_is_the_power_weighted_average_float64():
    """After T updates the power EMA of an arbitrary parameter sequence theta_1..theta_T equals
    sum_t w_t theta_t with w_t = (t^(g+1) - (t-1)^(g+1)) / T^(g+1) (the normalized profile
    t^g integrated over each step), to float64 roundoff; and it approaches the plainly
    normalized t^g weighting as T grows."""
    T = 2000
    decays = state.ema_decays(TrainConfig(batch_size=8, ema_decays=(), ema_sigma_rels=(0.05, 0.2)))
    assert list(decays) == ["ema_sr0.05", "ema_sr0.2"]
    with jax.enable_x64(True):
        thetas = jnp.asarray(np.random.default_rng(8).standard_normal((T, 3)))
        tx = optax.sgd(1.0)
        st = state.create({"w": thetas[0]}, tx, decays)

        @jax.jit
        def run(st):
            def step(st, pair):  # SGD with lr 1 and grad prev - new lands exactly on `new`
                prev, new = pair
                st, _ = state.apply_gradients(st, {"w": prev - new}, jnp.zeros(()), tx, decays)
                return st, None

            # The first update goes from theta_1 to theta_1 (grad 0).
            pairs = (jnp.concatenate([thetas[:1], thetas[:-1]]), thetas)
            return jax.lax.scan(step, st, pairs)[0]

        st = run(st)
        assert st.ema["ema_sr0.05"]["w"].dtype == jnp.float64
        t = np.arange(1, T + 1, dtype=np.float64)
        for name in decays:
            g = decays[name].gamma
            exact = (t ** (g + 1) - (t - 1) ** (g + 1)) / float(T) ** (g + 1)
            np.testing.assert_allclose(np.sum(exact), 1.0, rtol=1e-12)
            np.testing.assert_allclose(st.ema[name]["w"], exact @ np.asarray(thetas), rtol=1e-10, atol=1e-12)
            plain = t**g / np.sum(t**g)
            assert np.max(np.abs(np.asarray(st.ema[name]["w"]) - plain @ np.asarray(thetas))) < 0.01


def test_power_ema_is_skipped_by_the_nonfinite_guard():
    decays = state.ema_decays(TrainConfig(ema_decays=(0.9,), ema_sigma_rels=(0.1,)))
    tx = optax.sgd(1.0)
    st = state.create({"w": jnp.zeros(2)}, tx, decays)
    st, _ = state.apply_gradients(st, {"w": -jnp.ones(2)}, jnp.zeros(()), tx, decays)
    np.testing.assert_allclose(st.ema["ema_sr0.1"]["w"], 1.0)  # beta_1 = 0: the EMA is theta_1
    good = jax.device_get(st)
    st, _ = state.apply_gradients(st, {"w": -jnp.ones(2)}, jnp.array(jnp.nan), tx, decays)
    st, _ = state.apply_gradients(st, {"w": -jnp.ones(2)}, jnp.zeros(()), tx, decays)
    assert list(np.asarray(st.nonfinite)) == [1, 1]
    for name in decays:
        np.testing.assert_array_equal(st.ema[name]["w"], good.ema[name]["w"])


@pytest.mark.parametrize("bad", [0.0, -0.1, 0.3])
def test_config_rejects_sigma_rel_without_power_profile(bad):
    config = load_config("trigflow_digits", "smoke")
    config.train.ema_sigma_rels = (bad,)
    with pytest.raises(ValueError, match=r"EMA sigma_rel must be in \(0, 1/sqrt\(12\)"):
        validate(config, num_devices=1)
