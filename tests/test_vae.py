"""The Flax AutoencoderKL (models/vae.py) against diffusers' PyTorch AutoencoderKL, and its loader.

Parity: both sides run the same random weights (tests/vae_golden.py, `random_state_dict`); the
golden outputs are diffusers' float64 results (tests/fixtures/vae/golden.npz). Errors are
max |ours - reference| / RMS(reference). Float64 must agree to 1e-10 (rounding only), float32
with Precision.HIGHEST to 1e-4; bfloat16 is held to a measured bound against float32.
"""

from __future__ import annotations

import functools
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import vae_golden as golden

from fewstep_jax.data.formats import LOGVAR_RANGE
from fewstep_jax.metrics import torch_pickle
from fewstep_jax.models import vae

FILES = {
    "current": f"{golden.FIXTURES}/tiny_current.safetensors",
    "legacy": f"{golden.FIXTURES}/tiny_legacy.safetensors",
    "ldm": f"{golden.FIXTURES}/tiny_ldm.ckpt",
}
TOLERANCE = {"float64": 1e-10, "float32": 1e-4}
#: bfloat16 vs float32 on the reduced network with the random weights, as (max |d|, RMS(d)) / RMS(fp32).
#: Measured (x86-64 CPU, the three golden images): moments 0.027-0.039 / 0.009-0.012, decode
#: 0.11-0.13 / 0.018-0.021 (bfloat16 keeps 8 significant bits, a 2^-9 relative rounding per
#: operation, over ~40 layers and a bfloat16 residual stream). Bounds: about 2x the measurements.
BF16_BOUND = {"moments": (0.08, 0.025), "decode": (0.25, 0.04)}
#: Parity tests compile many small programs: LLVM optimization level 0 halves XLA's compile time on
#: CPU and changes no result beyond float rounding (the production path compiles normally).
FAST_COMPILE = {"xla_backend_optimization_level": 0}


