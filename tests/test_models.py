"""Tests for fewstep_jax.models: interface, zero-init, conditioning, dropout, jvp, validation."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from ml_collections import ConfigDict

from fewstep_jax import models, recipes
from fewstep_jax.models import layers

NUM_CLASSES = 3

# Small but complete networks: attention at a visited level (4x4) plus the middle attention.
UNET_SMALL = dict(name="unet", channels=8, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,))
MLP_SMALL = dict(name="mlp", hidden=32, depth=2, emb_dim=16)
DIT_TINY = dict(name="dit", hidden=64, depth=2, num_heads=4, patch=2)
# EDM2 with every block kind (down / up, encoder and decoder attention, the middle pair), 2 heads;
# test_edm2.py runs it. The interface sweep below uses one level (encoder block, the middle pair
# with its attention, two decoder blocks with mp_cat skips) to keep compilation short.
EDM2_TINY = dict(name="edm2", channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(8,),
                 channels_per_head=8)
EDM2_ONE_LEVEL = dict(EDM2_TINY, channel_mult=(1,), attn_resolutions=())
# ADM (EDM's DhariwalUNet) with one level: encoder block with 2-head attention, the middle pair,
# two decoder blocks; its resampling blocks run in tests/test_pretrained_edm.py's parity test.
ADM_ONE_LEVEL = dict(name="adm", channels=8, channel_mult=(1,), num_blocks=1, attn_resolutions=(8,),
                     channels_per_head=4, dropout=0.1)

# Compilation dominates this file's runtime on CPU. Threefry keys make every parameter
# initializer a separate unrolled hash (~10-20 s to compile a UNet init on 2 cores); the 'rbg'
# implementation compiles in a few seconds and is just as deterministic, which is all tests need.

# XLA's backend optimizations (LLVM) roughly double compile time and buy nothing for tests of
# semantics; the HLO-level program, and so the numerics being checked, is the same.
_jit = partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def _key(seed: int) -> jax.Array:
    return jax.random.key(seed, impl="rbg")


def _build(cfg: dict, data_shape, num_classes: int = 0, **overrides):
    return models.build(
        ConfigDict({**cfg, **overrides}), data_shape=data_shape, num_classes=num_classes
    )


def _perturb(params, seed: int, scale: float = 0.2):
    """params + N(0, scale^2) noise on every leaf, so zero-init layers no longer hide dependencies.
    The noise is drawn on the host in one flat vector: per-leaf jax.random calls would each add a
    compilation."""
    flat, unravel = ravel_pytree(params)
    noise = np.random.default_rng(seed).standard_normal(flat.shape).astype(flat.dtype)
    return _jit(lambda f, n: unravel(f + scale * n))(flat, noise)


def _random_params(net, *args, seed: int = 0):
    """Random params of the right structure without compiling the initializers (shape-first)."""
    shapes = jax.eval_shape(net.init, _key(0), *args)["params"]
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (0.1 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)


def _inputs(data_shape, batch: int, seed: int, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((batch, *data_shape)), dtype)
    t = jnp.asarray(rng.uniform(0.1, 1.5, (batch,)), dtype)
    return x, t


class CondNet:
    """A use_d, class-conditional network with dropout, its fresh and perturbed params, and one
    jitted apply whose call structure never changes (so each test reuses the same compilation)."""

    def __init__(self, cfg: dict, data_shape: tuple[int, ...], scale: float = 0.2, roundoff: float | None = None):
        self.cfg, self.data_shape, self.roundoff = cfg, data_shape, roundoff
        self.net = _build(cfg, data_shape, num_classes=NUM_CLASSES, use_d=True, dropout=0.3)
        x, t = _inputs(data_shape, 3, 0)
        self.fresh = _jit(self.net.init)(_key(0), x, t)["params"]
        self.params = _perturb(self.fresh, seed=1, scale=scale)
        self._apply = _jit(self.net.apply, static_argnames="train")

    def atol(self, out) -> float:
        """Absolute tolerance for float32 roundoff between two XLA programs: 1e-6, or `roundoff`
        times the output scale for networks whose perturbed outputs are large (the DiT)."""
        return 1e-6 if self.roundoff is None else self.roundoff * float(jnp.abs(out).max())

    def __call__(self, x, t, y, d, *, train=False, seed=0, params=None):
        variables = {"params": self.params if params is None else params}
        return self._apply(variables, x, t, y, d, train=train, rngs={"dropout": _key(100 + seed)})


# (id, config, data shape, perturbation scale, roundoff tolerance relative to the output scale).
# DiT: 0.1, not 0.2, because the perturbed adaLN modulations act on a label embedding of unit
# scale, and at 0.2 the net is so curved (outputs ~20) that the float64 central difference itself
# is off by ~1e-6 (error scaling as eps^2); at 0.1 it is ~1e-10 with the same eps. Its outputs are
# of order 10, so roundoff between two programs (measured ~5e-7 of the scale on CPU) is relative.
COND_CASES = [
    ("mlp", MLP_SMALL, (2,), 0.2, None),
    ("unet", UNET_SMALL, (8, 8, 1), 0.2, None),
    ("dit_8x8x1", DIT_TINY, (8, 8, 1), 0.1, 1e-5),
    ("dit_16x16x3", DIT_TINY, (16, 16, 3), 0.1, 1e-5),
    ("edm2", EDM2_ONE_LEVEL, (16, 16, 3), 0.2, None),
    ("adm", ADM_ONE_LEVEL, (8, 8, 1), 0.2, None),
]


@pytest.fixture(scope="module", params=COND_CASES, ids=[c[0] for c in COND_CASES])
def cond_net(request) -> CondNet:
    _, cfg, data_shape, scale, roundoff = request.param
    return CondNet(cfg, data_shape, scale, roundoff)


# --------------------------------------------------------------------------------------------
# Shape, dtype and zero-initialized output.


def test_fresh_network_output_is_exactly_zero(cond_net):
    x, t = _inputs(cond_net.data_shape, 3, 2)
    y = jnp.array([0, 1, NUM_CLASSES], jnp.int32)
    out = cond_net(x, t, y, t / 2, params=cond_net.fresh)
    assert out.shape == x.shape and out.dtype == jnp.float32
    # EDM / DDPM++ zero-init output layer (DiT: adaLN-Zero): the untrained network is exactly 0.
    np.testing.assert_array_equal(np.asarray(out), 0.0)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(cond_net.fresh))


IMAGE_CASES = [
    ("16x16x3", dict(channels=16, channel_mult=(1, 2, 2), attn_resolutions=(8,)), (16, 16, 3), 2),
    ("32x32x3", dict(channels=16, channel_mult=(1, 2, 2), attn_resolutions=(16,)), (32, 32, 3), 2),
    ("64x64x3", dict(channels=8, channel_mult=(1, 1, 2, 2), attn_resolutions=(8,)), (64, 64, 3), 1),
    # sCM adaptive double normalization (the cases above use the default 'adaptive_scale').
    ("16x16x3_double", dict(channels=16, channel_mult=(1, 2, 2), attn_resolutions=(8,),
                            emb_norm="adaptive_double"), (16, 16, 3), 2),
    # EDM's DDPM++ topology (resampling residual blocks, last-block decoder attention), here with
    # MeanFlow's [1, 3, 3, 1] resampling filter.
    ("16x16x3_ddpmpp", dict(recipes.ddpmpp_unet(
        channels=16, channel_mult=(1, 2, 2), attn_resolutions=(8,), resample_filter=(1, 3, 3, 1), dropout=0.0,
        num_blocks=1)), (16, 16, 3), 2),
]


@pytest.mark.parametrize("cfg,data_shape,batch", [c[1:] for c in IMAGE_CASES],
                         ids=[c[0] for c in IMAGE_CASES])
def test_unet_image_sizes_shape_and_dtype(cfg, data_shape, batch):
    """Every supported size runs end to end (zero-init itself is pinned on the 8x8 net above)."""
    net = _build(dict(dict(name="unet", num_blocks=1), **cfg), data_shape, num_classes=10)
    x, t = _inputs(data_shape, batch, 3)
    y = jnp.arange(batch, dtype=jnp.int32)
    params = _random_params(net, x, t, y)
    assert all(p.dtype == np.float32 for p in jax.tree.leaves(params))
    out = _jit(net.apply)({"params": params}, x, t, y)
    assert out.shape == x.shape and out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out))) and float(jnp.abs(out).max()) > 0


def test_bfloat16_compute_returns_float32():
    mlp = _build(MLP_SMALL, (2,), dtype="bfloat16")
    x, t = _inputs((2,), 4, 4)
    params = _perturb(_jit(mlp.init)(_key(0), x, t)["params"], seed=1)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    out = _jit(mlp.apply)({"params": params}, x, t)
    assert out.dtype == jnp.float32 and out.shape == x.shape
    assert bool(jnp.all(jnp.isfinite(out))) and float(jnp.abs(out).max()) > 0
    # The UNet is only traced (abstract evaluation) to keep the file fast: bf16 convs compile
    # slowly on CPU. This still checks dtypes flow and the output is float32.
    unet = _build(UNET_SMALL, (8, 8, 1), dtype="bfloat16")
    x, t = _inputs((8, 8, 1), 2, 5)
    shapes = jax.eval_shape(unet.init, _key(0), x, t)
    assert all(s.dtype == jnp.float32 for s in jax.tree.leaves(shapes))
    out = jax.eval_shape(unet.apply, shapes, x, t)
    assert out.dtype == jnp.float32 and out.shape == x.shape


# --------------------------------------------------------------------------------------------
# Conditioning on t, y (with the NULL class) and d, with perturbed (non-zero) parameters.


def test_output_depends_on_t_y_and_d(cond_net):
    batch = 3
    x, t = _inputs(cond_net.data_shape, batch, 6)
    y = jnp.array([0, 1, 2], jnp.int32)
    d = jnp.full((batch,), 0.25)
    base = cond_net(x, t, y, d)
    assert bool(jnp.all(jnp.isfinite(base)))

    def differs(other):  # every example must change
        diff = jnp.abs(other - base).reshape(batch, -1).max(axis=1)
        return bool(jnp.all(diff > 1e-4))

    assert differs(cond_net(x, t + 0.3, y, d)), "output does not depend on t"
    assert differs(cond_net(x, t, jnp.full((batch,), NUM_CLASSES, jnp.int32), d)), "label vs null"
    assert differs(cond_net(x, t, (y + 1) % NUM_CLASSES, d)), "output does not depend on y"
    assert differs(cond_net(x, t, y, d + 0.5)), "output does not depend on d"
    assert differs(cond_net(x + 0.5, t, y, d)), "output does not depend on x"


def test_y_none_is_null_class_and_d_none_is_zero(cond_net):
    """Also runs eval mode of a dropout network without any rng, as samplers will."""
    x, t = _inputs(cond_net.data_shape, 3, 7)
    null = jnp.full((3,), NUM_CLASSES, jnp.int32)
    implicit = _jit(cond_net.net.apply)({"params": cond_net.params}, x, t)
    np.testing.assert_array_equal(implicit, cond_net(x, t, null, jnp.zeros(3)))


def test_dropout_only_in_train_and_keyed(cond_net):
    x, t = _inputs(cond_net.data_shape, 3, 8)
    y = jnp.array([0, 1, NUM_CLASSES], jnp.int32)
    d = jnp.zeros(3)
    eval_a = cond_net(x, t, y, d, train=False, seed=1)
    np.testing.assert_array_equal(eval_a, cond_net(x, t, y, d, train=False, seed=2))
    train_a = cond_net(x, t, y, d, train=True, seed=1)
    np.testing.assert_array_equal(train_a, cond_net(x, t, y, d, train=True, seed=1))
    train_b = cond_net(x, t, y, d, train=True, seed=2)
    assert float(jnp.abs(train_a - train_b).max()) > 1e-4
    assert float(jnp.abs(train_a - eval_a).max()) > 1e-4


def test_batch_independence(cond_net):
    """GroupNorm (UNet) and LayerNorm (DiT) are per example and attention stays within an
    example: example i's output ignores the rest of the batch."""
    x, t = _inputs(cond_net.data_shape, 3, 9)
    y = jnp.array([0, 1, 2], jnp.int32)
    d = jnp.array([0.0, 0.1, 0.2])
    full = cond_net(x, t, y, d)
    # Changing the other examples (scaled inputs, other times/labels) leaves example 0 unchanged.
    others = cond_net(x.at[1:].multiply(10.0), t.at[1:].set(0.01), y.at[1:].set(NUM_CLASSES), d)
    atol = cond_net.atol(full)
    np.testing.assert_allclose(others[0], full[0], rtol=1e-5, atol=atol)
    # And the batch equals the single-example forward.
    single = _jit(cond_net.net.apply)({"params": cond_net.params}, x[1:2], t[1:2], y[1:2], d[1:2])
    np.testing.assert_allclose(full[1:2], single, rtol=1e-5, atol=atol)


