"""Importing NVlabs' EDM and EDM2 network pickles (fewstep_jax/models/pretrained/).

The fixtures are real network pickles written by the official code (tests/pretrained_golden.py:
reduced-size EDMPrecond + DDPM++ and EDM2 Precond networks with seeded random weights, pickled as
their training loops do) with the float64 outputs of their full preconditioned forward pass. The
imported networks, run through the suite's own EDM preconditioning (methods/edm.py), must equal
those outputs: float64 to 1e-10 and float32 to 1e-4 of the outputs' RMS (max |difference|).
"""

from __future__ import annotations

import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from fewstep_jax import methods, models
from fewstep_jax.data import DatasetInfo
from fewstep_jax.models import pretrained
from fewstep_jax.models.pretrained import edm, edm2, network_pickle

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "pretrained")
EDM_UNCOND, EDM_COND = "edm-digits-8x8-uncond-vp.pkl", "edm-digits-8x8-cond-vp.pkl"
EDM2_COND, EDM2_LATENT = "edm2-digits-xxs-0000524-0.130.pkl", "edm2-latent8-xxs-uncond-0000262-0.050.pkl"
ALL = (EDM_UNCOND, EDM_COND, EDM2_COND, EDM2_LATENT)


@pytest.fixture(scope="module")
def golden():
    with np.load(os.path.join(FIXTURES, "pretrained_golden.npz")) as g:
        return {k: g[k] for k in g.files}


@pytest.fixture(scope="module")
def imported():
    return {name: pretrained.import_file(os.path.join(FIXTURES, name)) for name in ALL}


def _inputs(golden, name, num_classes):
    x, sigma, labels = golden[f"{name}/x"], golden[f"{name}/sigma"], golden[f"{name}/labels"]
    y = None if labels.size == 0 else np.where(labels < 0, num_classes, labels).astype(np.int32)  # no label: NULL
    return x, sigma, y


def _relative(out, ref) -> float:
    ref = np.asarray(ref, np.float64)
    return float(np.max(np.abs(np.asarray(out, np.float64) - ref)) / np.sqrt(np.mean(ref**2)))


def _method(imp, config=None, dtype="float32"):
    config = config or imp.config()
    net = models.build(
        {**config.model.to_dict(), "dtype": dtype}, data_shape=imp.data_shape, num_classes=imp.num_classes
    )
    info = DatasetInfo(imp.data_name or "files", imp.data_shape, imp.num_classes, 0.5)
    return methods.build(config.method, net, info)


def _cast(params, dtype):
    return jax.tree.map(lambda a: jnp.asarray(a, dtype), params)


@pytest.mark.parametrize("name", ALL)
def test_imported_denoiser_equals_the_reference_float64(golden, imported, name):
    imp = imported[name]
    with jax.enable_x64(True):
        method = _method(imp, dtype="float64")
        x, sigma, y = _inputs(golden, name, imp.num_classes)
        denoised = jax.jit(method.denoise)(_cast(imp.params, jnp.float64), jnp.asarray(x), jnp.asarray(sigma), y)
        assert denoised.dtype == jnp.float64
        assert _relative(denoised, golden[f"{name}/denoised"]) <= 1e-10


@pytest.mark.parametrize("name", (EDM_COND, EDM2_LATENT))
def test_imported_denoiser_equals_the_reference_float32(golden, imported, name):
    imp = imported[name]
    method = _method(imp)
    x, sigma, y = _inputs(golden, name, imp.num_classes)
    denoised = jax.jit(method.denoise)(imp.params, jnp.asarray(x, jnp.float32), jnp.asarray(sigma, jnp.float32), y)
    assert _relative(denoised, golden[f"{name}/denoised"]) <= 1e-4


@pytest.mark.parametrize("name", (EDM_COND, EDM2_COND))
def test_trigflow_conversion_is_exact(golden, imported, name):
    """As a TrigFlow network (as_trigflow: c_noise = ln(sigma_d tan t) / 4, output negated), the
    denoiser f(x_t, t) = cos(t) x_t - sin(t) sigma_d F(x_t / sigma_d, t) at t = arctan(sigma / sigma_d),
    x_t = cos(t) x equals EDM's D(x, sigma) (sCM sec. 3)."""
    imp = imported[name]
    config = pretrained.as_trigflow(imp.config())
    assert config.method.name == "trigflow" and config.model.time_map == "edm_as_trigflow"
    with jax.enable_x64(True):
        method = _method(imp, config, dtype="float64")
        assert method.parameterization == "trigflow"
        x, sigma, y = _inputs(golden, name, imp.num_classes)
        t = np.arctan(sigma / imp.method["sigma_d"])
        x_t = np.cos(t)[:, None, None, None] * x
        f = jax.jit(method.denoise)(_cast(imp.params, jnp.float64), jnp.asarray(x_t), jnp.asarray(t), y)
        assert _relative(f, golden[f"{name}/denoised"]) <= 1e-10