@pytest.fixture(scope="module")
def ref():
    with np.load(golden.GOLDEN, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def params():
    return vae.load_params(FILES["legacy"], vae.TINY)


def relative_error(ours, reference) -> float:
    reference = np.asarray(reference, np.float64)
    rms = np.sqrt(np.mean(reference**2))
    assert rms > 1e-3, "a degenerate reference cannot tell a wrong network apart"
    return float(np.abs(np.asarray(ours, np.float64) - reference).max() / rms)


def block(intermediates, name: str):
    """'encoder.down_blocks.1' -> the array the network sowed there."""
    node = intermediates
    for part in name.replace("_blocks.", "_blocks_").split("."):
        node = node[part]
    return node["output"][0]


@functools.cache
def compiled(config, dtype: str, method: str):
    """A jitted encode or decode returning (output, intermediates), one per (config, dtype, method)
    so that equal input shapes share one compilation across tests."""
    net = vae.AutoencoderKL(config, dtype=jnp.dtype(dtype))

    def fn(params, x):
        out, state = net.apply({"params": params}, x, method=method, mutable=["intermediates"])
        return out, state["intermediates"]

    return jax.jit(fn, compiler_options=FAST_COMPILE)


def run(config, params, dtype: str, method: str, x):
    """encode / decode x in `dtype` (float64 needs jax.enable_x64 around the call)."""
    return compiled(config, dtype, method)(params, x)


# ---------------------------------------------------------------------------
# Layout and size


def test_state_dict_layout_equals_diffusers(ref):
    """Every name and PyTorch shape, reduced and full size, as diffusers' AutoencoderKL builds them."""
    assert vae.state_dict_shapes(vae.TINY) == golden.layout(ref, "tiny")
    assert vae.state_dict_shapes(vae.SD_KL_F8) == golden.layout(ref, "full")


def test_kl_f8_parameter_count():
    """83,653,863 parameters in 248 tensors (108 on the encoder side), counted with eval_shape."""
    shapes = vae.param_shapes(vae.SD_KL_F8)
    per_part = {}
    for path, shape in shapes.items():
        per_part[path[0]] = per_part.get(path[0], 0) + int(np.prod(shape))
    assert per_part == {"encoder": 34_163_592, "quant_conv": 72, "post_quant_conv": 20, "decoder": 49_490_179}
    assert vae.num_params(vae.SD_KL_F8) == 83_653_863
    assert len(shapes) == 248
    assert sum(path[0] in ("encoder", "quant_conv") for path in shapes) == 108


# ---------------------------------------------------------------------------
# Parity with diffusers


@pytest.mark.parametrize("dtype, case", [("float64", 0), ("float64", 1), ("float64", 2), ("float32", 0)])
def test_encode_and_decode_match_diffusers(ref, params, dtype, case):
    """Images [2, 32, 32], [1, 24, 40] and odd [1, 18, 30] (the asymmetric Downsample padding):
    moments, posterior, decode(mean) and four block outputs. float32 on the first only (the
    others add compile time and no new code path)."""
    tol = TOLERANCE[dtype]
    with jax.enable_x64(dtype == "float64"):
        moments, inner = run(vae.TINY, params, dtype, "encode", ref[f"x{case}"].astype(dtype))
        assert moments.dtype == np.dtype(dtype)
        assert relative_error(moments, ref[f"x{case}_moments"]) < tol
        mean, logvar, std = vae.posterior(moments)
        for name, value in (("mean", mean), ("logvar", logvar), ("std", std)):
            assert relative_error(value, ref[f"x{case}_{name}"]) < tol, name
        images, outer = run(vae.TINY, params, dtype, "decode", mean)
        assert relative_error(images, ref[f"x{case}_decode"]) < tol
        for name in golden.ENCODER_BLOCKS:
            assert relative_error(block(inner, name), ref[f"x{case}_{name}"]) < tol, name
        for name in golden.DECODER_BLOCKS:
            assert relative_error(block(outer, name), ref[f"x{case}_{name}"]) < tol, name


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_decode_of_latents_matches_diffusers(ref, params, dtype):
    with jax.enable_x64(dtype == "float64"):
        images, inner = run(vae.TINY, params, dtype, "decode", ref["z"].astype(dtype))
        assert images.shape == (2, 32, 32, 3)
        assert relative_error(images, ref["z_decode"]) < TOLERANCE[dtype]
        for name in golden.DECODER_BLOCKS:
            assert relative_error(block(inner, name), ref[f"z_{name}"]) < TOLERANCE[dtype], name


def test_call_is_decode_of_the_posterior_mean(ref, params):
    net = vae.AutoencoderKL(vae.TINY)
    out = jax.jit(lambda p, x: net.apply({"params": p}, x), compiler_options=FAST_COMPILE)(params, ref["x2"])
    assert out.shape == (1, 16, 24, 3)  # odd sizes are floored by each Downsample: 18x30 -> 2x3 -> 16x24
    assert relative_error(out, ref["x2_decode"]) < 1e-4


def test_posterior_clamps_the_log_variance_like_diffusers(ref):
    """Log-variances drawn in [-60, 40]: clamped to [-30, 20] before std = exp(logvar / 2)."""
    assert LOGVAR_RANGE == (-30.0, 20.0)
    with jax.enable_x64(True):
        mean, logvar, std = vae.posterior(ref["clamp_moments"])
        assert np.array_equal(mean, ref["clamp_mean"]) and np.array_equal(logvar, ref["clamp_logvar"])
        np.testing.assert_allclose(std, ref["clamp_std"], rtol=1e-14)
        assert logvar.min() == -30.0 and logvar.max() == 20.0  # both ends were exercised


def test_sample_posterior_is_mean_plus_std_times_standard_normal(ref):
    key = jax.random.key(3)
    moments = ref["clamp_moments"].astype(np.float32)
    z = vae.sample_posterior(moments, key)
    mean, logvar = np.split(moments.astype(np.float64), 2, axis=-1)
    std = np.exp(0.5 * np.clip(logvar, -30, 20))
    eps = np.asarray(jax.random.normal(key, mean.shape, jnp.float32), np.float64)
    np.testing.assert_allclose(np.asarray(z, np.float64), mean + std * eps, rtol=1e-5, atol=1e-6)


def test_bfloat16_stays_within_the_measured_bound_of_float32(ref, params):
    out = {}
    for dtype in ("float32", "bfloat16"):
        moments, _ = run(vae.TINY, params, dtype, "encode", ref["x0"].astype(np.float32))
        images, _ = run(vae.TINY, params, dtype, "decode", ref["x0_mean"].astype(np.float32))
        assert moments.dtype == images.dtype == jnp.float32  # float32 outputs, also from bfloat16
        out[dtype] = {"moments": np.asarray(moments, np.float64), "decode": np.asarray(images, np.float64)}
    for key, (max_bound, rms_bound) in BF16_BOUND.items():
        fp32, difference = out["float32"][key], out["bfloat16"][key] - out["float32"][key]
        rms = np.sqrt(np.mean(fp32**2))
        assert 1e-4 < np.abs(difference).max() / rms < max_bound, key  # it did run in bfloat16, and stays close
        assert np.sqrt(np.mean(difference**2)) / rms < rms_bound, key


@pytest.mark.slow
def test_full_size_network_matches_diffusers(ref):
    """kl-f8 itself (128..512 channels, 32 groups, 512-wide attention) on one 16x16 image, with the
    weights rebuilt from the seeded rule (not committed)."""
    params = vae.params_from_state_dict(golden.random_state_dict(golden.layout(ref, "full")))
    with jax.enable_x64(True):
        net = vae.AutoencoderKL(vae.SD_KL_F8, dtype=jnp.float64)
        moments = jax.jit(lambda p, x: net.apply({"params": p}, x, method="encode"))(params, ref["full_x"])
        assert relative_error(moments, ref["full_moments"]) < 1e-10
        images = jax.jit(lambda p, x: net.apply({"params": p}, x))(params, ref["full_x"])
        assert relative_error(images, ref["full_decode"]) < 1e-10


# ---------------------------------------------------------------------------
# Loading weight files


def assert_same_params(a, b):
    flat_a, flat_b = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    for (path, x), (_, y) in zip(flat_a, flat_b):
        assert x.dtype == y.dtype == np.float32 and np.array_equal(x, y), path


def test_all_layouts_load_the_same_weights(ref, params):
    """current / legacy spelling, the LDM .ckpt (extras ignored, 1x1-conv attention, reversed
    decoder levels) and the seeded rule itself all give the same tree."""
    for layout in ("current", "ldm"):
        assert_same_params(vae.load_params(FILES[layout], vae.TINY), params)
    assert_same_params(
        vae.params_from_state_dict(golden.random_state_dict(golden.layout(ref, "tiny")), vae.TINY), params
    )


def test_ldm_safetensors_and_full_stable_diffusion_checkpoints(tmp_path, params):
    ldm = torch_pickle.load(FILES["ldm"])
    assert any(k.startswith("loss.") for k in ldm) and any(k.startswith("model_ema.") for k in ldm)
    path = str(tmp_path / "vae-ft-mse-840000-ema-pruned.safetensors")
    safetensors.numpy.save_file(ldm, path)
    assert_same_params(vae.load_params(path, vae.TINY), params)
    # A full SD checkpoint: the VAE under first_stage_model., everything else ignored.
    full = {vae.SD_PREFIX + k: v for k, v in ldm.items() if not k.startswith(vae.IGNORED_PREFIXES)}
    full["model.diffusion_model.input_blocks.0.0.weight"] = np.zeros((2, 4, 3, 3), np.float32)
    full["cond_stage_model.transformer.text_model.final_layer_norm.weight"] = np.ones(3, np.float32)
    full["model_ema.decay"] = np.array(0.9999, np.float32)
    path = str(tmp_path / "v1-5-pruned-emaonly.safetensors")
    safetensors.numpy.save_file(full, path)
    assert_same_params(vae.load_params(path, vae.TINY), params)


def test_a_folder_is_searched_for_the_diffusers_file(tmp_path, params):
    shutil.copy(FILES["current"], tmp_path / vae.WEIGHTS_FILENAME)
    assert_same_params(vae.load_params(tmp_path, vae.TINY), params)
    pipeline = tmp_path / "pipeline"
    (pipeline / "vae").mkdir(parents=True)
    shutil.copy(FILES["legacy"], pipeline / "vae" / vae.WEIGHTS_FILENAME)
    assert_same_params(vae.load_params(pipeline, vae.TINY), params)


@pytest.mark.parametrize("dtype", [np.float16, jnp.bfloat16])
def test_half_precision_files_load_as_float32(tmp_path, params, dtype):
    tensors = safetensors.numpy.load_file(FILES["legacy"])
    path = str(tmp_path / "diffusion_pytorch_model.fp16.safetensors")
    safetensors.numpy.save_file({k: v.astype(dtype) for k, v in tensors.items()}, path)
    half = vae.load_params(path, vae.TINY)
    rounded = jax.tree.map(lambda a: a.astype(dtype).astype(np.float32), params)
    assert_same_params(half, rounded)
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(rounded), jax.tree.leaves(params)))


