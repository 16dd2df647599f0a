"""Multi-process training on one machine: two processes x 4 simulated CPU devices, joined by
jax.distributed through a coordinator on 127.0.0.1 (launch/local.sh), against one process x 8
devices. Same global batch, same seed: the parameters after N steps must agree to float32
rounding (the reductions are split differently), and both runs write one set of logs, samples
and checkpoints (process 0 writes logs and images; every process takes part in the Orbax save).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import REPO, load_config, read_jsonl, restore_latest, run_cli

STEPS = 6
ARGS = [
    "--config=configs/trigflow_toy2d.py:smoke",
    f"--config.train.num_steps={STEPS}",
    "--config.train.log_every=3",
    f"--config.train.checkpoint_every={STEPS}",
    f"--config.train.sample_every={STEPS}",
    "--config.train.eval_every=0",
]

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


EIGHT_DEVICES = {"JAX_NUM_CPU_DEVICES": "8", "JAX_PLATFORMS": "cpu"}


@pytest.fixture(scope="module")
def replicated_run(tmp_path_factory):
    """The reference: one process, 8 devices, data parallel (replicated state)."""
    workdir = str(tmp_path_factory.mktemp("replicated") / "run")
    res = run_cli([*ARGS, "--config.sharding.strategy=replicated", f"--workdir={workdir}"], env=EIGHT_DEVICES)
    assert res.returncode == 0, res.stderr[-3000:]
    return workdir


def test_two_processes_of_four_devices_match_one_process_of_eight(replicated_run, tmp_path):
    single, multi = replicated_run, str(tmp_path / "multi")

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


def test_fsdp_matches_replicated_on_eight_devices_and_restores_on_one(replicated_run, tmp_path):
    """FSDP over a (data 2, fsdp 4) mesh trains the same run as data parallelism: the loss
    trajectory and final parameters agree to float32 tolerance. Its checkpoint (sharded leaves)
    restores in this single-device test process: restore onto another device count and mesh."""
    runs = {"replicated": replicated_run, "fsdp": str(tmp_path / "fsdp")}
    fsdp = ["--config.sharding.strategy=fsdp", "--config.sharding.fsdp=4", "--config.sharding.min_shard_size=64"]
    res = run_cli([*ARGS, *fsdp, f"--workdir={runs['fsdp']}"], env=EIGHT_DEVICES)
    assert res.returncode == 0, res.stderr[-3000:]
    line = next(line for line in res.stderr.splitlines() if "fsdp:" in line)
    split, total = (int(v) for v in line.split("fsdp: ")[1].split(" train-state")[0].split(" of "))
    assert split > 0.5 * total, line  # most of the state really is sharded

    loss = {k: [r["loss"] for r in read_jsonl(w) if "loss" in r] for k, w in runs.items()}
    np.testing.assert_allclose(loss["fsdp"], loss["replicated"], rtol=1e-5)
    config = load_config("trigflow_toy2d")
    _, state_r, _ = restore_latest(config, runs["replicated"])
    _, state_f, _ = restore_latest(config, runs["fsdp"])  # sharded on 8 devices, restored on 1
    for a, b in zip(jax.tree.leaves(state_r), jax.tree.leaves(state_f)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)


def test_sigterm_to_one_process_stops_every_process_at_the_same_step(tmp_path):
    """Preemption often signals one host first. The processes agree on every step (a one-int
    all-gather), so all of them save the same checkpoint and exit cleanly instead of one leaving
    the others blocked in a collective."""
    workdir = str(tmp_path / "w")
    port = free_port()
    args = [
        "--config=configs/flow_toy2d.py:smoke", f"--workdir={workdir}", "--config.train.num_steps=1000000",
        "--config.train.log_every=5", "--config.train.checkpoint_every=1000000",
        "--config.train.eval_every=0", "--config.train.sample_every=0",
    ]
    procs = []
    for i in range(2):
        env = dict(
            os.environ, FEWSTEP_DISTRIBUTED="1", FEWSTEP_COORDINATOR=f"127.0.0.1:{port}", FEWSTEP_NUM_PROCESSES="2",
            FEWSTEP_PROCESS_ID=str(i), JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="2",
        )
        log = open(tmp_path / f"process{i}.log", "w")  # files, not pipes: a full pipe would block
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "fewstep_jax.main", *args], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
        ))
        log.close()
    try:
        metrics = os.path.join(workdir, "metrics.jsonl")
        deadline = time.time() + 300
        while not (os.path.exists(metrics) and os.path.getsize(metrics) > 0):
            assert all(p.poll() is None for p in procs), (tmp_path / "process0.log").read_text()[-3000:]
            assert time.time() < deadline, "training never started"
            time.sleep(0.2)
        procs[1].send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=240)
    finally:
        for p in procs:  # never leave a training process behind
            if p.poll() is None:
                p.kill()
    outs = [(tmp_path / f"process{i}.log").read_text() for i in range(2)]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    stops = [int(re.search(r"saving a checkpoint at step (\d+)", out).group(1)) for out in outs]
    assert stops[0] == stops[1] > 0
    with open(os.path.join(workdir, "summary.json")) as f:
        assert json.load(f)["status"] == "preempted"
    assert str(stops[0]) in os.listdir(os.path.join(workdir, "checkpoints"))
