"""Every config file loads; embedded ones validate; paper configs carry the paper's values."""

from __future__ import annotations

import ast
import glob
import os
import sys

import pytest
from conftest import CONFIGS, REPO, load_config

import fewstep_jax
from fewstep_jax import config_lib, experiment
from fewstep_jax.models import EDM2_SIZES

NAMES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(CONFIGS, "*.py")))
EMBEDDED = [n for n in NAMES if n.endswith(("_digits", "_toy2d"))]
PAPER = [n for n in NAMES if n not in EMBEDDED]

#: Files of the repository whose code objects run while a test records them (an audit hook sees
#: every exec: imports, runpy, exec(open(...).read()) alike).
_EXECUTED: list[str] | None = None


def _record_exec(event: str, args: tuple) -> None:
    if event == "exec" and _EXECUTED is not None:
        filename = getattr(args[0], "co_filename", "")  # '<string>' for generated code (dataclasses)
        if os.path.isfile(filename) and os.path.abspath(filename).startswith(REPO + os.sep):
            filename = os.path.abspath(filename)
            _EXECUTED.append(os.path.relpath(filename, REPO))


sys.addaudithook(_record_exec)


@pytest.mark.parametrize("name", NAMES)
def test_loading_a_config_executes_at_most_three_files(name, monkeypatch):
    """Defaults, the paper recipes, the delta: no config file runs another (each variant counted
    from a fresh import of config_lib and recipes)."""
    global _EXECUTED
    path = os.path.join(CONFIGS, f"{name}.py")
    for variant in (None, *config_lib.config_module(path).VARIANTS.names):
        for module in ("config_lib", "recipes"):
            monkeypatch.delitem(sys.modules, f"fewstep_jax.{module}", raising=False)
            monkeypatch.delattr(fewstep_jax, module, raising=False)
        _EXECUTED = []
        try:
            config_lib.load_config(path, variant)
            executed = _EXECUTED
        finally:
            _EXECUTED = None
        allowed = {f"configs/{name}.py", "fewstep_jax/config_lib.py", "fewstep_jax/recipes.py"}
        assert set(executed) <= allowed and len(executed) <= 3, (variant, executed)


@pytest.mark.parametrize("name", NAMES)
def test_configs_share_one_variant_grammar(name):
    """Each config imports config_lib / recipes only, declares VARIANTS (sizes, options, smoke)
    and parses its argument with it first; each variant is in the docstring; unknown ones fail
    in one line; `:smoke` trains a few small steps."""
    path = os.path.join(CONFIGS, f"{name}.py")
    with open(path) as f:
        tree = ast.parse(f.read())
    imports = [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert all(isinstance(node, ast.ImportFrom) and node.module == "fewstep_jax" for node in imports), name
    assert {alias.name for node in imports for alias in node.names} <= {"config_lib", "recipes"}, name
    get_config = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "get_config")
    assert ast.unparse(get_config.body[0]) == "variant = VARIANTS.parse(arg)", name

    module = config_lib.config_module(path)
    variants = module.VARIANTS
    assert type(variants).__name__ == "Variants" and variants.names[-1] == "smoke", name
    for variant in variants.names:
        assert f"`:{variant}`" in module.__doc__, (name, variant)
    known = ", ".join(variants.names)
    with pytest.raises(ValueError, match=rf"^unknown config variant 'nope'; known variants: {known}$"):
        module.get_config("nope")
    assert module.get_config(" smoke ").to_dict() == module.get_config("smoke").to_dict()
    assert module.get_config("").to_dict() == module.get_config(None).to_dict()
    if variants.sizes:  # no size named: the first
        assert module.get_config(None).to_dict() == module.get_config(variants.sizes[0]).to_dict()
    smoke = module.get_config("smoke")
    assert smoke.train.num_steps <= 50 and smoke.train.batch_size <= 32 and max(smoke.eval.nfes) <= 2, name


def test_every_config_has_a_docstring_with_its_command():
    for name in NAMES:
        with open(os.path.join(CONFIGS, f"{name}.py")) as f:
            text = f.read()
        assert f"--config=configs/{name}.py" in text, name


@pytest.mark.parametrize("name", EMBEDDED)
@pytest.mark.parametrize("variant", [None, "smoke"])
def test_embedded_configs_validate(name, variant):
    config = load_config(name, variant)
    if config.method.name == "scm_scd":
        config.method.teacher = "unused-by-validation"
    experiment.check(config, num_devices=1)
    if variant == "smoke":
        assert config.train.num_steps <= 50


@pytest.mark.parametrize("name", PAPER)
def test_paper_configs_name_what_is_missing(name, tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))  # no dataset is prepared there
    for variant in (None, "smoke"):
        config = load_config(name, variant)
        with pytest.raises(ValueError, match=r"is not prepared in (.|\n)*fewstep_jax\.data\.prepare --dataset="):
            experiment.check(config, num_devices=1)