@pytest.mark.parametrize("spelling", vae.SPELLINGS)
def test_save_safetensors_writes_the_diffusers_names(tmp_path, params, spelling):
    path = str(tmp_path / "out.safetensors")
    vae.save_safetensors(params, path, spelling=spelling)
    written = safetensors.numpy.load_file(path)
    original = safetensors.numpy.load_file(FILES[spelling])
    assert sorted(written) == sorted(original)
    for name, value in original.items():
        assert np.array_equal(written[name], value), name


def write_variant(tmp_path, change) -> str:
    """The legacy fixture with `change(tensors)` applied, as a new safetensors file."""
    tensors = safetensors.numpy.load_file(FILES["legacy"])
    change(tensors)
    path = str(tmp_path / "diffusion_pytorch_model.safetensors")
    safetensors.numpy.save_file(tensors, path)
    return path


ATTENTION = "encoder.mid_block.attentions.0"


def _both_spellings(t):
    t[f"{ATTENTION}.to_q.weight"] = t[f"{ATTENTION}.query.weight"]


def _neither_spelling(t):
    for name in [k for k in t if ".attentions.0." in k]:
        del t[name]


def _missing(t):
    del t["decoder.conv_out.bias"]


def _extra(t):
    t["decoder.conv_out.scale"] = np.ones(3, np.float32)


