"""Importing the official DiT / SiT / REPA weights (fewstep_jax/models/pretrained/dit.py).

Parity: small `torch.save` files and the float64 outputs of the official PyTorch networks on them
(tests/dit_golden.py, tests/fixtures/pretrained/) against the imported suite DiT. Conventions:
the official interpolants (SiT transport/path.py, REPA loss.py) and DiT's diffusion code, recorded
by the same script. Full-size parameter counts: the official modules' counts and state-dict
layouts, recorded on PyTorch's meta device, against jax.eval_shape of the imported network.
"""

from __future__ import annotations

import os
import pickle
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dit_golden import FILES, FIXTURES, GOLDEN, TINY

from fewstep_jax import methods, models
from fewstep_jax.methods.flow import FlowMatching
from fewstep_jax.methods.meanflow import MeanFlow
from fewstep_jax.metrics import torch_pickle
from fewstep_jax.models import dit as dit_net
from fewstep_jax.models.pretrained import dit as imp

HEADS = TINY["num_heads"]  # not in the weights; the tiny width is none of DiT's sizes
NULL = TINY["num_classes"]


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def imported():
    return {f: imp.load(os.path.join(FIXTURES, name), f, num_heads=HEADS) for f, name in FILES.items()}


def _nhwc(a: np.ndarray) -> np.ndarray:
    return np.asarray(a).transpose(0, 2, 3, 1)


def _rel(ours, ref) -> float:
    """max |ours - ref| / RMS(ref)."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.max(np.abs(ours - ref)) / np.sqrt(np.mean(ref**2)))


def _net(config, summary, dtype="float32"):
    return models.build(dict(config, dtype=dtype), data_shape=summary["data_shape"], num_classes=summary["num_classes"])


def _cast(params, dtype):
    return jax.tree.map(lambda a: jnp.asarray(a, dtype), params)


# --------------------------------------------------------------------------------------------
# Parity with the reference forward passes


@pytest.mark.parametrize("family", list(FILES))
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-10), ("float32", 1e-4)])
def test_forward_matches_reference(imported, golden, family, dtype, tol):
    """forward(x, t, y) of the official network, labels including the null class; DiT's output
    includes its 4 learned-sigma channels (with_sigma), SiT's forward drops them as ours does."""
    config, params, summary = imported[family]
    with jax.enable_x64(dtype == "float64"):
        net = _net(config, summary, dtype)
        x = jnp.asarray(_nhwc(golden["x"]), dtype)
        t, y = jnp.asarray(golden[f"{family}_time"], dtype), jnp.asarray(golden["labels"])
        ref = _nhwc(golden[f"{family}_out"])
        out = net.apply({"params": _cast(params, dtype)}, x, t, y, with_sigma=family == "dit")
        assert out.dtype == dtype
        assert _rel(out, ref) <= tol
        if family == "dit":  # the suite's interface: the prediction channels only
            plain = net.apply({"params": _cast(params, dtype)}, x, t, y)
            assert _rel(plain, ref[..., : x.shape[-1]]) <= tol


@pytest.mark.parametrize("family", ["dit", "sit"])
def test_forward_with_cfg_matches_reference(imported, golden, family):
    """The official forward_with_cfg (scale 4) from the imported network's conditional and null
    outputs, combined as the reference does: guidance on the first 3 latent channels only."""
    config, params, summary = imported[family]
    with jax.enable_x64(True):
        net = _net(config, summary, "float64")
        x, t = jnp.asarray(_nhwc(golden["x"])[:2]), jnp.asarray(golden[f"{family}_time"][:2])
        y = jnp.asarray(golden["labels"][:2])
        apply = lambda labels: np.asarray(
            net.apply({"params": _cast(params, jnp.float64)}, x, t, labels, with_sigma=family == "dit")
        )
        cond, null = apply(y), apply(jnp.full((2,), NULL))
    scale = float(golden["cfg_scale"])
    guided = null[..., :3] + scale * (cond[..., :3] - null[..., :3])
    expected = np.concatenate(
        [np.concatenate([guided, cond[..., 3:]], -1), np.concatenate([guided, null[..., 3:]], -1)]
    )
    assert _rel(expected, _nhwc(golden[f"{family}_cfg_out"])) <= 1e-10