@pytest.mark.parametrize("name", (EDM2_COND, EDM2_LATENT))
def test_edm2_log_variance_head_equals_the_reference(golden, imported, name):
    imp = imported[name]
    u = edm2.logvar(imp.extra["logvar"], golden[f"{name}/sigma"])
    np.testing.assert_allclose(u, golden[f"{name}/logvar"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ALL)
def test_summary_and_sections(golden, imported, name):
    imp = imported[name]
    summary = imp.summary
    assert summary["parameters"] == int(golden[f"{name}/num_params"]) == models.count_params(imp.params)
    assert summary["resolution"] == 8 and imp.data_shape[:2] == (8, 8)
    assert summary["conditional"] == ("uncond" not in name) == (imp.num_classes == 10)
    assert imp.method["name"] == "edm" and imp.method["sigma_d"] == 0.5 and imp.parameterization == "edm"
    if name.startswith("edm2"):
        sigma_rel, kimg = (0.13, 524) if name == EDM2_COND else (0.05, 262)
        assert summary["ema"] == dict(kind="power", sigma_rel=sigma_rel, training_kimg=kimg, source="file name")
        assert summary["stored_dtype"] == "float16" and imp.model["fourier_params"] is True
        assert imp.sampling == dict(sampler="heun", num_steps=32)
    else:
        assert imp.sampling == dict(sampler="heun", num_steps=18)  # EDM Table 2: NFE 35
        assert summary["not_imported"] and "map_augment" in summary["not_imported"][0]
    assert imp.data_name == (None if name == EDM2_LATENT else "digits")


def test_detect_and_family_mismatch():
    assert pretrained.detect(os.path.join(FIXTURES, EDM_COND)) == "edm"
    assert pretrained.detect(os.path.join(FIXTURES, EDM2_LATENT)) == "edm2"
    with pytest.raises(pretrained.PretrainedError, match=r"holds a EDMPrecond network, a 'edm' file; .*--from=edm$"):
        pretrained.import_file(os.path.join(FIXTURES, EDM_COND), "edm2")
    with pytest.raises(pretrained.PretrainedError, match="is a network pickle file; 'dit' reads torch save files"):
        pretrained.import_file(os.path.join(FIXTURES, EDM_COND), "dit")


# ---------------------------------------------------------------------------- bad files


def _patched(tmp_path, name, old: bytes, new: bytes):
    """The fixture with every `old` replaced by `new` (same length: the pickle stays valid)."""
    assert len(old) == len(new)
    data = open(os.path.join(FIXTURES, name), "rb").read()
    assert old in data
    path = tmp_path / name
    path.write_bytes(data.replace(old, new))
    return str(path)


def _one_line_error(path, match):
    with pytest.raises(pretrained.PretrainedError, match=match) as info:
        pretrained.import_file(path)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_truncated_file(tmp_path):
    data = open(os.path.join(FIXTURES, EDM_UNCOND), "rb").read()
    path = tmp_path / EDM_UNCOND
    path.write_bytes(data[: len(data) * 3 // 5])
    _one_line_error(str(path), f"{EDM_UNCOND} is not a readable pickle")


@pytest.mark.parametrize(
    "name, old, new, match",
    [
        (EDM_UNCOND, b"EDMPrecond", b"EDMPrecXnd", r"unknown network class 'EDMPrecXnd' under 'ema'; importable: "),
        (EDM_UNCOND, b"SongUNet", b"SongUNeX", r"unknown network class 'SongUNeX' under EDMPrecond"),
        (EDM_UNCOND, b"GroupNorm", b"GroupNorX", r"unknown class 'GroupNorX' at ema\.model\.enc\.8x8_block0\.norm0 "),
        (EDM2_COND, b"MPFourier", b"MPFourieX", r"unknown class 'MPFourieX' at ema\.unet\.emb_fourier "),
    ],
)
def test_unknown_classes_are_named(tmp_path, name, old, new, match):
    _one_line_error(_patched(tmp_path, name, old, new), match)


def test_missing_and_unexpected_weights_are_named_with_counts(tmp_path):
    path = _patched(tmp_path, EDM_COND, b"map_layer1", b"map_layerX")
    _one_line_error(
        path,
        r"weights do not match EDM's DDPM\+\+ as the suite's unet: 2 missing from the file: map_layer1\.bias, "
        r"map_layer1\.weight; 2 unexpected in the file: map_layerX\.bias, map_layerX\.weight; "
        r"2 not filled in the suite's network: cond/time/dense_1/bias, cond/time/dense_1/kernel$",
    )
    extra = _patched(tmp_path, EDM_UNCOND, b"map_augment", b"map_augmenX")
    _one_line_error(extra, r"1 unexpected in the file: map_augmenX\.weight$")
    many = _patched(tmp_path, EDM2_LATENT, b"emb_gain", b"emb_gaiX")
    # 15 blocks: 8x8 block0, 4x4 / 2x2 down + block0, 2x2 in0 / in1, 4x4 / 8x8 up, 3 x 2 decoder blocks
    message = _one_line_error(many, r"15 missing from the file: dec\.2x2_block0\.emb_gain, ")
    assert "15 unexpected in the file" in message and " ..." in message


def _ema(class_name, model, **kwargs):
    state = {"_init_kwargs": kwargs, "_modules": {"model": model} if model else {}}
    return {"ema": network_pickle.Module(class_name, state)}


@pytest.mark.parametrize(
    "data, match",
    [
        (_ema("VPPrecond", None), r"f\.pkl is a VPPrecond-preconditioned EDM baseline; the suite imports EDMPrecond"),
        (
            _ema("EDMPrecond", network_pickle.Module("DhariwalUNet", {})),
            r"f\.pkl is an ADM network \(DhariwalUNet, EDM's ImageNet-64 model\); the suite has no ADM network",
        ),
    ],
)
def test_networks_the_suite_does_not_have_are_refused_by_name(data, match):
    with pytest.raises(pretrained.PretrainedError, match=match):
        edm.convert(data, "f.pkl")


def test_ncsnpp_is_refused_by_name():
    """EDM's train.py --arch=ncsnpp (the '-ve' files)."""
    kwargs = {
        **edm.SONGUNET_DEFAULTS,
        "img_resolution": 32,
        "embedding_type": "fourier",
        "encoder_type": "residual",
        "channel_mult_noise": 2,
        "resample_filter": [1, 3, 3, 1],
    }
    with pytest.raises(pretrained.PretrainedError, match=r"f\.pkl is NCSN\+\+ \('-ve' files\): \{'embedding_type'"):
        edm.model_section(kwargs, "f.pkl")


def _count(imp_model, shape, num_classes):
    net = models.build(imp_model, data_shape=shape, num_classes=num_classes)
    return sum(int(np.prod(s)) for s in pretrained.expected_shapes(net, shape, num_classes).values())


@pytest.mark.parametrize(
    "file, num_classes", [("edm-cifar10-32x32-uncond-vp.pkl", 0), ("edm-cifar10-32x32-cond-vp.pkl", 10)]
)
def test_released_cifar10_arguments_give_the_ect_configs_network(golden, file, num_classes):
    """EDM's train.py --arch=ddpmpp (32x32x3, 128 channels x [2, 2, 2], dropout 0.13, augment_dim
    9): the network of configs/ect_cifar.py / sct_cifar.py (with `:cond` for the conditional file),
    with as many parameters as the reference network holds (without map_augment)."""
    from fewstep_jax import recipes

    kwargs = {
        **edm.SONGUNET_DEFAULTS,
        "img_resolution": 32,
        "in_channels": 3,
        "model_channels": 128,
        "channel_mult": [2, 2, 2],
        "dropout": 0.13,
        "augment_dim": 9,
        "label_dim": num_classes,
    }
    cfg = edm.model_section(kwargs, file)
    ect = recipes.ect_cifar10(conditional=num_classes > 0)
    assert pretrained.architecture_differences(cfg, ect.model.to_dict()) == []
    assert _count(cfg, (32, 32, 3), num_classes) == int(golden[f"released/{file}/num_params"])


@pytest.mark.parametrize(
    "file, shape, channels",
    [("edm2-img512-xs-2147483-0.135.pkl", (64, 64, 4), 128), ("edm2-img64-s-1073741-0.075.pkl", (64, 64, 3), 192)],
)
def test_released_edm2_arguments_give_the_suite_sizes(golden, file, shape, channels):
    """EDM2's presets (train_edm2.py): the suite's EDM2 of that size, plus the MPFourier buffers as
    params (fourier_params), with the reference network's parameter count; the ImageNet-64 ECT
    config differs only in fourier_params (its docs set it)."""
    from fewstep_jax import recipes

    kwargs = {
        **edm2.UNET_DEFAULTS,
        "img_resolution": 64,
        "img_channels": shape[2],
        "label_dim": 1000,
        "model_channels": channels,
    }
    cfg = edm2.model_section(kwargs, file)
    assert cfg["size"] == ("XS" if channels == 128 else "S")
    assert _count(cfg, shape, 1000) == int(golden[f"released/{file}/num_params"])
    if shape[2] == 3:
        ect = recipes.ect_imagenet64("s").model.to_dict()
        assert pretrained.architecture_differences(cfg, ect) == ["fourier_params=True (file) vs False (config)"]
        assert pretrained.architecture_differences(cfg, {**ect, "fourier_params": True}) == []


def test_plain_pickle_of_a_released_layout_reads_without_torch(tmp_path):
    """The reader resolves the fixtures' globals without PyTorch installed in the suite."""
    data = network_pickle.load(os.path.join(FIXTURES, EDM2_COND))
    assert sorted(data) == ["dataset_kwargs", "ema", "encoder", "loss_fn"]
    tensors = data["ema"].tensors()
    assert tensors["unet.emb_fourier.freqs"].dtype == np.float16 and "logvar_linear.weight" in tensors
    copy = tmp_path / "copy.pkl"
    shutil.copy(os.path.join(FIXTURES, EDM2_COND), copy)
    assert pretrained.file_kind(str(copy)) == "network_pickle"


def test_model_section_round_trips_through_a_config(imported):
    imp = imported[EDM2_COND]
    config = imp.config()
    assert isinstance(config, ml_collections.ConfigDict)
    assert config.pretrained.family == "edm2" and config.data.name == "digits" and config.data.conditional


# ---------------------------------------------------------------------------- the conversion CLI


def test_import_weights_cli_end_to_end(tmp_path, golden):
    """--from=edm --in=FILE --out=DIR --check: the folder holds the same params as a direct import,
    the summary is printed, and the check grid is sampled with EDM's sampler (Heun 18 steps, NFE 35)."""
    import json
    import subprocess
    import sys

    from conftest import REPO

    out = tmp_path / "edm_cond"
    args = ["--from=edm", f"--in={os.path.join(FIXTURES, EDM_COND)}", f"--out={out}", "--check", "--check_samples=4"]
    run = subprocess.run(
        [sys.executable, "-m", "fewstep_jax.models.import_weights", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"parameters: {int(golden[f'{EDM_COND}/num_params'])}" in run.stdout
    assert f"--config.train.init_from={out}" in run.stdout
    report = json.loads(run.stdout.split("check: ", 1)[1].splitlines()[0])
    assert (report["sampler"], report["steps"], report["nfe"], report["labels"]) == ("heun", 18, 35, [0, 1, 2, 3])
    assert report["finite"]
    from PIL import Image

    with Image.open(out / "check.png") as png:
        assert png.size == (67, 67)  # 2 x 2 samples of 8x8, shown x4, with 1-px borders
    exported = pretrained.load_export(str(out))
    direct = pretrained.import_file(os.path.join(FIXTURES, EDM_COND))
    assert (exported.model, exported.method, exported.sampling) == (
        pretrained._tuples(direct.model),
        direct.method,
        direct.sampling,
    )
    assert jax.tree.structure(exported.params) == jax.tree.structure(direct.params)
    for a, b in zip(jax.tree.leaves(exported.params), jax.tree.leaves(direct.params)):
        np.testing.assert_array_equal(a, b)

    wrong = subprocess.run(
        [
            sys.executable,
            "-m",
            "fewstep_jax.models.import_weights",
            "--from=edm2",
            f"--in={os.path.join(FIXTURES, EDM_COND)}",
            f"--out={tmp_path / 'x'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert wrong.returncode == 1 and wrong.stderr.strip().count("\n") == 0
    assert "a 'edm' file; read it with --from=edm" in wrong.stderr
