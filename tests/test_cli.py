"""End to end through the command line: train, sample and eval on digits."""

from __future__ import annotations

import json
import os

import pytest
from conftest import run_cli
from PIL import Image

pytestmark = pytest.mark.slow


def test_digits_train_sample_eval(tmp_path):
    workdir = str(tmp_path / "digits")
    base = ["--config=configs/trigflow_digits.py:smoke", f"--workdir={workdir}"]

    res = run_cli(base)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "steps/s" in res.stderr and "ETA" in res.stderr  # console progress
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert [r["step"] for r in records if "loss" in r] == [10, 20, 30]
    evals = [r for r in records if any(k.startswith("eval/") for k in r)]
    assert evals and "eval/euler_nfe1/fd" in evals[-1] and "floor/fd" in records[-2] | records[-1] | evals[-1]
    assert os.listdir(os.path.join(workdir, "tensorboard"))
    grid = os.path.join(workdir, "samples", "step0000030_euler_nfe2.png")
    assert Image.open(grid).size[0] > 64
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    assert summary["status"] == "finished" and summary["steps_per_sec"] > 0

    res = run_cli([*base, "--mode=sample"])
    assert res.returncode == 0, res.stderr[-4000:]
    assert os.path.exists(os.path.join(workdir, "samples", "final0000030_euler_nfe1.png"))

    res = run_cli([*base, "--mode=eval", "--config.eval.sampler=heun", "--config.eval.nfes=(1,2)"])
    assert res.returncode == 0, res.stderr[-4000:]
    out_dir = os.path.join(workdir, "eval", "step0000030_heun")
    with open(os.path.join(out_dir, "results.json")) as f:
        results = json.load(f)
    assert [r["nfe"] for r in results["rows"]] == [1, 3]  # Heun: 2 * steps - 1
    assert results["primary"] == "fd" and results["floor"]["fd"] < min(r["fd"] for r in results["rows"])
    assert "| real data (floor) |" in res.stdout
    assert os.path.exists(os.path.join(out_dir, "metric_vs_nfe.png"))