def test_grad_reaches_every_parameter(cond_net):
    x, t = _inputs(cond_net.data_shape, 3, 10)
    y = jnp.array([0, 1, 2], jnp.int32)

    def loss(params):
        return jnp.mean(cond_net.net.apply({"params": params}, x, t, y, t / 2) ** 2)

    value, grads = _jit(jax.value_and_grad(loss))(cond_net.params)
    assert np.isfinite(float(value))
    dead = [jax.tree_util.keystr(path) for path, g in jax.tree_util.tree_leaves_with_path(grads)
            if not float(jnp.abs(g).max()) > 0]
    assert dead == [], dead


# --------------------------------------------------------------------------------------------
# Forward-mode AD: what consistency models / MeanFlow differentiate.


def test_jvp_matches_central_difference_float64(cond_net):
    """jax.jvp w.r.t. (x, t) equals a central finite difference in float64 (sCM sec. 4.1 needs the
    tangent dF/dt through attention and GroupNorm)."""
    _assert_jvp_matches_central_difference(cond_net.cfg, cond_net.data_shape, cond_net.params)


def test_adaptive_double_jvp_matches_central_difference_float64():
    """The same check through pnorm(s(emb)), pnorm(b(emb)) (sCM sec. 4.1 adaptive double norm)."""
    cfg = {**UNET_SMALL, "emb_norm": "adaptive_double"}
    net = _build(cfg, (8, 8, 1), num_classes=NUM_CLASSES, use_d=True)
    x, t = _inputs((8, 8, 1), 2, 11)
    params = _random_params(net, x, t, jnp.zeros(2, jnp.int32), t, seed=16)
    assert "emb_scale" in params["mid_res_0"] and "emb_proj" not in params["mid_res_0"]
    _assert_jvp_matches_central_difference(cfg, (8, 8, 1), params)