def test_dit_outputs_match_reference_diffusion(imported, golden):
    """x0 and the learned log-variance equal DiT's p_mean_variance (1000 linear betas, learned
    range) on the same outputs; the schedule equals its alphas_cumprod."""
    config, params, summary = imported["dit"]
    np.testing.assert_allclose(np.cumprod(1.0 - imp.ddpm_betas()), golden["dit_alphas_cumprod"], rtol=1e-14)
    with jax.enable_x64(True):
        net = _net(config, summary, "float64")
        x, n = jnp.asarray(_nhwc(golden["x"])), jnp.asarray(golden["dit_time"])
        y = jnp.asarray(golden["labels"])
        out = net.apply({"params": _cast(params, jnp.float64)}, x, n, y, with_sigma=True)
        parts = imp.dit_outputs(out, x, n)
        x0 = imp.denoiser(net, _cast(params, jnp.float64), "dit")(x, n, y)
    assert _rel(parts["x0"], _nhwc(golden["dit_pred_xstart"])) <= 1e-10
    assert _rel(x0, _nhwc(golden["dit_pred_xstart"])) <= 1e-10
    assert _rel(parts["log_variance"], _nhwc(golden["dit_log_variance"])) <= 1e-10
    assert _rel(parts["eps"], _nhwc(golden["dit_out"])[..., :4]) <= 1e-10


# --------------------------------------------------------------------------------------------
# Time direction and velocity sign


class _Oracle:
    """A stand-in network that returns a given velocity (the reference interpolant's target)."""

    def __init__(self, v):
        self.v = jnp.asarray(v)

    def apply(self, variables, x, t, y=None, **kwargs):
        return self.v


def test_interpolants_match_the_suite_conventions(golden):
    """SiT's ICPlan is methods/flow.py's path (x_t = (1 - t) z + t x0, v = x0 - z) and REPA's
    linear path is methods/meanflow.py's (x_t = (1 - t) x0 + t z, v = z - x0); the denoisers
    recover the data from the exact velocity."""
    assert "t = 0 noise" in FlowMatching.time_convention and "t = 0 data" in MeanFlow.time_convention
    assert imp.describe("sit")["convention"] == "flow" and imp.describe("sit_repa")["convention"] == "meanflow"
    noise, data = golden["noise"], golden["data"]
    tb = {f: golden[f"{f}_time"][:, None, None, None] for f in ("sit", "sit_repa")}
    expected = {
        "sit": ((1 - tb["sit"]) * noise + tb["sit"] * data, data - noise),
        "sit_repa": ((1 - tb["sit_repa"]) * data + tb["sit_repa"] * noise, noise - data),
    }
    for family, (xt, ut) in expected.items():
        np.testing.assert_allclose(golden[f"{family}_interp_xt"], xt, rtol=0, atol=1e-14)
        np.testing.assert_allclose(golden[f"{family}_interp_ut"], ut, rtol=0, atol=1e-14)
        with jax.enable_x64(True):
            oracle = _Oracle(_nhwc(golden[f"{family}_interp_ut"]))
            x0 = imp.denoiser(oracle, None, family)(
                jnp.asarray(_nhwc(golden[f"{family}_interp_xt"])), jnp.asarray(golden[f"{family}_time"])
            )
        assert _rel(x0, _nhwc(data)) <= 1e-12


@pytest.mark.parametrize("family,other", [("sit", "meanflow"), ("sit_repa", "flow")])
def test_other_convention_by_wrapper_and_by_weights(imported, golden, family, other):
    """In the other convention the velocity at t is minus the reference's at 1 - t: through the
    `velocity` wrapper, and through the rewritten weights (to_convention) in the plain network."""
    config, params, summary = imported[family]
    native = imp.describe(family)["convention"]
    ref = _nhwc(golden[f"{family}_out"])
    with jax.enable_x64(True):
        net = _net(config, summary, "float64")
        p64 = _cast(params, jnp.float64)
        x, y = jnp.asarray(_nhwc(golden["x"])), jnp.asarray(golden["labels"])
        t_other = 1.0 - jnp.asarray(golden[f"{family}_time"])
        wrapped = imp.velocity(net, p64, family, other)(x, t_other, y)
        rewritten = imp.to_convention(config, p64, family, other)
        direct = net.apply({"params": rewritten}, x, t_other, y)
        same = imp.velocity(net, p64, family, native)(x, jnp.asarray(golden[f"{family}_time"]), y)
    assert _rel(wrapped, -ref) <= 1e-10
    assert _rel(direct, -ref) <= 1e-10
    assert _rel(same, ref) <= 1e-10
    assert imp.to_convention(config, params, family, native) is params
    # The original params are untouched.
    assert np.array_equal(params["final_linear"]["bias"], imported[family][1]["final_linear"]["bias"])
    with jax.enable_x64(False):  # float32 weights: the rewrite costs only rounding
        net32 = _net(config, summary)
        out = net32.apply(
            {"params": imp.to_convention(config, params, family, other)},
            jnp.asarray(_nhwc(golden["x"]), jnp.float32),
            jnp.asarray(1.0 - golden[f"{family}_time"], jnp.float32),
            jnp.asarray(golden["labels"]),
        )
    assert _rel(out, -ref) <= 1e-4


