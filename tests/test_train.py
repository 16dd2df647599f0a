"""The training loop: exact resumption, the non-finite guard, SIGTERM, multi-device
runs, checkpoints, and the errors bad input must get before any compilation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import REPO, load_config, quiet, run_cli

from fewstep_jax import checkpoint as ckpt_lib
from fewstep_jax import config_lib, methods, train
from fewstep_jax.methods.flow import FlowMatching


def restore_latest(config, workdir):
    exp = train.setup(config, workdir)
    step = exp.checkpointer.latest_step()
    state, data_state = exp.checkpointer.restore(step, exp.abstract_state)
    exp.checkpointer.close()
    return step, jax.device_get(state), data_state


def read_jsonl(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


# ---------------------------------------------------------------------------
# Exact resumption


def test_resume_reproduces_the_uninterrupted_run_bit_for_bit(tmp_path):
    config = quiet(load_config("trigflow_toy2d"), 20)  # learned weighting, EMA, cosine lr
    config.train.checkpoint_every = 100
    config.model.dropout = 0.1  # the dropout keys must resume too
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    train.train_and_evaluate(config, straight)
    first = train.train_and_evaluate(config, resumed, stop_at=10)
    assert first["status"] == "stopped" and first["end_step"] == 10
    second = train.train_and_evaluate(config, resumed)
    assert second["start_step"] == 10 and second["end_step"] == 20

    step_a, state_a, data_a = restore_latest(config, straight)
    step_b, state_b, data_b = restore_latest(config, resumed)
    assert step_a == step_b == 20 and data_a == data_b
    leaves_a, tree_a = jax.tree.flatten(state_a)
    leaves_b, tree_b = jax.tree.flatten(state_b)
    assert tree_a == tree_b
    for a, b in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # A changed parameter would show: the two halves really did train.
    assert not np.array_equal(
        np.asarray(jax.tree.leaves(state_a.params)[0]),
        np.asarray(jax.tree.leaves(restore_latest_at(config, resumed, 10).params)[0]),
    )
    loss_a = {r["step"]: r["loss"] for r in read_jsonl(straight)}
    loss_b = {r["step"]: r["loss"] for r in read_jsonl(resumed)}
    assert loss_a[15] == loss_b[15] and loss_a[20] == loss_b[20]


def restore_latest_at(config, workdir, step):
    exp = train.setup(config, workdir)
    state, _ = exp.checkpointer.restore(step, exp.abstract_state)
    exp.checkpointer.close()
    return jax.device_get(state)


def test_finished_workdir_only_rewrites_samples_and_metrics(tmp_path):
    config = quiet(load_config("flow_toy2d"), 5)
    workdir = str(tmp_path / "w")
    train.train_and_evaluate(config, workdir)
    summary = train.train_and_evaluate(config, workdir)
    assert summary["start_step"] == summary["end_step"] == 5
    assert "eval" not in summary and os.listdir(os.path.join(workdir, "samples"))  # eval_every=0: no metrics
    config.train.eval_every = 5
    summary = train.train_and_evaluate(config, workdir)
    assert summary["start_step"] == 5 and "eval" in summary


def test_checkpoint_retention_keeps_the_newest(tmp_path):
    config = quiet(load_config("flow_toy2d"), 20)
    config.train.checkpoint_every = 5
    config.train.keep_checkpoints = 2
    workdir = str(tmp_path / "w")
    train.train_and_evaluate(config, workdir)
    steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    assert steps == [15, 20]


# ---------------------------------------------------------------------------
# The non-finite guard


@methods.register("test_nan_loss")
class NanLossAfterStep12(FlowMatching):
    def loss(self, params, ema_params, batch, rng, step, frozen=None, extra=None):
        loss, metrics = super().loss(params, ema_params, batch, rng, step, frozen)
        return jnp.where(step >= 12, jnp.nan, loss), metrics


@jax.custom_vjp
def nan_gradient_when(x, bad):
    """Identity in value; its gradient is NaN where `bad` (a finite loss with NaN grads)."""
    return x


def _poison_fwd(x, bad):
    return x, bad


def _poison_bwd(bad, g):
    return jnp.where(bad, jnp.nan, g), None


nan_gradient_when.defvjp(_poison_fwd, _poison_bwd)


@methods.register("test_nan_grad")
class NanGradAfterStep12(FlowMatching):
    def loss(self, params, ema_params, batch, rng, step, frozen=None, extra=None):
        loss, metrics = super().loss(params, ema_params, batch, rng, step, frozen)
        return nan_gradient_when(loss, step >= 12), metrics


@pytest.mark.parametrize("name,quantity", [("test_nan_loss", "loss"), ("test_nan_grad", "gradient norm")])
def test_nonfinite_guard_stops_and_keeps_last_good_checkpoint(tmp_path, name, quantity):
    config = quiet(load_config("flow_toy2d"), 30)
    config.method.name = name
    config.train.checkpoint_every = 10
    workdir = str(tmp_path / "w")
    with pytest.raises(train.NonFiniteError, match=rf"non-finite {quantity} at step 13.*checkpoint \(step 10\)"):
        train.train_and_evaluate(config, workdir)
    step, state, _ = restore_latest(config, workdir)
    assert step == 10
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state.params))


def nan_learning_rate_from_step(monkeypatch, bad_step: int) -> None:
    """Every optimizer of the next runs scales its update by NaN from `bad_step` on: the loss and
    the gradients stay finite, only the parameter update is not."""
    build = train.optim_lib.build

    def poisoned(cfg, num_steps):
        tx, schedule = build(cfg, num_steps)
        return optax.chain(tx, optax.scale_by_schedule(lambda s: jnp.where(s >= bad_step, jnp.nan, 1.0))), schedule

    monkeypatch.setattr(train.optim_lib, "build", poisoned)


def checkpoint_params_are_finite(config, workdir) -> list[int]:
    """Steps of all checkpoints in workdir, after asserting each one's parameters and EMAs are finite."""
    exp = train.setup(config, workdir)
    steps = list(exp.checkpointer.manager.all_steps())
    for step in steps:
        state, _ = exp.checkpointer.restore(step, exp.abstract_state)
        leaves = jax.tree.leaves(jax.device_get((state.params, state.ema)))
        assert all(np.all(np.isfinite(np.asarray(x))) for x in leaves), f"non-finite checkpoint at step {step}"
    exp.checkpointer.close()
    return steps


