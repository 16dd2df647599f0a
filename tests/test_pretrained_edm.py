"""Importing NVlabs' EDM and EDM2 network pickles (fewstep_jax/models/pretrained/).

The fixtures are real network pickles written by the official code (tests/pretrained_golden.py:
reduced-size EDMPrecond + DDPM++ / NCSN++ / ADM and EDM2 Precond networks with seeded random
weights, pickled as their training loops do) with the float64 outputs of their full
preconditioned forward pass. The
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
NCSNPP, ADM = "edm-digits-8x8-cond-ve.pkl", "edm-digits-8x8-cond-adm.pkl"
EDM2_COND, EDM2_LATENT = "edm2-digits-xxs-0000524-0.130.pkl", "edm2-latent8-xxs-uncond-0000262-0.050.pkl"
ALL = (EDM_UNCOND, EDM_COND, NCSNPP, ADM, EDM2_COND, EDM2_LATENT)


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


@pytest.mark.parametrize("name", (EDM_COND, NCSNPP, ADM, EDM2_LATENT))
def test_imported_denoiser_equals_the_reference_float32(golden, imported, name):
    imp = imported[name]
    method = _method(imp)
    x, sigma, y = _inputs(golden, name, imp.num_classes)
    denoised = jax.jit(method.denoise)(imp.params, jnp.asarray(x, jnp.float32), jnp.asarray(sigma, jnp.float32), y)
    assert _relative(denoised, golden[f"{name}/denoised"]) <= 1e-4


@pytest.mark.parametrize("name", (EDM_COND, EDM2_COND))  # ADM's: through sCD's teacher, below
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
    assert imp.method["name"] == "edm" and imp.method["sigma_d"] == 0.5
    assert methods.REGISTRY[imp.method["name"]].parameterization == "edm"
    if name.startswith("edm2"):
        sigma_rel, kimg = (0.13, 524) if name == EDM2_COND else (0.05, 262)
        assert summary["ema"] == dict(kind="power", sigma_rel=sigma_rel, training_kimg=kimg, source="file name")
        assert summary["stored_dtype"] == "float16" and imp.model["fourier_params"] is True
        assert imp.sampling == dict(sampler="heun", num_steps=32)
    else:
        # EDM Table 2: NFE 35 (CIFAR-10); example.py: NFE 79 for its 64x64 models (ADM)
        assert imp.sampling == dict(sampler="heun", num_steps=40 if name == ADM else 18)
        assert summary["not_imported"] and "map_augment" in summary["not_imported"][0]
        architecture = {EDM_UNCOND: "DDPM++ (EDM SongUNet)", EDM_COND: "DDPM++", NCSNPP: "NCSN++", ADM: "ADM"}[name]
        assert summary["architecture"].startswith(architecture)
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
        (ADM, b"DhariwalUNet", b"DhariwalUNeX", r"unknown network class 'DhariwalUNeX' under EDMPrecond"),
        (EDM_UNCOND, b"GroupNorm", b"GroupNorX", r"unknown class 'GroupNorX' at ema\.model\.enc\.8x8_block0\.norm0 "),
        (
            NCSNPP,
            b"FourierEmbedding",
            b"FourierEmbeddinX",
            r"unknown class 'FourierEmbeddinX' at ema\.model\.map_noise",
        ),
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


def test_baselines_are_refused_by_name():
    with pytest.raises(pretrained.PretrainedError, match=r"f\.pkl is a VPPrecond-preconditioned EDM baseline; "):
        edm.convert(_ema("VPPrecond", None), "f.pkl")


@pytest.mark.parametrize("key, value", [("encoder_type", "skip"), ("decoder_type", "skip")])
def test_songunet_skip_paths_are_refused_by_name(key, value):
    """SongUNet's 'skip' encoder / decoder (score_sde's progressive input / output), which no
    released EDM file uses and the suite's unet does not have."""
    kwargs = {**edm.SONGUNET_DEFAULTS, "img_resolution": 32, key: value}
    with pytest.raises(
        pretrained.PretrainedError,
        match=rf"f\.pkl is a SongUNet with \{{'{key}': 'skip'\}}; the suite's unet has embedding_type 'positional' / "
        r"'fourier', encoder_type 'standard' / 'residual', decoder_type 'standard' \(EDM's DDPM\+\+ and NCSN\+\+\)$",
    ):
        edm.model_section(kwargs, "f.pkl")