def test_dit_is_not_a_velocity_model(imported):
    config, params, _ = imported["dit"]
    with pytest.raises(ValueError, match="not a velocity"):
        imp.to_convention(config, params, "dit", "flow")
    with pytest.raises(ValueError, match="unknown convention"):
        imp.velocity(None, params, "sit", "trigflow")


# --------------------------------------------------------------------------------------------
# Files, summary and full-size counts


def test_summary_and_training_checkpoint(imported):
    """The REPA fixture is a train.py checkpoint: its 'ema' entry is used (its 'model' entry
    holds constants, so the parity test would fail on it); its Namespace 'args' is readable."""
    config, params, summary = imported["sit_repa"]
    assert summary["weights"].startswith("'ema' entry") and summary["train_steps"] == 4000
    assert summary["dropped_keys"][0] == "pos_embed" and len(summary["dropped_keys"]) == 7
    assert summary["learn_sigma"] is False and config["learn_sigma"] is False
    assert summary["parameter_count"] == models.count_params(params)
    obj = torch_pickle.load_object(os.path.join(FIXTURES, FILES["sit_repa"]))
    assert obj["args"].qk_norm is False and obj["args"].encoder_depth == 1
    assert obj["opt"]["param_groups"][0]["lr"] == 1e-4
    assert np.all(obj["model"]["final_layer.linear.bias"] == -1.0)
    state, which = imp.select_state_dict({"model": obj["ema"], "steps": 3})
    assert "no 'ema'" in which and state.keys() == obj["ema"].keys()
    dit_summary = imported["dit"][2]
    assert dit_summary["weights"] == "plain state dict" and dit_summary["learn_sigma"] is True
    assert dit_summary["data_shape"] == (8, 8, 4) and dit_summary["num_classes"] == NULL
    assert dit_summary["convention"] == "ddpm" and imported["sit"][2]["parameterization"] == "flow"


def _zero_state_dict(golden, name: str) -> dict[str, np.ndarray]:
    """The official full-size layout with zero-stride tensors (no memory), pos_embed the table."""
    out = {}
    for key, shape in zip(golden[f"names_{name}"], golden[f"shapes_{name}"]):
        shape = tuple(int(s) for s in str(shape).split(","))
        if key == "pos_embed":
            grid = int(round(shape[1] ** 0.5))
            out[key] = dit_net.sincos_2d_embedding(grid, grid, shape[2]).astype(np.float32)[None]
        else:
            out[str(key)] = np.broadcast_to(np.float32(0.01), shape)
    return out


