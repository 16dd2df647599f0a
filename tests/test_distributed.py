"""Multi-process training on one machine: two processes x 4 simulated CPU devices, joined by
jax.distributed through a coordinator on 127.0.0.1 (launch/local.sh), against one process x 8
devices. Same global batch, same seed: the parameters after N steps must agree to float32
rounding (the reductions are split differently), and both runs write one set of logs, samples
and checkpoints (process 0 writes logs and images; every process takes part in the Orbax save).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import jax
import numpy as np
from conftest import REPO, load_config, run_cli
from test_train import read_jsonl, restore_latest

STEPS = 6
ARGS = [
    "--config=configs/trigflow_toy2d.py:smoke",
    f"--config.train.num_steps={STEPS}",
    "--config.train.log_every=3",
    f"--config.train.checkpoint_every={STEPS}",
    f"--config.train.sample_every={STEPS}",
    "--config.train.eval_every=0",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_of_four_devices_match_one_process_of_eight(tmp_path):
    single, multi = str(tmp_path / "single"), str(tmp_path / "multi")
    res = run_cli([*ARGS, f"--workdir={single}"], env={"JAX_NUM_CPU_DEVICES": "8", "JAX_PLATFORMS": "cpu"})
    assert res.returncode == 0, res.stderr[-3000:]

    launch = os.path.join(REPO, "launch", "local.sh")
    env = dict(os.environ, PYTHON=sys.executable)
    res = subprocess.run(
        [launch, "-n", "2", "-d", "4", "-p", str(free_port()), "--", *ARGS, f"--workdir={multi}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert res.returncode == 0, res.stdout[-4000:]
    out = res.stdout
    # Both processes joined one 8-device job.
    for i in (0, 1):
        assert any(line.startswith(f"[{i}] ") and "8 devices" in line for line in out.splitlines()), out[-3000:]
    assert any(f.endswith(".png") for f in os.listdir(os.path.join(multi, "samples")))

    config = load_config("trigflow_toy2d")
    step_a, state_a, data_a = restore_latest(config, single)
    step_b, state_b, data_b = restore_latest(config, multi)
    assert step_a == step_b == STEPS and data_a == data_b
    leaves_a, leaves_b = jax.tree.leaves(state_a.params), jax.tree.leaves(state_b.params)
    assert len(leaves_a) == len(leaves_b)
    for a, b in zip(leaves_a, leaves_b):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)
    loss_a = [r["loss"] for r in read_jsonl(single) if "loss" in r]
    loss_b = [r["loss"] for r in read_jsonl(multi) if "loss" in r]
    assert len(loss_a) == len(loss_b) == 2
    np.testing.assert_allclose(loss_b, loss_a, rtol=1e-5)