def _assert_jvp_matches_central_difference(cfg: dict, data_shape, params) -> None:
    """jvp of a use_d, class-conditional float64 build of `cfg` (float32 `params` cast up) along
    random (vx, vt) vs a central difference with step 1e-5; relative L2 error < 1e-6."""
    with jax.enable_x64(True):
        net = _build(cfg, data_shape, num_classes=NUM_CLASSES, use_d=True, dtype="float64")
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
            # Both finite-difference points in one batched call (the network is per example).
            both = f(jnp.concatenate([x + eps * vx, x - eps * vx]),
                     jnp.concatenate([t + eps * vt, t - eps * vt]),
                     jnp.concatenate([y, y]), jnp.concatenate([d, d]))
            fd = (both[:2] - both[2:]) / (2 * eps)
            return out, tangent, fd

        out, tangent, fd = tangent_and_difference(params, x, t, vx, vt)
        assert out.dtype == jnp.float64 and tangent.shape == x.shape
        norm = float(jnp.linalg.norm(tangent))
        assert norm > 0
        rel = float(jnp.linalg.norm(tangent - fd)) / norm
        assert rel < 1e-6, rel


# --------------------------------------------------------------------------------------------
# sCM (Lu & Song 2024) sec. 4.1 adaptive double normalization: GN(h) * pnorm(s(emb)) + pnorm(b(emb)).


