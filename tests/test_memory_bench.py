"""benchmarks/memory.py end to end on a tiny DiT: the result files, their schema, and that every
reported figure is the one of the recorded plans and step times. No timing is asserted."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

import pytest
from conftest import REPO

TINY_DIT = [f"--model_override={o}" for o in ("depth=1", "hidden=32", "num_heads=2")]


@pytest.mark.slow
def test_memory_bench_reports_its_own_plans_and_step_times(tmp_path):
    cmd = [
        sys.executable,
        "benchmarks/memory.py",
        "--runs=dit_xl2_meanflow",
        "--remat=none,nothing_saveable",
        "--memory_batch=2",
        "--time_batch=1",
        "--steps=2",
        f"--out_dir={tmp_path}",
        "--tag=test",
        *TINY_DIT,
    ]
    # Compilation is most of the run and no figure is compared across runs: skip XLA's optimizations.
    env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="true")
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads((tmp_path / "memory_test.json").read_text())
    assert report["machine"]["description"] and report["settings"]["time_batch"] == 1
    assert report["complete"] and report["planned"] == [
        ["dit_xl2_meanflow", "none"],
        ["dit_xl2_meanflow", "nothing_saveable"],
    ]
    rows = report["rows"]
    assert [(r["run"], r["remat"]) for r in rows] == [
        ("dit_xl2_meanflow", "none"),
        ("dit_xl2_meanflow", "nothing_saveable"),
    ]
    # hidden 32, depth 1, patch 2 on 32x32x4 with 1,000 classes and the interval input: a few 100k
    # parameters, the same for both policies.
    assert rows[0]["num_params"] == rows[1]["num_params"] and 0 < rows[0]["num_params"] < 10**6
    table = (tmp_path / "memory_test.md").read_text()
    for r in rows:
        p = r["train_step"]
        assert p["total"] == pytest.approx(p["argument"] + p["temp"] + p["output"] - p["alias"])
        assert p["argument"] > 0 and p["temp"] > 0
        grad = r["loss_grad"]
        assert len(grad["times_s"]) == 2 and grad["median_s"] == statistics.median(grad["times_s"])
        assert f"| dit_xl2_meanflow | {r['remat']} | {p['temp'] / 1024:.2f} |" in table
    assert "Machine: " in table and "Partial" not in table


def test_memory_bench_refuses_unknown_runs_and_bad_overrides():
    for args, message in ((["--runs=dit_xxl"], "unknown runs"), (["--model_override=depth"], "KEY=VALUE")):
        done = subprocess.run(
            [sys.executable, "benchmarks/memory.py", *args], cwd=REPO, capture_output=True, text=True, timeout=120
        )
        assert done.returncode != 0 and message in done.stderr, done.stderr[-2000:]


def test_attention_memory_table_holds_each_kind_and_length(tmp_path):
    """benchmarks/attention_memory.py writes one row per (function, kind) with a plan per length, and
    its plans tell the kinds apart: at 2,048 tokens (four blocks of 512) einsum's jvp holds the
    [tokens, tokens] weights (16 MiB in float32) and the blockwise rule does not."""
    cmd = [sys.executable, "benchmarks/attention_memory.py", "--tokens=512,2048", "--head_dim=8",
           "--kinds=einsum,blockwise", f"--out_dir={tmp_path}"]  # fmt: skip
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=600)
    (name,) = [n for n in os.listdir(tmp_path) if n.endswith(".json")]
    report = json.load(open(tmp_path / name))
    rows = {(r["function"], r["kind"]): r["temp_mib"] for r in report["rows"]}
    assert set(rows) == {(f, k) for f in ("jvp", "grad of jvp") for k in ("einsum", "blockwise")}
    matrix_mib = 2048 * 2048 * 4 / 2**20
    assert rows["jvp", "einsum"]["2048"] >= matrix_mib > rows["jvp", "blockwise"]["2048"]
    assert rows["grad of jvp", "einsum"]["2048"] > rows["grad of jvp", "blockwise"]["2048"]
    table = open(tmp_path / name.replace(".json", ".md")).read()
    assert "| jvp: `blockwise` |" in table and "2,048 tokens" in table
