"""The training loop: exact resumption, the non-finite guard, SIGTERM and SIGKILL, multi-device
runs, checkpoint retention and early stops. Every test here trains (marked slow)."""

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
from conftest import REPO, assert_same_latest_checkpoint, load_config, quiet, read_jsonl, restore_latest, run_cli

from fewstep_jax import experiment, methods, train
from fewstep_jax.methods.flow import FlowMatching

pytestmark = pytest.mark.slow


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
    exp = experiment.setup(config, workdir)
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


class NanLossAfterStep12(FlowMatching):
    name = "test_nan_loss"

    def loss(self, params, batch, rng, step, inputs=methods.LossInputs()):
        loss, metrics = super().loss(params, batch, rng, step, inputs)
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


class NanGradAfterStep12(FlowMatching):
    name = "test_nan_grad"

    def loss(self, params, batch, rng, step, inputs=methods.LossInputs()):
        loss, metrics = super().loss(params, batch, rng, step, inputs)
        return nan_gradient_when(loss, step >= 12), metrics


@pytest.fixture(autouse=True)
def poisoned_methods(monkeypatch):
    """The two methods above are registered only while a test of this file runs, so the registry
    that the benchmark and reproduction harnesses list stays the package's."""
    for cls in (NanLossAfterStep12, NanGradAfterStep12):
        monkeypatch.setitem(methods.REGISTRY, cls.name, cls)


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
    build = experiment.optim_lib.build

    def poisoned(cfg, num_steps):
        tx, schedule = build(cfg, num_steps)
        return optax.chain(tx, optax.scale_by_schedule(lambda s: jnp.where(s >= bad_step, jnp.nan, 1.0))), schedule

    monkeypatch.setattr(experiment.optim_lib, "build", poisoned)


def checkpoint_params_are_finite(config, workdir) -> list[int]:
    """Steps of all checkpoints in workdir, after asserting each one's parameters and EMAs are finite."""
    exp = experiment.setup(config, workdir)
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
    assert_same_latest_checkpoint(config, straight, killed, 40)


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


def test_stop_on_a_checkpoint_step_exits_cleanly(tmp_path):
    """stop_at (like SIGTERM) on a step that was just checkpointed must not save it twice."""
    config = quiet(load_config("flow_toy2d"), 20)
    config.train.checkpoint_every = 10
    summary = train.train_and_evaluate(config, str(tmp_path / "w"), stop_at=10)
    assert summary["status"] == "stopped" and summary["end_step"] == 10