def test_nonfinite_parameter_update_stops_and_is_never_checkpointed(tmp_path, monkeypatch):
    nan_learning_rate_from_step(monkeypatch, 12)
    config = quiet(load_config("flow_toy2d"), 30)
    config.train.checkpoint_every = 10
    workdir = str(tmp_path / "w")
    with pytest.raises(train.NonFiniteError, match=r"non-finite parameter update at step 13.*checkpoint \(step 10\)"):
        train.train_and_evaluate(config, workdir)
    assert checkpoint_params_are_finite(config, workdir) == [10]
    # A preemption-style save right after the bad step (no log in between) must refuse, not save it.
    config.train.log_every = 1000
    fresh = str(tmp_path / "preempted")
    with pytest.raises(train.NonFiniteError, match="non-finite parameter update at step 13"):
        train.train_and_evaluate(config, fresh, stop_at=15)
    assert checkpoint_params_are_finite(config, fresh) == [10]


def test_replace_grads_policy_keeps_training_and_warns(tmp_path, caplog):
    """ECT's official behaviour: non-finite gradient entries are replaced and training goes on."""
    config = quiet(load_config("flow_toy2d"), 20)
    config.method.name = "test_nan_grad"  # NaN gradients from step 13 on
    config.train.on_nonfinite = "replace_grads"
    config.train.checkpoint_every = 10
    workdir = str(tmp_path / "w")
    with caplog.at_level("WARNING"):
        summary = train.train_and_evaluate(config, workdir)
    assert summary["status"] == "finished" and summary["end_step"] == 20
    warnings = [r.getMessage() for r in caplog.records if "non-finite gradient entries replaced" in r.getMessage()]
    assert warnings and warnings[0].startswith("steps 11-15: ")
    logged = read_jsonl(workdir)
    replaced = [r["nonfinite_grads_replaced"] > 0 for r in logged if "nonfinite_grads_replaced" in r]
    assert replaced == [False, False, True, True]  # logs at steps 5, 10, 15, 20
    assert checkpoint_params_are_finite(config, workdir) == [10, 20]