@pytest.mark.parametrize(
    "name,family,resolution",
    [
        ("dit_xl2_256", "dit", 256),
        ("dit_xl2_512", "dit", 512),
        ("sit_xl2_256", "sit", 256),
        ("sit_repa_xl2_256", "sit_repa", 256),
    ],
)
def test_full_size_layout_and_parameter_count(golden, name, family, resolution):
    """DiT-XL/2 (Table 1; 675,129,632 parameters as the official code counts them, its frozen
    pos_embed included) imports from the official layout; the suite's count from
    jax.eval_shape plus the pos_embed table equals the official count."""
    config, params, summary = imp.import_state_dict(_zero_state_dict(golden, name), family)
    assert summary["architecture"].startswith("DiT-XL/2" if family == "dit" else "SiT-XL/2")
    assert summary["resolution"] == resolution and summary["num_classes"] == 1000
    assert summary["learn_sigma"] is (family != "sit_repa")  # the DiT and SiT releases have the sigma head
    net = _net(config, summary)
    side = summary["data_shape"][0]
    shapes = jax.eval_shape(
        net.init, jax.random.PRNGKey(0), jnp.zeros((1, side, side, 4)), jnp.zeros((1,)), jnp.zeros((1,), jnp.int32)
    )["params"]
    count = models.count_params(shapes)
    assert count == summary["parameter_count"]
    pos_embed = (side // 2) ** 2 * 1152
    official = int(golden[f"count_{name}"])
    assert summary["reference_parameter_count"] == official
    if family == "sit_repa":
        assert count + pos_embed + int(golden["count_sit_repa_xl2_256_projectors"]) == official
    else:
        assert count + pos_embed == official
    if name == "dit_xl2_256":
        assert official == 675_129_632  # the figure the DiT code logs for DiT-XL/2


# --------------------------------------------------------------------------------------------
# Bad input: one-line errors naming what differs


def _state(family: str) -> dict[str, np.ndarray]:
    return imp.select_state_dict(torch_pickle.load_object(os.path.join(FIXTURES, FILES[family])))[0]


def _raises(match: str, fn, *args, **kwargs) -> str:
    with pytest.raises(imp.WeightsError, match=match) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_wrong_family_or_architecture():
    _raises(
        r"unexpected 6: projectors\.0\.0\.bias.*use family 'sit_repa'", imp.import_state_dict, _state("sit_repa"), "dit"
    )
    _raises("no projectors", imp.import_state_dict, _state("sit"), "sit_repa")
    _raises("pass num_heads", imp.import_state_dict, _state("dit"), "dit")
    _raises("unknown DiT / SiT family", imp.import_state_dict, _state("dit"), "edm")


def test_missing_extra_and_misshaped_tensors():
    state = _state("dit")
    del state["blocks.1.mlp.fc2.bias"], state["final_layer.linear.weight"]
    _raises(
        r"missing 2: blocks\.1\.mlp\.fc2\.bias, final_layer\.linear\.weight",
        imp.import_state_dict,
        state,
        "dit",
        num_heads=HEADS,
    )
    state = _state("dit")
    state["blocks.0.attn.q_norm.weight"] = np.ones(8, np.float32)
    _raises(
        r"unexpected 1: blocks\.0\.attn\.q_norm\.weight \(qk-norm", imp.import_state_dict, state, "dit", num_heads=HEADS
    )
    state = _state("dit")
    state["blocks.1.attn.qkv.weight"] = np.zeros((71, 24), np.float32)
    _raises(
        r"mis-shaped 1 .*blocks\.1\.attn\.qkv\.weight \(71, 24\) \(expected \(72, 24\)\)",
        imp.import_state_dict,
        state,
        "dit",
        num_heads=HEADS,
    )
    state = _state("dit")
    state["final_layer.linear.weight"] = np.zeros((20, 24), np.float32)
    _raises("final_layer.linear.weight has 20 outputs", imp.import_state_dict, state, "dit", num_heads=HEADS)


def test_positional_embedding_and_values_are_checked():
    state = _state("sit")
    state["pos_embed"] = state["pos_embed"] + np.float32(1e-3)
    _raises(
        "pos_embed is not the fixed 2-D sin-cos table of a 4x4 grid",
        imp.import_state_dict,
        state,
        "sit",
        num_heads=HEADS,
    )
    state = _state("sit")
    state["blocks.0.attn.proj.weight"] = state["blocks.0.attn.proj.weight"].copy()
    state["blocks.0.attn.proj.weight"][0, 0] = np.nan
    _raises(
        r"non-finite values in 1 tensor\(s\): blocks\.0\.attn\.proj\.weight",
        imp.import_state_dict,
        state,
        "sit",
        num_heads=HEADS,
    )


def test_bad_files(tmp_path):
    missing = tmp_path / "DiT-XL-2-256x256.pt"
    with pytest.raises(FileNotFoundError, match="download.py of facebookresearch/DiT"):
        imp.load(missing, "dit")
    data = open(os.path.join(FIXTURES, FILES["dit"]), "rb").read()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    _raises("truncated.pt as a PyTorch checkpoint", imp.load, truncated, "dit", num_heads=HEADS)

    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    evil = tmp_path / "evil.pt"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"ema": {"w": Exploit()}}, protocol=2))
    _raises(r"refusing to unpickle (posix|os)\.mkdir", imp.load, evil, "dit")
    assert not marker.exists()
    with zipfile.ZipFile(tmp_path / "empty.pt", "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"ema": {}, "steps": 3}, protocol=2))
    _raises("holds no tensors", imp.load, tmp_path / "empty.pt", "dit")


def test_with_sigma_needs_the_learned_sigma_head():
    net = models.build(dict(name="dit", hidden=16, depth=1, num_heads=2), data_shape=(4, 4, 2), num_classes=0)
    x, t = jnp.zeros((1, 4, 4, 2)), jnp.zeros((1,))
    params = jax.eval_shape(net.init, jax.random.PRNGKey(0), x, t)
    with pytest.raises(ValueError, match="learn_sigma=True"):
        jax.eval_shape(lambda p: net.apply(p, x, t, with_sigma=True), params)


def test_registry_imports_sit_and_repa_as_flow_models_and_refuses_dit(monkeypatch, tmp_path):
    """pretrained.import_file (the path of train.init_from and import_weights): SiT and REPA's SiT
    become the flow method's velocity field (t = 0 noise), equal to the reference velocity
    -v_repa(x, 1 - t) for REPA; a DiT file is refused with the reason."""
    import functools

    from fewstep_jax.models import import_weights, pretrained

    monkeypatch.setattr(imp, "load", functools.partial(imp.load, num_heads=HEADS))  # the tiny width is not in Table 1
    rng = np.random.default_rng(11)
    for family in ("sit", "sit_repa"):
        path = os.path.join(FIXTURES, FILES[family])
        assert pretrained.detect(path) == "sit"
        out = import_weights.convert("sit", path, str(tmp_path / family))
        assert out.method["name"] == "flow" and methods.REGISTRY["flow"].parameterization == "flow"
        config, params, _ = imp.load(path, family)
        net = out.build()
        x = rng.standard_normal((2, *out.data_shape)).astype(np.float32)
        t = np.array([0.2, 0.7], np.float32)
        y = np.array([0, 2], np.int32)
        ours = np.asarray(net.apply({"params": out.params}, x, t, y))
        reference = imp.velocity(
            models.build(config, data_shape=out.data_shape, num_classes=out.num_classes), params, family, "flow"
        )(x, t, y)
        np.testing.assert_allclose(ours, np.asarray(reference), rtol=1e-4, atol=1e-5)
        assert pretrained.load(str(tmp_path / family)).method["name"] == "flow"  # the exported folder
    with pytest.raises(pretrained.PretrainedError, match="DiT predicts DDPM noise"):
        pretrained.import_file(os.path.join(FIXTURES, FILES["dit"]), "dit")


# --------------------------------------------------------------------------------------------
# Decoupled MeanFlow from SiT / REPA (train.init_from, configs/dmf_imagenet256.py)


def _dmf_config(family: str, **model):
    """configs/dmf_imagenet256.py with docs/PRETRAINED.md's flags for `family`'s file, at the
    fixtures' reduced width and depth (split 1 of 3 conditioned layers)."""
    from conftest import load_config

    config = load_config("dmf_imagenet256", None)
    config.model.update(dict(size=None, hidden=TINY["hidden_size"], depth=TINY["depth"], num_heads=HEADS))
    config.model.update({"dtype": "float32", "time_endpoint": False, "learn_sigma": family == "sit", **model})
    config.method.split = 1
    config.train.init_from = os.path.join(FIXTURES, FILES[family])
    return config


def _dmf_experiment(config, preset="sd", dtype="float32"):
    """What experiment.pretrained_net reads of an experiment (config, train, data info, method,
    the train state's abstract params), for latents of the fixtures' shape."""
    import types

    from fewstep_jax import experiment
    from fewstep_jax.data import DatasetInfo

    info = DatasetInfo("imagenet256_latents", (8, 8, 4), NULL, 1.0, preset)
    net = models.build(dict(config.model.to_dict(), dtype=dtype), data_shape=info.shape, num_classes=NULL)
    method = methods.build(config.method, net, info)
    abstract = types.SimpleNamespace(
        params=jax.eval_shape(method.init_params, jax.random.PRNGKey(0), experiment.example_batch(info))
    )
    return types.SimpleNamespace(config=config, train=config.train, info=info, method=method, abstract_state=abstract)


@pytest.fixture
def heads_from_the_fixture(monkeypatch):
    import functools

    monkeypatch.setattr(imp, "load", functools.partial(imp.load, num_heads=HEADS))  # the tiny width is not in Table 1


@pytest.mark.parametrize("family", ["sit", "sit_repa"])
def test_dmf_starts_from_sit_and_repa_files_as_their_velocity(golden, heads_from_the_fixture, family):
    """train.init_from = the SiT / REPA file, checked as restore_or_init checks it before compiling
    (experiment.pretrained_net): DMF's u(x, t, t) of the initialized network is the official
    network's velocity in DMF's convention (t = 1 noise): -v_SiT(x, 1 - t) (SiT: t = 1 data,
    v = x0 - z) and v_REPA(x, t) (REPA: t = 1 noise, v = z - x0), the official outputs of
    tests/dit_golden.py in float64. DMF's interpolant z_t = (1 - t) x + t e and target e - x are
    the official paths at those times. For REPA, whose convention the import rewrites inside the
    weights, the decoupled network at r != t is REPA's own network with t and r fed to its own time
    embedder (no flip anywhere)."""
    from fewstep_jax import experiment
    from fewstep_jax.methods import flowmap
    from fewstep_jax.models import flowmap_nets

    config = _dmf_config(family)
    params = experiment.pretrained_net(_dmf_experiment(config))
    official_time = golden[f"{family}_time"]
    t = 1.0 - official_time if family == "sit" else official_time
    sign = -1.0 if family == "sit" else 1.0
    noise, data = _nhwc(golden["noise"]), _nhwc(golden["data"])
    z, target = flowmap.noisy(jnp.asarray(data), jnp.asarray(noise), jnp.asarray(t))
    np.testing.assert_allclose(z, _nhwc(golden[f"{family}_interp_xt"]), rtol=0, atol=1e-6)
    np.testing.assert_allclose(target, sign * _nhwc(golden[f"{family}_interp_ut"]), rtol=0, atol=1e-6)
    # REPA's weights went through the float64 time flip and were stored in float32: 1e-6 of rounding.
    tol = 1e-10 if family == "sit" else 1e-5
    with jax.enable_x64(True):
        dmf = _dmf_experiment(config, dtype="float64").method
        p64 = _cast(params, jnp.float64)
        x, y, tt = jnp.asarray(_nhwc(golden["x"])), jnp.asarray(golden["labels"]), jnp.asarray(t)
        expected = sign * _nhwc(golden[f"{family}_out"])
        assert _rel(dmf.flow_map(p64, x, tt, tt, y), expected) <= tol
        assert _rel(dmf.velocity(p64, x, tt, y), expected) <= tol
        if family == "sit_repa":
            r = tt * jnp.asarray([0.0, 0.5, 0.2, 0.9])
            raw_config, raw, _ = imp.load(config.train.init_from, family)
            repa = _net(raw_config, dict(data_shape=(8, 8, 4), num_classes=NULL), "float64")
            own = flowmap_nets.decoupled_apply(repa, {"params": _cast(raw, jnp.float64)}, x, tt, r, y, split=1)
            ours = dmf.flow_map(p64, x, tt, r, y)
            assert _rel(ours, own) <= tol
            assert _rel(ours, expected) > 1e-2  # r reaches the late blocks


def test_dmf_refuses_mismatched_files_in_one_line(heads_from_the_fixture):
    """Before anything is compiled, in one line: a config without the file's flags (names each
    differing key), latents prepared under another preset, and DiT's noise-prediction weights
    (with what to use instead)."""
    from fewstep_jax import experiment
    from fewstep_jax.models import pretrained

    cases = (
        (_dmf_config("sit", learn_sigma=False), "sd", r"describes another network than the file's: "
         r"learn_sigma=True \(file\) vs False \(config\) \(set these with --config\.model\.KEY=VALUE\)$"),
        (_dmf_config("sit_repa", time_endpoint=True), "sd", r"time_endpoint=False \(file\) vs True \(config\)"),
        (_dmf_config("sit_repa"), "imf", r"is a model of latents under the 'sd' preset; this config's data "
         r"'imagenet256_latents' were prepared with 'imf': prepare imagenet256_latents with --latent_preset=sd"),
    )  # fmt: skip
    for config, preset, match in cases:
        with pytest.raises(ValueError, match=match) as info:
            experiment.pretrained_net(_dmf_experiment(config, preset))
        assert "\n" not in str(info.value)
    config = _dmf_config("sit")
    config.train.init_from = os.path.join(FIXTURES, FILES["dit"])
    with pytest.raises(pretrained.PretrainedError, match="DiT predicts DDPM noise") as info:
        experiment.pretrained_net(_dmf_experiment(config))
    message = str(info.value)
    assert "\n" not in message and "train.init_from" in message and "start from SiT-XL-2-256.pt" in message
