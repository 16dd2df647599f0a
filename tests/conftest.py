"""Shared test helpers: config loading, a private cache dir, CLI runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")

# The digits classifier cache of the metrics lives in a per-test-run directory,
# so tests never read or write the user's cache.
os.environ.setdefault("FEWSTEP_CACHE", tempfile.mkdtemp(prefix="fewstep_test_cache_"))


def load_config(name: str, variant: str | None = "smoke"):
    """configs/<name>.py:<variant>, unlocked so tests can change it."""
    from fewstep_jax import config_lib

    return config_lib.load_config(os.path.join(CONFIGS, f"{name}.py"), variant)


def quiet(config, num_steps: int):
    """A short run without sampling or evaluation."""
    config.train.num_steps = num_steps
    config.train.sample_every = 0
    config.train.eval_every = 0
    config.train.log_every = 5
    return config


def restore_latest(config, workdir):
    """(step, state on the host, data-iterator state) of the latest checkpoint in workdir."""
    from fewstep_jax import experiment

    exp = experiment.setup(config, workdir)
    step = exp.checkpointer.latest_step()
    state, data_state = exp.checkpointer.restore(step, exp.abstract_state)
    exp.checkpointer.close()
    return step, jax.device_get(state), data_state


def assert_same_latest_checkpoint(config, workdir_a, workdir_b, step: int) -> None:
    """Both workdirs' latest checkpoints are at `step` and hold bit-identical states."""
    step_a, state_a, _ = restore_latest(config, workdir_a)
    step_b, state_b, _ = restore_latest(config, workdir_b)
    assert step_a == step_b == step
    for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def read_jsonl(workdir):
    """The records of workdir/metrics.jsonl."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def run_cli(args: list[str], *, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """python -m fewstep_jax.main ARGS in the repository root."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "fewstep_jax.main", *args],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class CallLog:
    """The (t, d) of every network call a Recorder saw (eager sampling only)."""

    def __init__(self):
        self.calls: list[tuple[float, float]] = []


class Recorder(nn.Module):
    """A network that outputs zeros and logs the time and `d` inputs of each call."""

    num_classes: int = 0
    use_d: bool = True
    log: CallLog = None  # type: ignore[assignment]

    @nn.compact
    def __call__(self, x, t, y=None, d=None, train=False):
        self.log.calls.append((float(t[0]), float(d[0])))
        return jnp.zeros_like(x)


@pytest.fixture
def workdir(tmp_path):
    return str(tmp_path / "run")