def test_a_filter_buffer_other_than_the_model_sections_is_named(tmp_path):
    """NCSN++'s [1, 3, 3, 1] buffers are outer(f, f) / 64; a file whose buffers hold another
    filter than its constructor arguments say is refused, naming the buffer."""
    data = network_pickle.load(os.path.join(FIXTURES, NCSNPP))
    model = data["ema"].children["model"]
    model.state["_init_kwargs"] = {**model.kwargs, "resample_filter": [1, 1]}
    with pytest.raises(
        pretrained.PretrainedError,
        match=r"^f\.pkl: enc\.4x4_down\.conv0\.resample_filter is \[0\.015625, .*\], not the filter \[1, 1\] ",
    ):
        edm.convert(data, "f.pkl")


def _count(imp_model, shape, num_classes):
    net = models.build(imp_model, data_shape=shape, num_classes=num_classes)
    return sum(int(np.prod(s)) for s in pretrained.expected_shapes(net, shape, num_classes).values())


#: NCSN++ as EDM's train.py --arch=ncsnpp sets it (the '-ve' files).
NCSNPP_ARGS = dict(
    embedding_type="fourier",
    encoder_type="residual",
    decoder_type="standard",
    channel_mult_noise=2,
    resample_filter=[1, 3, 3, 1],
)


@pytest.mark.parametrize(
    "file, num_classes",
    [
        ("edm-cifar10-32x32-uncond-vp.pkl", 0),
        ("edm-cifar10-32x32-cond-vp.pkl", 10),
        ("edm-cifar10-32x32-uncond-ve.pkl", 0),
        ("edm-cifar10-32x32-cond-ve.pkl", 10),
    ],
)
def test_released_cifar10_arguments_give_the_ect_configs_network(golden, file, num_classes):
    """EDM's train.py --arch=ddpmpp (32x32x3, 128 channels x [2, 2, 2], dropout 0.13, augment_dim
    9): the network of configs/ect_cifar.py / sct_cifar.py (with `:cond` for the conditional file),
    with as many parameters as the reference network holds (without map_augment). --arch=ncsnpp
    ('-ve'): that network with NCSN++'s four settings (docs/PRETRAINED.md's flags), as many
    parameters as the reference plus its 128 Fourier frequencies (a buffer there)."""
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
        **(NCSNPP_ARGS if file.endswith("-ve.pkl") else {}),
    }
    cfg = edm.model_section(kwargs, file)
    ect = recipes.ect_cifar10(conditional=num_classes > 0)
    assert _count(cfg, (32, 32, 3), num_classes) == int(golden[f"released/{file}/num_params"])
    if file.endswith("-ve.pkl"):
        assert pretrained.architecture_differences(cfg, ect.model.to_dict(), num_classes) == [
            "embedding_type='fourier' (file) vs 'positional' (config)",
            "encoder_type='residual' (file) vs 'standard' (config)",
            "noise_dim=256 (file) vs 128 (config)",
            "resample_filter=(1, 3, 3, 1) (file) vs (1, 1) (config)",
        ]
        return
    assert pretrained.architecture_differences(cfg, ect.model.to_dict(), num_classes) == []
    if num_classes == 0:  # sCD from the file: sCM's CIFAR-10 network with EDM's embedding (docs/PRETRAINED.md)
        scd = recipes.scm_cifar10().model.to_dict()
        assert pretrained.architecture_differences(cfg, scd, 0) == [
            "emb_norm='additive' (file) vs 'adaptive_double' (config)"
        ]
        assert pretrained.architecture_differences(cfg, {**scd, "emb_norm": "additive"}, 0) == []


def test_released_adm_arguments_give_the_adm_configs_network(golden):
    """EDM's train.py --arch=adm on ImageNet-64 (DhariwalUNet's defaults, 1000 classes, dropout
    0.1; its UNetBlocks get channels_per_head 64): the network of recipes.adm() and of the `:adm`
    ECT / SCT configs, with the reference network's parameter count."""
    from fewstep_jax import recipes

    file = "edm-imagenet-64x64-cond-adm.pkl"
    kwargs = {**edm.DHARIWALUNET_DEFAULTS, "img_resolution": 64, "in_channels": 3, "label_dim": 1000}
    cfg = edm.adm_section(kwargs, 64, file)
    assert _count(cfg, (64, 64, 3), 1000) == int(golden[f"released/{file}/num_params"])
    assert pretrained.architecture_differences(cfg, recipes.adm().to_dict(), 1000) == []
    assert pretrained.architecture_differences(cfg, recipes.ect_imagenet64_adm().model.to_dict(), 1000) == []


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