_EMB_PROJECTIONS = {"adaptive_scale": ("emb_proj",), "adaptive_double": ("emb_scale", "emb_shift")}


@pytest.mark.parametrize("emb_norm", ["adaptive_scale", "adaptive_double"])
def test_emb_norm_scale_invariance_of_embedding_projections(emb_norm):
    """Multiplying the kernel and bias of every embedding projection by c = 7 leaves the
    'adaptive_double' output unchanged (pnorm(c a) = pnorm(a)) and changes the 'adaptive_scale'
    one. For 'adaptive_double', other values of the projections must still change the output
    (so the invariance is not just the projections being unused)."""
    net = _build(UNET_SMALL, (8, 8, 1), emb_norm=emb_norm)
    x, t = _inputs((8, 8, 1), 2, 17)
    params = _random_params(net, x, t, seed=18)
    names = _EMB_PROJECTIONS[emb_norm]
    blocks = [k for k in params if "_res_" in k]
    assert len(blocks) == 8  # enc 2 x 1, mid 2, dec 2 x 2
    for block in blocks:  # every ResBlock has exactly the projections of its emb_norm
        assert {n for n in params[block] if n.startswith("emb_")} == set(names), params[block]

    def map_projections(fn):
        return jax.tree_util.tree_map_with_path(
            lambda path, p: fn(p) if any(getattr(k, "key", None) in names for k in path) else p,
            params,
        )

    apply = _jit(net.apply)
    base = apply({"params": params}, x, t)
    assert base.shape == x.shape and base.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(base))) and float(jnp.abs(base).max()) > 1e-2
    scaled = apply({"params": map_projections(lambda p: 7.0 * p)}, x, t)
    assert bool(jnp.all(jnp.isfinite(scaled)))
    if emb_norm == "adaptive_double":
        np.testing.assert_allclose(scaled, base, rtol=1e-5, atol=1e-5)
        # Sign flip: pnorm(-a) = -pnorm(a), a different modulation.
        flipped = apply({"params": map_projections(lambda p: -p)}, x, t)
        assert float(jnp.abs(flipped - base).max()) > 1e-3
    else:
        assert float(jnp.abs(scaled - base).max()) > 1e-3