def test_scm_paper_values():
    """sCM App. G, as summarized in the method notes."""
    sct = load_config("scm_sct_cifar", None)
    assert (sct.train.batch_size, sct.optim.name, sct.optim.lr, sct.optim.b2) == (512, "radam", 1e-4, 0.99)
    assert (sct.method.p_mean, sct.method.p_std, sct.model.dropout) == (-1.0, 1.4, 0.2)
    assert (sct.method.tangent_norm_c, sct.method.tangent_warmup, sct.method.t_mid) == (0.1, 10_000, 1.1)
    scd = load_config("scm_scd_cifar", None)
    assert scd.model.dropout == 0.0 and scd.method.name == "scm_scd"
    teacher = load_config("trigflow_cifar", None)
    assert (teacher.optim.lr, teacher.model.dropout, teacher.train.num_steps) == (1e-3, 0.13, 400_000)
    assert teacher.method.learned_weighting and teacher.eval.nfes == (18,) and teacher.eval.sampler == "heun"
    for size, channels, lr in (("s", 192, 1e-2), ("m", 256, 9e-3), ("l", 320, 8e-3), ("xl", 384, 7e-3)):
        t = load_config("trigflow_imagenet64", size)
        assert (t.model.name, t.model.size, t.model.channels) == ("edm2", size, None)  # size decides
        assert EDM2_SIZES[size.upper()] == channels
        assert (t.optim.lr, t.optim.eps, t.optim.decay_steps) == (lr, 1e-11, 35_000)
        assert (t.method.p_mean, t.method.p_std, t.train.batch_size) == (-0.8, 1.6, 2048)
        assert t.train.ema_sigma_rels == (0.05,) and not (t.train.ema_decays or t.train.ema_halflives)
        s = load_config("scm_sct_imagenet64", size)
        assert s.optim.lr == pytest.approx(lr / 100) and (s.method.p_mean, s.method.p_std) == (-1.0, 1.6)
        assert (s.model.dropout, s.model.dropout_res, s.train.num_steps) == (0.45, 16, 400_000)
        d = load_config("scm_scd_imagenet64", size)
        assert d.model.dropout == 0.0 and d.method.teacher == f"runs/trigflow_imagenet64_{size}"


def test_shortcut_paper_values():
    """Frans et al. 2024 and the official code, as summarized in the method notes."""
    celeba = load_config("shortcut_celebahq256", None)
    assert (celeba.model.name, celeba.model.size, celeba.model.patch) == ("dit", "B", 2)
    assert (celeba.optim.name, celeba.optim.lr, celeba.optim.weight_decay, celeba.optim.grad_clip) == (
        "adamw",
        1e-4,
        0.1,
        0.0,
    )
    assert (celeba.train.batch_size, celeba.train.num_steps, celeba.train.ema_decays) == (64, 410_000, (0.999,))
    assert (celeba.method.bootstrap_every, celeba.method.num_steps_max, celeba.method.cfg_scale) == (4, 128, 1.0)
    for variant, size in ((None, "B"), ("b", "B"), ("xl", "XL")):
        inet = load_config("shortcut_imagenet256", variant)
        assert inet.model.size == size and (inet.train.batch_size, inet.train.num_steps) == (256, 810_000)
        assert (inet.method.cfg_scale, inet.method.label_dropout, inet.data.conditional) == (1.5, 0.1, True)
        assert (inet.eval.nfes, inet.eval.guidance) == ((1, 4, 128), 1.5)  # guidance at 128 steps only


def test_ect_sct_paper_values():
    """ECT's official CIFAR-10 / ImageNet-64 recipes and SCT on top, as in the method notes."""
    ect = load_config("ect_cifar", None)
    assert (ect.train.batch_size, ect.optim.name, ect.optim.lr, ect.model.dropout) == (128, "radam", 1e-4, 0.2)
    assert ect.train.ema_decays == (0.9999,) and ect.train.init_from == "runs/edm_cifar"
    m = ect.method
    assert (m.p_mean, m.p_std, m.q, m.stage_length, m.k, m.b) == (-1.1, 2.0, 2.0, 25_000, 8.0, 1.0)
    assert (m.stage_offset, m.huber_c, m.weighting, m.sigma_min_shift, m.t_mid) == (1, 0.0, "inv_dt", 0.003, 0.821)
    sct = load_config("sct_cifar", None)
    assert sct.method.name == "sct" and sct.method.mapping == "smooth" and sct.method.reference_set == "batch"
    assert not sct.data.conditional and load_config("sct_cifar", "cond").data.conditional
    assert load_config("sct_cifar", "cond").train.init_from == "runs/edm_cifar_cond"
    for size, lr, dropout in (("s", 1e-3, 0.4), ("m", 9e-4, 0.5)):
        e = load_config("ect_imagenet64", size)
        assert (e.optim.lr, e.optim.b2, e.optim.schedule, e.optim.decay_steps) == (lr, 0.99, "inverse_sqrt", 2000)
        assert (e.model.dropout, e.model.size, e.train.num_steps, e.train.batch_size) == (dropout, size, 100_000, 128)
        assert e.model.dropout_res == 16 and e.train.ema_sigma_rels == (0.01, 0.05, 0.10)
        assert (e.method.q, e.method.huber_c, e.method.weighting, e.method.t_mid) == (4.0, 0.06, "edm", 1.526)
        assert (e.method.p_mean, e.method.p_std) == (-0.8, 1.6)
        assert load_config("sct_imagenet64", size).method.name == "sct"