def _wrong_shape(t):
    t["decoder.up_blocks.2.resnets.0.conv_shortcut.weight"] = np.zeros((8, 12, 3, 3), np.float32)


def _all_three(t):
    _missing(t)
    _extra(t)
    _wrong_shape(t)
    for name in [k for k in t if k.startswith("encoder.down_blocks.0.resnets.0.")]:
        del t[name]


def _integer_tensor(t):
    t["quant_conv.bias"] = np.arange(8, dtype=np.int64)


@pytest.mark.parametrize(
    "change, message",
    [
        (_both_spellings, r"both spellings \(legacy \w+.mid_block.attentions.0.\w+.\w+ and current \w+.mid_"),
        (_neither_spelling, "no mid-block attention weights .*diffusion_pytorch_model.safetensors"),
        (_missing, r": 1 missing \(diffusers' current names\) \(decoder.conv_out.bias\)$"),
        (_extra, r": 1 unexpected \(decoder.conv_out.scale\)$"),
        (
            _wrong_shape,
            r"1 mis-shaped or not floating point \(decoder.up_blocks.2.resnets.0.conv_shortcut.weight "
            r"\[8, 12, 3, 3\], expected \[8, 12, 1, 1\]\)$",
        ),
        (_all_three, r": 9 missing .*, \.\.\.\); 1 unexpected \(decoder.conv_out.scale\); 1 mis-shaped"),
        (_integer_tensor, r"1 mis-shaped or not floating point \(quant_conv.bias dtype int64\)"),
    ],
)
def test_wrong_files_fail_with_one_error_naming_the_tensors(tmp_path, change, message):
    path = write_variant(tmp_path, change)
    with pytest.raises(ValueError, match=message) as error:
        vae.load_params(path, vae.TINY)
    assert "\n" not in str(error.value)