@pytest.mark.slow
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


# ---------------------------------------------------------------------------- train.init_from and sCD's teacher


def _config(name, imp, init_from):
    from conftest import load_config, quiet

    config = quiet(load_config(name), 2)
    config.model = ml_collections.ConfigDict({**imp.model, "dropout": 0.0})
    config.train.init_from = init_from
    return config


def _checked(config, workdir):
    """experiment.pretrained_net: train.init_from loaded and checked against the config, nothing compiled."""
    from fewstep_jax import experiment

    exp = experiment.setup(config, workdir)
    try:
        return experiment.pretrained_net(exp)
    finally:
        exp.checkpointer.close()


def _same_tree(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
def test_ect_initializes_from_an_imported_folder(tmp_path, imported):
    """restore_or_init with train.init_from = the CLI's folder: the live network and every EMA
    are the file's network (the file itself goes through the same load and checks: below)."""
    from fewstep_jax import experiment

    imp = imported[EDM_COND]
    folder = pretrained.save(imp, str(tmp_path / "imported"))
    exp = experiment.setup(_config("ect_digits", imp, folder), str(tmp_path / "run"))
    try:
        state, step = experiment.restore_or_init(exp)
    finally:
        exp.checkpointer.close()
    assert step == 0
    _same_tree(jax.device_get(state.params["net"]), imp.params)
    for ema in state.ema.values():
        _same_tree(jax.device_get(ema["net"]), imp.params)


def test_init_from_accepts_the_file_and_its_folder(tmp_path, imported):
    imp = imported[EDM_COND]
    folder = pretrained.save(imp, str(tmp_path / "imported"))
    for source in (os.path.join(FIXTURES, EDM_COND), folder):
        _same_tree(_checked(_config("ect_digits", imp, source), str(tmp_path / "run")), imp.params)


def test_init_from_a_file_refuses_another_network_or_data(tmp_path, imported):
    from conftest import load_config, quiet

    path = os.path.join(FIXTURES, EDM_COND)
    config = quiet(load_config("ect_digits"), 2)  # the digits UNet with the DDPM++-style blocks
    config.train.init_from = path
    differs = (
        rf"config\.model describes another network than the file's: .*channels=4 \(file\) vs {config.model.channels} "
    )
    with pytest.raises(ValueError, match=differs + r"\(config\)") as info:
        _checked(config, str(tmp_path / "a"))
    assert "\n" not in str(info.value) and "emb_norm='additive' (file) vs 'adaptive_scale' (config)" in str(info.value)
    uncond = _config("ect_digits", imported[EDM_UNCOND], os.path.join(FIXTURES, EDM_UNCOND))  # cond digits data
    with pytest.raises(
        ValueError,
        match=r"is a model of digits with shape \(8, 8, 1\) and 0 classes; this config's data 'digits' has shape "
        r"\(8, 8, 1\) and 10 classes",
    ):
        _checked(uncond, str(tmp_path / "b"))


def test_trigflow_methods_take_an_edm_file_through_the_conversion_only(tmp_path, imported):
    imp = imported[EDM2_COND]
    path = os.path.join(FIXTURES, EDM2_COND)
    config = _config("scm_sct_digits", imp, path)
    with pytest.raises(
        ValueError,
        match=r"is a 'edm' file \(edm parameterization\); 'scm_sct' needs a trigflow one; "
        r".*--config\.model\.time_map=edm_as_trigflow",
    ):
        _checked(config, str(tmp_path / "a"))
    config.model.time_map = "edm_as_trigflow"
    _same_tree(_checked(config, str(tmp_path / "b")), imp.params)
    config.method.sigma_d = 1.0
    with pytest.raises(ValueError, match=r"needs a TrigFlow method with method\.sigma_d = model\.time_map_sigma_d"):
        _checked(config, str(tmp_path / "c"))


@pytest.mark.parametrize("name", (EDM2_COND, ADM))
def test_scd_teacher_from_a_file_is_the_converted_denoiser(tmp_path, golden, imported, name):
    """method.teacher = an EDM2 / EDM ADM file: sCD's teacher velocity sigma_d F_teacher(x_t / sigma_d, t)
    is what the reference denoiser D implies: (cos(t) x_t - D) / sin(t) at sigma = sigma_d tan t."""
    from fewstep_jax import experiment

    imp = imported[name]
    path = os.path.join(FIXTURES, name)
    config = _config("scm_scd_digits", imp, "")
    config.model.time_map = "edm_as_trigflow"
    config.method.teacher = path
    exp = experiment.setup(config, str(tmp_path / "scd"))
    exp.checkpointer.close()
    experiment.attach_frozen(exp)
    x, sigma, y = _inputs(golden, name, imp.num_classes)
    keep = sigma >= 0.5  # (cos t x_t - D) / sin t loses digits where sin t is small
    t = np.arctan(sigma[keep] / 0.5)
    x_t = np.cos(t)[:, None, None, None] * x[keep]
    velocity = jax.jit(exp.method.teacher_velocity)(
        exp.frozen["teacher"], jnp.asarray(x_t, jnp.float32), jnp.asarray(t, jnp.float32), jnp.asarray(y[keep]), None
    )
    expected = (np.cos(t)[:, None, None, None] * x_t - golden[f"{name}/denoised"][keep]) / np.sin(t)[
        :, None, None, None
    ]
    assert _relative(velocity, expected) <= 1e-4


def test_scd_teacher_guidance_is_refused_with_a_file(imported):
    """The released conditional EDM / EDM2 models never saw the null label (no label dropout):
    sCD's teacher guidance, which needs their unconditional output, is refused in one line."""
    config = _config("scm_scd_digits", imported[EDM2_COND], "")
    config.method.update(dict(teacher_guidance_max=2.0))
    config.model.update(dict(use_d=True, time_map="edm_as_trigflow"))
    method = _method(imported[EDM2_COND], config)
    with pytest.raises(ValueError, match=r"teacher_guidance_max=1\.0 --config\.model\.use_d=False$") as info:
        method.teacher_config(imported[EDM2_COND].config(), "edm2.pkl")
    assert "\n" not in str(info.value) and "trained without label dropout" in str(info.value)


def test_ayf_teacher_from_a_file_is_the_reference_velocity(tmp_path, golden, imported):
    """method.teacher = an EDM2 file, loaded as training loads it (experiment.attach_frozen):
    AYF's teacher velocity at (z, t) is what the reference denoiser D implies,
    (z - D(z / (1 - t); sigma)) / t with sigma = t / (1 - t) (AYF sec. 4). With teacher_kind
    'trigflow' the file goes through the exact TrigFlow conversion (tested above, and AYF's
    TrigFlow velocity in tests/test_flowmaps.py)."""
    from conftest import load_config, quiet

    from fewstep_jax import experiment

    config = quiet(load_config("ayf_digits"), 2)
    config.method.update(dict(teacher=os.path.join(FIXTURES, EDM2_COND), teacher_kind="edm"))
    exp = experiment.setup(config, str(tmp_path / "ayf"))
    exp.checkpointer.close()
    experiment.attach_frozen(exp)
    x, sigma, y = _inputs(golden, EDM2_COND, 10)
    keep = sigma >= 0.5  # (z - D) / t loses digits where t is small
    t = sigma[keep] / (1.0 + sigma[keep])
    z = (1.0 - t)[:, None, None, None] * x[keep]
    velocity = jax.jit(exp.method.teacher_velocity, static_argnums=0)(
        "teacher", exp.frozen["teacher"], jnp.asarray(z, jnp.float32), jnp.asarray(t, jnp.float32), jnp.asarray(y[keep])
    )
    expected = (z - golden[f"{EDM2_COND}/denoised"][keep]) / t[:, None, None, None]
    assert _relative(velocity, expected) <= 1e-4
    trig = methods.build({**config.method.to_dict(), "teacher_kind": "trigflow"}, exp.method.net, exp.info)
    converted = trig.teacher_config(imported[EDM2_COND].config(), "f")
    assert converted.method.name == "trigflow" and converted.model.time_map == "edm_as_trigflow"


def test_ayf_refuses_a_mismatched_teacher_file_before_compiling(tmp_path, monkeypatch, imported):
    """A teacher file of another parameterization than method.teacher_kind, or of other data,
    fails in one line from train.start before the train state is compiled."""
    from conftest import load_config, quiet

    from fewstep_jax import experiment, train

    def compiled(*args, **kwargs):
        raise AssertionError("the train state was compiled before the teacher was checked")

    monkeypatch.setattr(experiment, "init_state", compiled)
    cases = (
        (EDM2_COND, "flow", r"is a released 'edm2' file \(edm parameterization\); method\.teacher_kind='flow' needs a "
         r"flow one; set --config\.method\.teacher_kind=edm$"),
        (EDM2_LATENT, "edm", r"ayf: the teacher .*edm2-latent8.* is a model of other data with shape \(8, 8, 4\) and 0 "
         r"classes; this config's data 'digits' has shape \(8, 8, 1\) and 10 classes$"),
    )  # fmt: skip
    for i, (name, kind, match) in enumerate(cases):
        config = quiet(load_config("ayf_digits"), 2)
        config.method.update(dict(teacher=os.path.join(FIXTURES, name), teacher_kind=kind))
        exp = experiment.setup(config, str(tmp_path / str(i)))
        with pytest.raises(ValueError, match=match) as info:
            train.start(exp)
        assert "\n" not in str(info.value)


def test_latent_files_carry_their_preset(tmp_path, imported):
    """EDM2's latent encoder stores EDM2's normalization: the file is a model of 'edm2' latents,
    kept by the exported folder; data prepared with another preset is refused in one line naming
    both and the fix, and a file whose normalization is none of the presets is told apart."""
    from fewstep_jax import experiment
    from fewstep_jax.data import latents

    imp = imported[EDM2_LATENT]
    assert imp.latent_preset == "edm2" and imported[EDM2_COND].latent_preset is None
    folder = pretrained.load(pretrained.save(imp, str(tmp_path / "latent")))
    assert folder.latent_preset == "edm2" and folder.config().pretrained.latent_preset == "edm2"
    edm2_preset = latents.PRESETS["edm2"]
    raw_mean, raw_std = np.asarray((5.81, 3.25, 0.12, -2.15)), np.asarray((4.17, 4.62, 3.71, 3.28))  # EDM2's
    assert pretrained.latent_preset_of(0.5 / raw_std, -0.5 * raw_mean / raw_std) == "edm2"
    assert pretrained.latent_preset_of(edm2_preset.scale, np.zeros(4)) == pretrained.LATENT_UNKNOWN
    assert pretrained.latent_preset_of((0.18215,) * 4, np.zeros(4)) == "sd"
    experiment.check_imported_data("f", DatasetInfo("imagenet512_latents", (8, 8, 4), 0, 0.5, "edm2"), imp.config())
    with pytest.raises(
        ValueError,
        match=r"^f is a model of latents under the 'edm2' preset; this config's data 'imagenet512_latents' were "
        r"prepared with 'scm': prepare imagenet512_latents with --latent_preset=edm2 \(docs/LATENTS\.md\) and set "
        r"--config\.data\.latent_preset=edm2$",
    ):
        experiment.check_imported_data("f", DatasetInfo("imagenet512_latents", (8, 8, 4), 0, 0.5, "scm"), imp.config())


#: NVlabs' training arguments of the released files docs/PRETRAINED.md names (EDM train.py
#: --arch=ddpmpp / ncsnpp on CIFAR-10, --arch=adm on ImageNet-64; EDM2 train_edm2.py presets
#: edm2-img64-{xs,s,m,l,xl} and edm2-img512-{xs,s,m,l,xl,xxl}, the latter on 64x64x4 latents).
EDM2_CHANNELS = {"xs": 128, "s": 192, "m": 256, "l": 320, "xl": 384, "xxl": 448}
RELEASED = {
    "edm-cifar10-32x32-uncond-vp.pkl": ("edm", dict(label_dim=0)),
    "edm-cifar10-32x32-cond-vp.pkl": ("edm", dict(label_dim=10)),
    "edm-cifar10-32x32-uncond-ve.pkl": ("edm", dict(label_dim=0, **NCSNPP_ARGS)),
    "edm-cifar10-32x32-cond-ve.pkl": ("edm", dict(label_dim=10, **NCSNPP_ARGS)),
    "edm-imagenet-64x64-cond-adm.pkl": ("adm", dict(label_dim=1000)),
    **{
        f"edm2-img{res}-{size}-{kimg}-{ema}.pkl": ("edm2" if res == 64 else "edm2_latent", dict(model_channels=ch))
        for res, size, kimg, ema in (
            (64, "s", "1073741", "0.075"),
            (64, "m", "2147483", "0.060"),
            (64, "l", "1073741", "0.040"),
            (64, "xl", "0671088", "0.040"),
            (64, "s", "1073741", "0.045"),  # EDM2's autoguidance preset of S, with the XS guide below
            (64, "xs", "0134217", "0.110"),
            (512, "s", "2147483", "0.130"),
            (512, "m", "2147483", "0.100"),
            (512, "l", "1879048", "0.085"),
            (512, "xl", "1342177", "0.085"),
            (512, "xxl", "0939524", "0.070"),
            (512, "s", "2147483", "0.070"),
            (512, "xs", "0134217", "0.125"),
        )
        for ch in (EDM2_CHANNELS[size],)
    },
    "SiT-XL-2-256.pt": ("sit", {}),
    "last.pt": ("sit_repa", {}),  # REPA's SiT-XL/2 after 4M iterations
}

#: One example's shape per dataset of the documented commands.
SHAPES = {"cifar10": (32, 32, 3), "imagenet64": (64, 64, 3), "imagenet256_latents": (32, 32, 4),
          "imagenet512_latents": (64, 64, 4)}  # fmt: skip


def _released_config(file):
    """The config (model, data, method, pretrained sections) importing `file` gives, from the
    official training arguments (NVlabs' files) or the official full-size layouts (SiT / REPA,
    recorded on PyTorch's meta device by tests/dit_golden.py)."""
    from fewstep_jax import recipes

    family, kwargs = RELEASED[file]
    method, preset = dict(name="edm", sigma_d=0.5), ""
    if family == "adm":
        imagenet = dict(img_resolution=64, in_channels=3, dropout=0.1)
        model = edm.adm_section({**edm.DHARIWALUNET_DEFAULTS, **imagenet, **kwargs}, 64, file)
        data, shape, num_classes = "imagenet64", (64, 64, 3), 1000
    elif family == "edm":
        cifar = dict(img_resolution=32, in_channels=3, model_channels=128, channel_mult=[2, 2, 2], dropout=0.13)
        model = edm.model_section({**edm.SONGUNET_DEFAULTS, **cifar, "augment_dim": 9, **kwargs}, file)
        data, shape, num_classes = "cifar10", (32, 32, 3), kwargs["label_dim"]
    elif family in ("sit", "sit_repa"):
        from dit_golden import GOLDEN

        from fewstep_jax.models import dit as dit_net
        from fewstep_jax.models.pretrained import dit

        with np.load(GOLDEN) as golden:
            name = {"sit": "sit_xl2_256", "sit_repa": "sit_repa_xl2_256"}[family]
            names, shapes = golden[f"names_{name}"], golden[f"shapes_{name}"]
        state = {}
        for key, text in zip(names, shapes):
            shape_ = tuple(int(v) for v in str(text).split(","))
            if key == "pos_embed":
                grid = int(round(shape_[1] ** 0.5))
                state[str(key)] = dit_net.sincos_2d_embedding(grid, grid, shape_[2]).astype(np.float32)[None]
            else:  # zero-stride stand-ins: the layout without the memory
                state[str(key)] = np.broadcast_to(np.float32(0.01), shape_)
        model, _, summary = dit.import_state_dict(state, family)
        method, preset = dict(recipes.flow()), dit.LATENT_PRESET
        data, shape, num_classes = "imagenet256_latents", tuple(summary["data_shape"]), summary["num_classes"]
    else:
        latent = family == "edm2_latent"
        imagenet = dict(img_resolution=64, img_channels=4 if latent else 3, label_dim=1000)
        model = edm2.model_section({**edm2.UNET_DEFAULTS, **imagenet, **kwargs}, file)
        data, preset = ("imagenet512_latents", "edm2") if latent else ("imagenet64", "")
        shape, num_classes = (64, 64, 4 if latent else 3), 1000
    return ml_collections.ConfigDict(
        dict(
            model=model,
            data=dict(name=data),
            method=method,
            pretrained=dict(family=family, data_shape=shape, num_classes=num_classes, latent_preset=preset),
        )
    )


def _flag_value(current, text):
    """A command-line value as ml_collections' config flags parse it for a field holding `current`
    (strings as given, booleans by name, numbers and tuples such as 1,3,3,1 as Python literals)."""
    import ast

    if isinstance(current, str):
        return text
    if isinstance(current, bool):
        return {"True": True, "False": False}[text]
    value = ast.literal_eval(text)
    return tuple(value) if isinstance(current, tuple) else value


def _documented_commands():
    import shlex

    from conftest import REPO

    with open(os.path.join(REPO, "docs", "PRETRAINED.md")) as f:
        return [shlex.split(line.strip()) for line in f if line.strip().startswith("python -m fewstep_jax.main")]


@pytest.mark.parametrize("command", _documented_commands(), ids=lambda c: c[3].split("/")[-1])
def test_documented_commands_start_from_the_released_files(command):
    """Each command of docs/PRETRAINED.md, applied to its config as the command line does (a
    locked config: every override must name an existing key): every released file it names is a
    model of the config's data (shape, labels, name, latent preset; experiment.check_imported_data);
    its train.init_from describes the config's network (from the official training arguments) with
    a method that accepts it (experiment.check_pretrained_method, as train.init_from runs it); its
    teachers pass the method's own teacher check (teacher_config, as load_frozen runs it)."""
    import types

    from conftest import load_config

    from fewstep_jax import experiment

    path, _, variant = command[3].removeprefix("--config=configs/").partition(":")
    config = load_config(path.removesuffix(".py"), variant or None)
    config.lock()
    for arg in command[5:]:
        key, value = arg.removeprefix("--config.").split("=", 1)
        section, leaf = key.rsplit(".", 1)
        node = config
        for part in section.split("."):
            node = node[part]
        node[leaf] = _flag_value(node[leaf], value)  # raises for a key the config lacks
    classes = {"cifar10": 10}.get(config.data.name, 1000) if config.data.conditional else 0
    info = DatasetInfo(config.data.name, SHAPES[config.data.name], classes, 0.5, config.data.get("latent_preset"))
    net = models.build(config.model, data_shape=info.shape, num_classes=classes)
    method = methods.build(config.method, net, info)
    exp = types.SimpleNamespace(config=config, method=method, train=config.train, info=info)
    files = []
    if config.train.init_from:
        file = config.train.init_from
        file_config = _released_config(file)
        experiment.check_imported_data(file, info, file_config)
        assert pretrained.architecture_differences(file_config.model.to_dict(), config.model.to_dict(), classes) == []
        experiment.check_pretrained_method(exp, file_config)
        files.append(file)
    teachers = [config.method.get("teacher", "")]
    if config.method.get("autoguidance", 1.0) != 1.0:
        teachers.append(config.method.weak_teacher)
    for file in filter(None, teachers):
        file_config = _released_config(file)
        experiment.check_imported_data(file, info, file_config)
        method.teacher_config(file_config, file)
        files.append(file)
    if config.method.name == "scm_scd":
        assert config.method.teacher == config.train.init_from
    assert files and all(f in RELEASED for f in files)


def test_every_config_that_starts_from_a_released_file_has_its_command():
    names = {c[3].removeprefix("--config=configs/") for c in _documented_commands()}
    assert names == {
        "ect_cifar.py",
        "ect_cifar.py:cond",
        "sct_cifar.py",
        "sct_cifar.py:cond",
        "ect_imagenet64.py:s",
        "ect_imagenet64.py:m",
        "sct_imagenet64.py:s",
        "sct_imagenet64.py:m",
        "scm_scd_imagenet64.py:s",
        "scm_scd_imagenet64.py:m",
        "scm_scd_imagenet64.py:l",
        "scm_scd_imagenet64.py:xl",
        "scm_scd_cifar.py",
        "ect_imagenet64.py:adm",
        "sct_imagenet64.py:adm",
        *(f"ayf_imagenet64.py:{size}" for size in ("s", "m", "l", "xl")),
        *(f"ayf_imagenet512.py:{size}" for size in ("s", "m", "l", "xl")),
        *(f"scm_scd_imagenet512.py:{size}" for size in ("s", "m", "l", "xl", "xxl")),
        "dmf_imagenet256.py",
    }