# ---------------------------------------------------------------------------
# SIGTERM


def test_sigterm_saves_and_exits_cleanly(tmp_path):
    workdir = str(tmp_path / "w")
    args = [
        "--config=configs/flow_toy2d.py:smoke",
        f"--workdir={workdir}",
        "--config.train.num_steps=1000000",
        "--config.train.log_every=5",
        "--config.train.checkpoint_every=1000000",
        "--config.train.eval_every=0",
        "--config.train.sample_every=0",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "fewstep_jax.main", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 240
    while not (os.path.exists(metrics) and os.path.getsize(metrics) > 0):
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "training never started"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "SIGTERM received" in out
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    assert summary["status"] == "preempted" and 0 < summary["end_step"] < 1000000
    steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    assert steps[-1] == summary["end_step"]


def test_sigkill_resumes_from_the_last_checkpoint_and_matches_an_uninterrupted_run(tmp_path):
    """SIGKILL gives no chance to save: the rerun resumes from the last complete checkpoint
    (a save the kill interrupted is left in Orbax's temporary directory and ignored) and ends
    bit-identical to a run that was never killed."""
    common = [
        "--config=configs/flow_toy2d.py:smoke",
        "--config.train.num_steps=40",
        "--config.train.log_every=2",
        "--config.train.checkpoint_every=4",
        "--config.train.keep_checkpoints=20",
        "--config.train.eval_every=0",
        "--config.train.sample_every=0",
    ]
    killed, straight = str(tmp_path / "killed"), str(tmp_path / "straight")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fewstep_jax.main", *common, f"--workdir={killed}"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    checkpoints = os.path.join(killed, "checkpoints")
    deadline = time.time() + 240
    while not (os.path.isdir(checkpoints) and any(d.isdigit() and int(d) >= 8 for d in os.listdir(checkpoints))):
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    proc.kill()
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    before = max(int(d) for d in os.listdir(checkpoints) if d.isdigit())
    assert before < 40

    res = run_cli([*common, f"--workdir={killed}"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"at step {before}" in res.stderr  # "Resumed from ... at step N"
    assert run_cli([*common, f"--workdir={straight}"]).returncode == 0
    config = load_config("flow_toy2d")
    step_a, state_a, _ = restore_latest(config, straight)
    step_b, state_b, _ = restore_latest(config, killed)
    assert step_a == step_b == 40
    for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ---------------------------------------------------------------------------
# Eight simulated devices


def test_eight_device_run_matches_one_device(tmp_path):
    """Data parallel over 8 simulated CPU devices computes the same training run."""
    common = [
        "--config=configs/trigflow_toy2d.py:smoke",
        "--config.train.num_steps=10",
        "--config.train.log_every=5",
        "--config.train.eval_every=10",
        "--config.train.sample_every=10",
    ]
    runs = {}
    for n in (1, 8):
        workdir = str(tmp_path / f"dev{n}")
        res = run_cli([*common, f"--workdir={workdir}"], env={"JAX_NUM_CPU_DEVICES": str(n)})
        assert res.returncode == 0, res.stderr[-3000:]
        assert f"{n} devices" in res.stderr
        runs[n] = read_jsonl(workdir)
        assert any(f.endswith(".png") for f in os.listdir(os.path.join(workdir, "samples")))
    loss = {n: [r["loss"] for r in recs if "loss" in r] for n, recs in runs.items()}
    np.testing.assert_allclose(loss[8], loss[1], rtol=1e-4)


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


def test_more_steps_under_a_decaying_schedule_is_a_config_change(tmp_path):
    """A cosine schedule decays over train.num_steps: extending the run changes every later lr."""
    config = quiet(load_config("flow_toy2d"), 5)
    assert config.optim.schedule == "cosine"
    workdir = str(tmp_path / "w")
    train.train_and_evaluate(config, workdir)
    config.train.num_steps = 10
    with pytest.raises(ckpt_lib.CheckpointError, match=r"train.num_steps: .*cosine learning-rate schedule"):
        train.train_and_evaluate(config, workdir)


def test_stop_on_a_checkpoint_step_exits_cleanly(tmp_path):
    """stop_at (like SIGTERM) on a step that was just checkpointed must not save it twice."""
    config = quiet(load_config("flow_toy2d"), 20)
    config.train.checkpoint_every = 10
    summary = train.train_and_evaluate(config, str(tmp_path / "w"), stop_at=10)
    assert summary["status"] == "stopped" and summary["end_step"] == 10


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


def test_sample_and_eval_without_checkpoint_say_what_to_do(tmp_path):
    res = run_cli(["--config=configs/flow_toy2d.py:smoke", f"--workdir={tmp_path}", "--mode=eval"])
    assert res.returncode == 1
    assert "no checkpoint in" in res.stderr and "--mode=train" in res.stderr


def test_eval_of_an_earlier_checkpoint(tmp_path):
    config = quiet(load_config("flow_toy2d"), 10)
    config.train.checkpoint_every = 5
    workdir = str(tmp_path / "w")
    train.train_and_evaluate(config, workdir)
    config.eval.nfes = (1,)
    config.eval.num_samples = 100
    config.eval.checkpoint_step = 5
    train.eval_mode(config, workdir)
    assert os.path.isdir(os.path.join(workdir, "eval", "step0000005_euler"))
    config.eval.checkpoint_step = 7
    with pytest.raises(ckpt_lib.CheckpointError, match=r"checkpoint_step=7 is not in .*saved steps: \[5, 10\]"):
        train.eval_mode(config, workdir)


def test_sampling_uses_the_first_configured_ema(tmp_path):
    """Config order, not the sorted key order that pytrees give dicts."""
    config = quiet(load_config("flow_toy2d"), 1)
    config.train.ema_decays = (0.999, 0.9)  # sorted keys would put ema_0.9 first
    exp = train.setup(config, str(tmp_path / "w"))
    state = train.init_state(exp)
    zeros = jax.tree.map(jnp.zeros_like, state.ema["ema_0.9"])
    state = state.replace(ema={"ema_0.999": state.ema["ema_0.999"], "ema_0.9": zeros})
    assert exp.first_ema == "ema_0.999"
    chosen = exp.sampling_params(state)["net"]
    expected = state.ema["ema_0.999"]["net"]
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(chosen), jax.tree.leaves(expected)))
    assert any(np.any(np.asarray(a) != 0) for a in jax.tree.leaves(chosen))
    exp.checkpointer.close()


def test_init_from_a_pretrained_run(tmp_path):
    pretrained = str(tmp_path / "pre")
    config = quiet(load_config("trigflow_toy2d"), 5)
    train.train_and_evaluate(config, pretrained)
    _, state_pre, _ = restore_latest(config, pretrained)

    tuned = quiet(load_config("trigflow_toy2d"), 5)
    tuned.train.init_from = pretrained
    exp = train.setup(tuned, str(tmp_path / "tuned"))
    state, step = train.restore_or_init(exp)
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
    exp = train.setup(wrong, str(tmp_path / "wrong"))
    with pytest.raises(ValueError, match="does not match config.model"):
        train.restore_or_init(exp)
    exp.checkpointer.close()

    missing = quiet(load_config("trigflow_toy2d"), 5)
    missing.train.init_from = str(tmp_path / "nowhere")
    with pytest.raises(ckpt_lib.CheckpointError, match="no trained run at .*nowhere.*train it first"):
        train.train_and_evaluate(missing, str(tmp_path / "m"))


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
    step_a, state_a, _ = restore_latest(config, straight)
    step_b, state_b, _ = restore_latest(config, damaged)
    assert step_a == step_b == 12
    for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