def test_the_check_comes_before_any_tensor_is_read():
    """Names and shapes come from the file's header; a wrong file fails without reading data."""
    shapes = {k: (v, "float32") for k, v in vae.state_dict_shapes(vae.TINY).items()}
    shapes["quant_conv.bias"] = ((9,), "float32")

    def read(name):
        raise AssertionError(f"read {name} before the check")

    with pytest.raises(ValueError, match=r"1 mis-shaped .*\(quant_conv.bias \[9\], expected \[8\]\)"):
        vae._params_from_tensors(vae._Tensors(shapes, read), vae.TINY)


def test_weights_of_another_size_are_refused():
    with pytest.raises(ValueError, match=r"block_out_channels=\(128, 256, 512, 512\), 248 tensors\): 242 mis-shaped"):
        vae.load_params(FILES["current"], vae.SD_KL_F8)


def test_unreadable_files_fail_with_a_one_line_error(tmp_path):
    data = open(FILES["current"], "rb").read()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) - 100])
    with pytest.raises(ValueError, match="cannot read VAE weights .*truncated.safetensors as safetensors"):
        vae.load_params(truncated, vae.TINY)
    text = tmp_path / "notes.safetensors"
    text.write_text("these are not weights")
    with pytest.raises(ValueError, match="cannot read VAE weights .*notes.safetensors as safetensors"):
        vae.load_params(text, vae.TINY)
    fake = tmp_path / "model.ckpt"
    fake.write_text("these are not weights either")
    with pytest.raises(ValueError, match="cannot read VAE weights .*model.ckpt as a PyTorch file"):
        vae.load_params(fake, vae.TINY)
    other = tmp_path / "weights.npz"
    np.savez(other, w=np.zeros(3))
    with pytest.raises(ValueError, match="weights.npz: unknown file type; expected diffusion_pytorch_model"):
        vae.load_params(other, vae.TINY)


def test_missing_weights_say_which_file_and_where_to_get_it(tmp_path):
    for path in (tmp_path / "nowhere.safetensors", tmp_path):
        with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model.safetensors from .*sd-vae-ft-mse") as e:
            vae.load_params(path)
        assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------
# The batched front end


def test_vae_front_end_batches_pads_and_matches_the_reference(ref):
    model = vae.VAE.load(FILES["ldm"], vae.TINY, batch_size=2)
    images = np.concatenate([ref["x0"], ref["x0"][:1]]).astype(np.float32)  # 3 images: a padded last batch
    moments = model.encode_moments(images)
    assert moments.shape == (3, 4, 4, 8) and moments.dtype == np.float32
    expected = np.concatenate([ref["x0_moments"], ref["x0_moments"][:1]])
    assert relative_error(moments, expected) < 1e-4
    decoded = model.decode(ref["z"][:1])
    assert decoded.shape == (1, 32, 32, 3) and relative_error(decoded, ref["z_decode"][:1]) < 1e-4


def test_vae_fingerprint_names_the_weights(params):
    a = vae.VAE(params, vae.TINY)
    assert a.fingerprint == vae.VAE.load(FILES["current"], vae.TINY).fingerprint
    changed = jax.tree.map(lambda x: x, params)
    changed["decoder"]["conv_out"]["bias"] = changed["decoder"]["conv_out"]["bias"] + 1e-3
    assert vae.VAE(changed, vae.TINY).fingerprint != a.fingerprint


def test_vae_front_end_refuses_wrong_inputs(params):
    model = vae.VAE(params, vae.TINY)
    with pytest.raises(ValueError, match="float images in"):
        model.encode_moments(np.zeros((1, 16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match=r"look like \[0, 255\] pixels"):
        model.encode_moments(np.full((1, 16, 16, 3), 200.0, np.float32))
    with pytest.raises(ValueError, match="with 4 channels, got shape"):
        model.decode(np.zeros((1, 2, 2, 8), np.float32))
    with pytest.raises(ValueError, match="with 3 channels, got shape"):
        model.encode_moments(np.zeros((0, 16, 16, 3), np.float32))


def test_config_is_checked():
    with pytest.raises(ValueError, match="divisible by norm_groups"):
        vae.VAEConfig(block_out_channels=(8, 12), norm_groups=8)