def test_pixel_norm():
    a = jnp.array([[3.0, -4.0], [0.0, 0.0]], jnp.bfloat16)
    out = layers.pixel_norm(a)
    assert out.dtype == jnp.float32  # statistics in float32
    np.testing.assert_allclose(out[0], np.array([3.0, -4.0]) / np.sqrt(12.5), rtol=1e-6)
    np.testing.assert_array_equal(out[1], 0.0)
    np.testing.assert_allclose(layers.pixel_norm(7.0 * a), out, rtol=1e-6)


def test_attention_matches_reference_and_is_jvp_safe():
    kq, kk, kv = jax.random.split(_key(15), 3)
    q = jax.random.normal(kq, (2, 5, 3, 4))
    k = jax.random.normal(kk, (2, 7, 3, 4))
    v = jax.random.normal(kv, (2, 7, 3, 4))
    ref = _jit(partial(jax.nn.dot_product_attention, implementation="xla"))(q, k, v)
    np.testing.assert_allclose(_jit(layers.attention)(q, k, v), ref, rtol=1e-5, atol=1e-5)
    _, tan = _jit(lambda *a: jax.jvp(layers.attention, a, a))(q, k, v)
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
    # EDM's GroupNorm: min(32, C // 4) groups.
    assert [layers.group_count(c, 32, 4) for c in (8, 16, 24, 128, 256)] == [2, 4, 6, 32, 32]


