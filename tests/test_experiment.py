"""Building an experiment: every input error before compilation, restoring (config changes,
unreadable and corrupted checkpoints), the EMA that sampling uses, and train.init_from."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_same_latest_checkpoint, load_config, quiet, restore_latest, run_cli

from fewstep_jax import checkpoint as ckpt_lib
from fewstep_jax import config_lib, experiment, train

# ---------------------------------------------------------------------------
# Errors before compilation


@pytest.fixture
def no_compilation(monkeypatch):
    """Any jax.jit call fails the test: errors must come first."""

    def boom(*args, **kwargs):
        raise AssertionError("compilation started before the error was raised")

    monkeypatch.setattr(jax, "jit", boom)


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda c: c.train.__setitem__("num_stepz", 3), r"unknown key\(s\) \['num_stepz'\] in config section 'train'"),
        (lambda c: c.__setitem__("trian", {}), r"unknown top-level config key\(s\) \['trian'\]"),
        (lambda c: c.method.__setitem__("name", "flwo"), r"unknown method 'flwo'; known methods: .*flow"),
        (lambda c: c.model.__setitem__("name", "resnet"), r"resnet"),
        (lambda c: c.data.__setitem__("name", "cifar100"), r"cifar100"),
        (lambda c: c.data.__setitem__("distribution", "spiral9"), r"spiral9"),
        (lambda c: c.optim.__setitem__("name", "sgdd"), r"unknown optimizer 'sgdd'"),
        (lambda c: c.eval.__setitem__("sampler", "rk45"), r"unknown sampler 'rk45'"),
        (lambda c: c.train.__setitem__("batch_size", 30), None),  # valid on 1 device
        (lambda c: c.optim.__setitem__("lr", float("nan")), r"optim.lr=nan is not a finite number"),
        (lambda c: c.optim.__setitem__("lr", float("inf")), r"optim.lr=inf is not a finite number"),
        (lambda c: c.optim.__setitem__("lr", -1e-3), r"optim.lr must be positive, got -0.001"),
        (lambda c: c.optim.__setitem__("b2", 1.0), r"optim.b2 must be in \[0, 1\), got 1.0"),
        (lambda c: c.optim.__setitem__("eps", 0.0), r"optim.eps must be positive"),
        (lambda c: c.optim.__setitem__("end_factor", -0.5), r"optim.end_factor must be >= 0"),
        (lambda c: c.optim.__setitem__("warmup_steps", -10), r"optim.warmup_steps must be >= 0"),
        (lambda c: c.train.__setitem__("ema_decays", (0.99, float("nan"))), r"train.ema_decays\[1\]=nan is not"),
        (lambda c: c.train.__setitem__("ema_halflives", (float("inf"),)), r"train.ema_halflives\[0\]=inf is not"),
        (lambda c: c.train.__setitem__("on_nonfinite", "ignore"), r"train.on_nonfinite must be one of"),
        (lambda c: c.method.__setitem__("noise_std", float("nan")), r"method.noise_std=nan is not a finite number"),
    ],
)
def test_bad_config_fails_before_compilation(tmp_path, no_compilation, mutate, message):
    config = quiet(load_config("flow_toy2d"), 5)
    mutate(config)
    if message is None:
        config_lib.validate(config, num_devices=1)
        return
    with pytest.raises(ValueError, match=message):
        train.train_and_evaluate(config, str(tmp_path / "w"))


def test_unusable_workdirs_get_one_line_errors(tmp_path, no_compilation):
    afile = tmp_path / "afile"
    afile.write_text("")
    config = quiet(load_config("flow_toy2d"), 5)
    with pytest.raises(ValueError, match=rf"--workdir={afile} is a file, not a directory"):
        train.train_and_evaluate(config, str(afile))
    with pytest.raises(ValueError, match=rf"cannot be created: {afile} is a file, not a directory"):
        train.train_and_evaluate(config, str(afile / "run" / "x"))


@pytest.mark.slow
def test_workdir_under_a_file_on_the_command_line(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    result = run_cli(["--config=configs/flow_toy2d.py:smoke", f"--workdir={afile}/run"])
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: --workdir={afile}/run cannot be created: {afile} is a file, not a directory"
    )
    assert "Traceback" not in result.stderr


def test_batch_not_divisible_by_devices():
    config = load_config("flow_toy2d")
    config.train.batch_size = 36
    with pytest.raises(ValueError, match=r"train.batch_size=36 is not divisible by the 8 devices"):
        config_lib.validate(config, num_devices=8)
    config.train.batch_size = 32
    config_lib.validate(config, num_devices=8)


@pytest.mark.slow
def test_unknown_command_line_override_is_rejected(tmp_path):
    res = run_cli(["--config=configs/flow_toy2d.py:smoke", f"--workdir={tmp_path}", "--config.train.num_stepz=3"])
    assert res.returncode == 2
    assert "error: bad --config.* override: 'num_stepz'" in res.stderr and 'Did you mean "num_steps"' in res.stderr
    assert "Traceback" not in res.stderr
    res = run_cli(["--config=configs/flow_toy2d.py:smok", f"--workdir={tmp_path}"])
    assert res.returncode == 2 and "unknown config variant 'smok'" in res.stderr and "Traceback" not in res.stderr
    assert not os.path.exists(os.path.join(tmp_path, "checkpoints"))


def test_unknown_variant_is_rejected():
    with pytest.raises(ValueError, match="unknown config variant 'smok'; known variants: smoke"):
        load_config("flow_toy2d", "smok")


# ---------------------------------------------------------------------------
# Restoring


@pytest.mark.slow
def test_incompatible_checkpoint_is_refused_with_the_differences(tmp_path):
    config = quiet(load_config("flow_toy2d"), 5)
    config.optim.schedule = "constant"
    workdir = str(tmp_path / "w")
    train.train_and_evaluate(config, workdir)
    changed = quiet(load_config("flow_toy2d"), 10)  # more steps: allowed under a constant lr
    changed.optim.schedule = "constant"
    changed.method.noise_std = 0.5
    changed.optim.lr = 3e-4
    changed.train.log_every = 1  # run-control keys may change
    with pytest.raises(ckpt_lib.CheckpointError) as err:
        train.train_and_evaluate(changed, workdir)
    text = str(err.value)
    assert "method.noise_std: checkpoint has 1.0, config has 0.5" in text
    assert "optim.lr" in text and "train.num_steps" not in text and "log_every" not in text
    assert "--allow_config_change" in text
    summary = train.train_and_evaluate(changed, workdir, allow_config_change=True)
    assert summary["start_step"] == 5 and summary["end_step"] == 10


@pytest.mark.slow
def test_more_steps_under_a_decaying_schedule_is_a_config_change(tmp_path):
    """A cosine schedule decays over train.num_steps: extending the run changes every later lr."""
    config = quiet(load_config("flow_toy2d"), 5)
    assert config.optim.schedule == "cosine"
    workdir = str(tmp_path / "w")
    train.train_and_evaluate(config, workdir)
    config.train.num_steps = 10
    with pytest.raises(ckpt_lib.CheckpointError, match=r"train.num_steps: .*cosine learning-rate schedule"):
        train.train_and_evaluate(config, workdir)


@pytest.mark.slow
def test_unreadable_checkpoint_is_reported(tmp_path):
    config = quiet(load_config("flow_toy2d"), 5)
    config.optim.schedule = "constant"  # so that extending the run below is a compatible change
    workdir = str(tmp_path / "w")
    train.train_and_evaluate(config, workdir)
    state_dir = os.path.join(workdir, "checkpoints", "5", "state")
    for root, _, files in os.walk(state_dir):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"garbage")
    config.train.num_steps = 10
    with pytest.raises(ckpt_lib.CheckpointError, match=r"checkpoints/5 cannot be read"):
        train.train_and_evaluate(config, workdir)


@pytest.mark.slow
def test_corrupted_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    """A damaged latest checkpoint (its array files truncated after the atomic rename) is
    detected at restore; training resumes from the previous checkpoint with a warning and ends
    bit-identical to a run that never saw the damage."""
    config = quiet(load_config("flow_toy2d"), 12)
    config.train.checkpoint_every = 4
    config.train.keep_checkpoints = 3
    straight, damaged = str(tmp_path / "straight"), str(tmp_path / "damaged")
    train.train_and_evaluate(config, straight)
    first = train.train_and_evaluate(config, damaged, stop_at=8)
    assert first["end_step"] == 8
    state_dir = os.path.join(damaged, "checkpoints", "8", "state")
    truncated = 0
    for root, _, files in os.walk(state_dir):
        for name in files:
            path = os.path.join(root, name)
            size = os.path.getsize(path)
            if size > 16:
                with open(path, "r+b") as f:
                    f.truncate(size // 2)
                truncated += 1
    assert truncated > 0
    with caplog.at_level("WARNING"):
        second = train.train_and_evaluate(config, damaged)
    assert second["start_step"] == 4 and second["end_step"] == 12
    assert any("Falling back to the previous checkpoint, step 4" in r.getMessage() for r in caplog.records)
    assert_same_latest_checkpoint(config, straight, damaged, 12)


# ---------------------------------------------------------------------------
# The sampling EMA and train.init_from


def test_sampling_uses_the_first_configured_ema(tmp_path):
    """Config order, not the sorted key order that pytrees give dicts."""
    config = quiet(load_config("flow_toy2d"), 1)
    config.train.ema_decays = (0.999, 0.9)  # sorted keys would put ema_0.9 first
    exp = experiment.setup(config, str(tmp_path / "w"))
    state = experiment.init_state(exp)
    zeros = jax.tree.map(jnp.zeros_like, state.ema["ema_0.9"])
    state = state.replace(ema={"ema_0.999": state.ema["ema_0.999"], "ema_0.9": zeros})
    assert exp.first_ema == "ema_0.999"
    chosen = exp.sampling_params(state)["net"]
    expected = state.ema["ema_0.999"]["net"]
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(chosen), jax.tree.leaves(expected)))
    assert any(np.any(np.asarray(a) != 0) for a in jax.tree.leaves(chosen))
    exp.checkpointer.close()


@pytest.mark.slow
def test_init_from_a_pretrained_run(tmp_path):
    pretrained = str(tmp_path / "pre")
    config = quiet(load_config("trigflow_toy2d"), 5)
    train.train_and_evaluate(config, pretrained)
    _, state_pre, _ = restore_latest(config, pretrained)

    tuned = quiet(load_config("trigflow_toy2d"), 5)
    tuned.train.init_from = pretrained
    exp = experiment.setup(tuned, str(tmp_path / "tuned"))
    state, step = experiment.restore_or_init(exp)
    exp.checkpointer.close()
    assert step == 0
    ema_net = state_pre.ema["ema_0.995"]["net"]
    for got in (state.params["net"], state.ema["ema_0.995"]["net"]):
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ema_net)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The learned weighting is re-initialized (zeros), not copied.
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(state.params["logvar"]))

    wrong = quiet(load_config("trigflow_toy2d"), 5)
    wrong.train.init_from = pretrained
    wrong.model.hidden = 32
    exp = experiment.setup(wrong, str(tmp_path / "wrong"))
    with pytest.raises(ValueError, match="does not match config.model"):
        experiment.restore_or_init(exp)
    exp.checkpointer.close()

    missing = quiet(load_config("trigflow_toy2d"), 5)
    missing.train.init_from = str(tmp_path / "nowhere")
    with pytest.raises(ckpt_lib.CheckpointError, match="no trained run at .*nowhere.*train it first"):
        train.train_and_evaluate(missing, str(tmp_path / "m"))