def test_resample_matches_pooling_nearest_and_the_fir_definition():
    """layers.resample against closed forms: filter [1, 1] is 2x2 average pooling / nearest x2;
    [1, 3, 3, 1] is the separable strided correlation / transposed convolution written out."""
    x = np.random.default_rng(0).standard_normal((2, 6, 6, 3))
    down = np.asarray(layers.resample(jnp.asarray(x), "down"))
    np.testing.assert_allclose(down, x.reshape(2, 3, 2, 3, 2, 3).mean(axis=(2, 4)), rtol=1e-5, atol=1e-6)
    up = np.asarray(layers.resample(jnp.asarray(x), "up"))
    np.testing.assert_allclose(up, x.repeat(2, axis=1).repeat(2, axis=2), rtol=1e-6)
    np.testing.assert_array_equal(layers.resample(jnp.asarray(x), "keep"), jnp.asarray(x))
    f = np.array([1.0, 3.0, 3.0, 1.0]) / 8.0

    def down_1d(v, axis):  # y[i] = sum_k f[k] v[2i + k - 1], zero outside
        v = np.moveaxis(v, axis, 0)
        out = np.zeros((v.shape[0] // 2, *v.shape[1:]))
        for i in range(out.shape[0]):
            for k in range(4):
                j = 2 * i + k - 1
                if 0 <= j < v.shape[0]:
                    out[i] += f[k] * v[j]
        return np.moveaxis(out, 0, axis)

    def up_1d(v, axis):  # transposed: v[i] adds 2 f[k] into y[2i + k - 1]
        v = np.moveaxis(v, axis, 0)
        out = np.zeros((2 * v.shape[0], *v.shape[1:]))
        for i in range(v.shape[0]):
            for k in range(4):
                o = 2 * i + k - 1
                if 0 <= o < out.shape[0]:
                    out[o] += 2 * f[k] * v[i]
        return np.moveaxis(out, 0, axis)

    got = layers.resample(jnp.asarray(x), "down", (1, 3, 3, 1))
    np.testing.assert_allclose(got, down_1d(down_1d(x, 1), 2), rtol=1e-5, atol=1e-6)
    got = layers.resample(jnp.asarray(x), "up", (1, 3, 3, 1))
    np.testing.assert_allclose(got, up_1d(up_1d(x, 1), 2), rtol=1e-5, atol=1e-6)


def _fir_matrix(n: int, fir, mode: str, pad: int) -> np.ndarray:
    """The 1-D resampling of a length-n signal as a dense float64 matrix, from the definitions:
    down y[i] = sum_k f[k] v[2 i + k - pad]; up (the transposed map) v[i] adds 2 f[k] into
    y[2 i + k - pad]; f = fir / sum(fir), zero outside the signal."""
    f = np.asarray(fir, np.float64) / np.sum(fir)
    if mode == "down":
        m = np.zeros(((n + 2 * pad - len(f)) // 2 + 1, n))
        for i in range(m.shape[0]):
            for k, tap in enumerate(f):
                if 0 <= 2 * i + k - pad < n:
                    m[i, 2 * i + k - pad] += tap
        return m
    m = np.zeros((2 * n + len(f) - 2 - 2 * pad, n))
    for i in range(n):
        for k, tap in enumerate(f):
            if 0 <= 2 * i + k - pad < m.shape[0]:
                m[2 * i + k - pad, i] += 2 * tap
    return m


@pytest.mark.parametrize(
    "mode, fir, padding",
    [("down", (1, 1), None), ("up", (1, 1), None), ("down", (1, 3, 3, 1), None), ("up", (1, 3, 3, 1), None),
     ("down", (1, 3, 3, 1), 0), ("down", (2, 1, 1, 3), None), ("up", (1, 2), None)],
)
def test_resample_and_its_gradient_match_the_dense_float64_operator(mode, fir, padding):
    """resample(x) = M x M^T per channel and its vjp is g -> M^T g M, with M the 1-D operator
    written out in float64 (_fir_matrix); also non-symmetric filters, odd sizes and padding=0."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 7, 7, 3)).astype(np.float32)
    pad = (len(fir) - 1) // 2 if padding is None else padding
    m = _fir_matrix(7, fir, mode, pad)
    want = np.einsum("ih,bhwc,jw->bijc", m, x.astype(np.float64), m)
    got, vjp = jax.vjp(lambda v: layers.resample(v, mode, fir, padding), jnp.asarray(x))
    assert got.shape == want.shape and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    g = rng.standard_normal(want.shape)
    (grad,) = vjp(jnp.asarray(g, jnp.float32))
    np.testing.assert_allclose(np.asarray(grad), np.einsum("ih,bijc,jw->bhwc", m, g, m), rtol=1e-5, atol=1e-6)
    # A tangent pushes forward through the same linear map; bfloat16 stays bfloat16.
    _, tangent = jax.jvp(lambda v: layers.resample(v, mode, fir, padding), (jnp.asarray(x),), (jnp.asarray(x),))
    np.testing.assert_allclose(np.asarray(tangent), want, rtol=1e-5, atol=1e-6)
    assert layers.resample(jnp.asarray(x, jnp.bfloat16), mode, fir, padding).dtype == jnp.bfloat16


def _np_conv_taps(x, stride, pad, kernel_shape):
    """float64 views x_pad[:, s h + i, s w + j, :] per tap (i, j) of a NHWC input."""
    xp = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw = kernel_shape
    out_h, out_w = (xp.shape[1] - kh) // stride + 1, (xp.shape[2] - kw) // stride + 1
    return {
        (i, j): xp[:, i : i + stride * out_h : stride, j : j + stride * out_w : stride]
        for i in range(kh)
        for j in range(kw)
    }


def _np_conv(x, w, stride, pad):
    taps = _np_conv_taps(x, stride, pad, w.shape[:2])
    return sum(np.einsum("bhwc,co->bhwo", t, w[i, j]) for (i, j), t in taps.items())


def _np_conv_kernel_grad(x, g, stride, pad, kernel_shape):
    taps = _np_conv_taps(x, stride, pad, kernel_shape)
    out = np.zeros((*kernel_shape, x.shape[-1], g.shape[-1]))
    for (i, j), t in taps.items():
        out[i, j] = np.einsum("bhwc,bhwo->co", t, g)
    return out


def _np_conv_input_grad(g, w, stride, pad, x_shape):
    b, h, wd, c = x_shape
    gp = np.zeros((b, h + 2 * pad, wd + 2 * pad, c))
    for i in range(w.shape[0]):
        for j in range(w.shape[1]):
            gp[:, i : i + stride * g.shape[1] : stride, j : j + stride * g.shape[2] : stride] += np.einsum(
                "bhwo,co->bhwc", g, w[i, j]
            )
    return gp[:, pad : pad + h, pad : pad + wd]


@pytest.mark.parametrize("kernel, stride, pad", [(3, 1, 1), (1, 1, 0), (3, 2, 1), (4, 1, 2)])
def test_conv_and_its_derivatives_match_float64_formulas(kernel, stride, pad):
    """layers.conv_general_dilated (the convolution whose kernel gradient is computed by per-tap
    matmuls on a CPU) against float64 numpy: value, gradient w.r.t. input and kernel, and the
    MeanFlow pattern, a jvp in the input followed by a gradient in the kernel:
    d/dW sum(conv(x, W) * conv(v, W)) = K(x, conv(v, W)) + K(v, conv(x, W)), K the kernel gradient."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 7, 7, 3)).astype(np.float32)
    v = rng.standard_normal(x.shape).astype(np.float32)
    w = rng.standard_normal((kernel, kernel, 3, 4)).astype(np.float32)
    dims = ("NHWC", "HWIO", "NHWC")

    def conv(x, w):
        return layers.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)), dimension_numbers=dims)

    y = _np_conv(x, w, stride, pad)
    np.testing.assert_allclose(np.asarray(conv(jnp.asarray(x), jnp.asarray(w))), y, rtol=1e-5, atol=1e-5)
    g = rng.standard_normal(y.shape)
    _, vjp = jax.vjp(conv, jnp.asarray(x), jnp.asarray(w))
    gx, gw = vjp(jnp.asarray(g, jnp.float32))
    np.testing.assert_allclose(np.asarray(gx), _np_conv_input_grad(g, w, stride, pad, x.shape), rtol=1e-5, atol=1e-5)
    want_gw = _np_conv_kernel_grad(x, g, stride, pad, w.shape[:2])
    np.testing.assert_allclose(np.asarray(gw), want_gw, rtol=1e-5, atol=1e-4)

    def meanflow_like(w):
        out, tangent = jax.jvp(lambda x: conv(x, w), (jnp.asarray(x),), (jnp.asarray(v),))
        return jnp.sum(out * tangent)

    want = _np_conv_kernel_grad(x, _np_conv(v, w, stride, pad), stride, pad, w.shape[:2])
    want += _np_conv_kernel_grad(v, y, stride, pad, w.shape[:2])
    np.testing.assert_allclose(np.asarray(jax.grad(meanflow_like)(jnp.asarray(w))), want, rtol=1e-5, atol=1e-3)


def _primitive_counts(jaxpr, counts=None, prefix: str = "") -> dict:
    """How often each primitive is called in a jaxpr, sub-jaxprs (scan bodies, custom_jvp and
    checkpoint calls) entered at every call site; what a custom_jvp function calls is counted
    as "custom_jvp_call/<primitive>"."""
    counts = {} if counts is None else counts
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        counts[prefix + name] = counts.get(prefix + name, 0) + 1
        inner = "custom_jvp_call/" if name == "custom_jvp_call" else prefix
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    _primitive_counts(sub, counts, inner)
    return counts


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the row-wise kernel gradient is CPU-only")
def test_every_unet_convolution_takes_the_row_wise_kernel_gradient_on_a_cpu():
    """The values above cannot tell the fast path from lax.conv's own, so check the structure,
    in the DDPM++ layout (resampling residual blocks, 1x1 skips): every convolution of the
    forward pass is inside the custom_jvp function, once per kernel; the gradient takes lax.conv
    only for values and input gradients (at most 2 per kernel, where lax.conv's own rule adds a
    third, the kernel gradient) and loops over kernel rows (a scan per kernel of height > 1).
    A flax change that passed the padding as a string, or a layer built without the function,
    fails here."""
    cfg = dict(recipes.ddpmpp_unet(), channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(8,))
    net = _build(cfg, (8, 8, 3))
    x, t = jnp.zeros((2, 8, 8, 3)), jnp.full((2,), 0.5)
    params = jax.eval_shape(partial(net.init, train=False), jax.random.key(0), x, t)  # shapes suffice to trace
    kernels = [
        leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)
        if "kernel" in jax.tree_util.keystr(path) and leaf.ndim == 4
    ]
    assert len(kernels) > 10
    forward = _primitive_counts(jax.make_jaxpr(lambda p: net.apply(p, x, t, train=False))(params).jaxpr)
    assert forward.get("custom_jvp_call/conv_general_dilated", 0) == len(kernels)
    assert "conv_general_dilated" not in forward  # no convolution outside the custom_jvp function
    loss = lambda p: jnp.sum(net.apply(p, x, t, train=False) ** 2)
    grad = _primitive_counts(jax.make_jaxpr(jax.grad(loss))(params).jaxpr)
    assert grad["conv_general_dilated"] <= 2 * len(kernels)
    assert grad["scan"] >= sum(k.shape[0] > 1 for k in kernels)


def _analytic_ddpmpp_params(channels: int, mult, blocks: int, attn, res: int, img: int) -> int:
    """Parameter count of EDM's DDPM++ (SongUNet) as described (independent of the Flax code):
    biased 3x3 / 1x1 convs, GroupNorm scale + bias, one embedding Linear per block (no adaptive
    scale), 1x1 skip projections in every resampling block, single-head attention."""
    emb = 4 * channels
    total = (channels * emb + emb) + (emb * emb + emb)  # map_layer0 / map_layer1 of the noise embedding

    def block(cin, cout, resample=False, attention=False):
        n = 2 * cin + (9 * cin * cout + cout) + (emb * cout + cout) + 2 * cout + (9 * cout * cout + cout)
        if cin != cout or resample:
            n += cin * cout + cout
        if attention:
            n += 2 * cout + (3 * cout * cout + 3 * cout) + (cout * cout + cout)
        return n

    total += 9 * img * channels + channels
    skips, c = [channels], channels
    for level, m in enumerate(mult):
        r = res >> level
        if level:
            total += block(c, c, resample=True)
            skips.append(c)
        for _ in range(blocks):
            total += block(c, channels * m, attention=r in attn)
            c = channels * m
            skips.append(c)
    for level in reversed(range(len(mult))):
        r = res >> level
        total += block(c, c, attention=True) + block(c, c) if level == len(mult) - 1 else block(c, c, resample=True)
        for i in range(blocks + 1):
            cin, c = c + skips.pop(), channels * mult[level]
            total += block(cin, c, attention=i == blocks and r in attn)
    return total + 2 * c + (9 * c * img + img)


def test_ddpmpp_parameter_count_matches_edm():
    """EDM's DDPM++ for unconditional CIFAR-10 (recipes.ddpmpp_unet): 55.7M parameters (EDM,
    App. F.2); measured 55,732,739 from shapes."""
    net = _build(dict(recipes.ddpmpp_unet()), (32, 32, 3))
    x, t = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32), jax.ShapeDtypeStruct((1,), jnp.float32)
    shapes = jax.eval_shape(net.init, _key(0), x, t)["params"]
    count = models.count_params(shapes)
    assert count == _analytic_ddpmpp_params(128, (2, 2, 2), 4, (16,), 32, 3)
    assert abs(count - 55.7e6) / 55.7e6 < 0.005, count
    # Decoder attention only on each level's last block; resampling blocks with a skip projection.
    assert [k for k in shapes if k.startswith("dec_1_attn")] == ["dec_1_attn_4"]
    assert "skip" in shapes["enc_0_down"] and "skip" in shapes["dec_1_up"]


def test_label_embedding_null_row_and_invalid_ids():
    emb = layers.LabelEmbedding(num_classes=3, features=4)
    variables = emb.init(_key(0), jnp.array([0], jnp.int32))
    assert variables["params"]["embedding"].shape == (4, 4)  # 3 classes + NULL
    out = np.asarray(emb.apply(variables, jnp.array([0, 3, 4, -1], jnp.int32)))
    np.testing.assert_array_equal(out[1], np.asarray(variables["params"]["embedding"][3]))
    assert np.isfinite(out[:2]).all() and np.isnan(out[2:]).all()


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
        (dict(name="unet", emb_norm="adaptive"), (8, 8, 1),
         r"emb_norm must be one of \['adaptive_scale', 'adaptive_double', 'additive'\], got 'adaptive'"),
        (dict(name="mlp", emb_norm="adaptive_double"), (2,), r"unknown key\(s\) \['emb_norm'\]"),
    ],
    ids=["name", "unet_typo", "mlp_typo", "resolution", "nonsquare", "unet_rank", "mlp_rank",
         "attn_res", "dropout", "dtype", "heads", "emb_norm", "mlp_emb_norm"],
)
def test_build_validation_errors(cfg, data_shape, match):
    with pytest.raises(ValueError, match=match):
        _build(cfg, data_shape)


def test_unet_module_rejects_unknown_emb_norm():
    """Direct construction (bypassing `build`) fails at trace time with the same message."""
    unet = models.UNet(channels=8, channel_mult=(1,), num_blocks=1, emb_norm="double")
    with pytest.raises(ValueError, match=r"emb_norm must be one of .*'adaptive_double'"):
        jax.eval_shape(unet.init, _key(0), jnp.zeros((1, 4, 4, 1)), jnp.zeros(1))


def test_passing_d_without_use_d_raises():
    net = _build(MLP_SMALL, (2,))
    params = _jit(net.init)(_key(0), jnp.zeros((2, 2)), jnp.zeros(2))["params"]
    with pytest.raises(ValueError, match="use_d=False"):
        net.apply({"params": params}, jnp.zeros((2, 2)), jnp.zeros(2), d=jnp.zeros(2))
    unet = _build(UNET_SMALL, (8, 8, 1))
    x, t = jnp.zeros((2, 8, 8, 1)), jnp.zeros(2)
    shapes = jax.eval_shape(unet.init, _key(0), x, t)
    with pytest.raises(ValueError, match="use_d=False"):
        jax.eval_shape(partial(unet.apply, d=t), shapes, x, t)


def test_unconditional_net_ignores_labels_and_has_no_table():
    net = _build(MLP_SMALL, (2,), num_classes=0)
    x, t = _inputs((2,), 2, 13)
    params = _jit(net.init)(_key(0), x, t)["params"]
    assert "label" not in params["cond"]
    params = _perturb(params, seed=1)
    apply = _jit(net.apply)
    np.testing.assert_array_equal(apply({"params": params}, x, t, jnp.array([0, 1])),
                                  apply({"params": params}, x, t))


def test_label_table_has_null_row():
    net = _build(UNET_SMALL, (8, 8, 1), num_classes=10)
    shapes = jax.eval_shape(net.init, _key(0), jnp.zeros((1, 8, 8, 1)), jnp.zeros(1))
    assert shapes["params"]["cond"]["label"]["embedding"].shape[0] == 11
