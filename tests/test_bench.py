"""benchmarks/bench.py end to end on a tiny setting: the result files, their schema, and that every
reported statistic is the one of the recorded step times. No timing is asserted."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

import pytest
from conftest import REPO

TINY_UNET = [f"--model_override={o}" for o in ("channels=8", "channel_mult=(1,)", "attn_resolutions=()")]
BATCH, ROUNDS, STEPS = 4, 2, 2


def by_round(times: list[float]) -> list[list[float]]:
    return [times[k * STEPS : (k + 1) * STEPS] for k in range(ROUNDS)]


@pytest.mark.slow
def test_bench_reports_statistics_of_its_own_step_times(tmp_path):
    cmd = [
        sys.executable,
        "benchmarks/bench.py",
        "--methods=ect",
        f"--batch={BATCH}",
        f"--rounds={ROUNDS}",
        f"--steps={STEPS}",
        "--warmup=1",
        "--nfes=1,2",
        "--sample_reps=1",
        "--nofresh_process",
        f"--out_dir={tmp_path}",
        "--tag=test",
        *TINY_UNET,
    ]
    # Compilation is most of the run, and no timing is asserted: compile without XLA's optimizations.
    env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="true")
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "round 2/2" in done.stderr  # progress is shown
    report = json.loads((tmp_path / "bench_test.json").read_text())

    assert report["reference"] == "flow"
    machine = report["machine"]
    for key in ("description", "cpu_model", "cpu_count", "platform", "device_kind", "jax"):
        assert machine[key]
    assert report["settings"]["batch_size"] == BATCH
    assert report["peak_tflops"] > 0 and report["peak_source"]
    assert len(report["load_average"]["start"]) == 3

    rows = {r["method"]: r for r in report["methods"]}
    assert list(rows) == ["flow", "ect"]  # the reference is added, first
    flow_median = statistics.median(rows["flow"]["step_times_s"])
    for r in rows.values():
        times = r["step_times_s"]
        step = r["step_s"]
        assert len(times) == step["n"] == ROUNDS * STEPS
        assert step["median"] == statistics.median(times)
        assert step["q1"] <= step["median"] <= step["q3"]
        assert step["iqr"] == pytest.approx(step["q3"] - step["q1"])
        assert r["ratio_to_flow"] == pytest.approx(step["median"] / flow_median, rel=1e-12)
        assert r["images_per_s"] == pytest.approx(BATCH / step["median"], rel=1e-12)
        flow_rounds = by_round(rows["flow"]["step_times_s"])
        expected = [statistics.median(a) / statistics.median(b) for a, b in zip(by_round(times), flow_rounds)]
        assert r["round_ratios"] == pytest.approx(expected, rel=1e-12)
        assert r["compile_s"] == pytest.approx(r["lower_s"] + r["xla_compile_s"]) and r["compile_s"] > 0
        if r["flops_per_step"] is not None:
            assert r["mfu"] == pytest.approx(r["flops_per_step"] / step["median"] / (report["peak_tflops"] * 1e12))
        assert [s["nfe"] for s in r["sampling"]] == [1, 2]
        for s in r["sampling"]:
            assert s["steps"] == s["nfe"] and s["sampler"] == "euler" and len(s["times_s"]) == 1
            assert s["median_s"] == statistics.median(s["times_s"])
            assert s["images_per_s"] == pytest.approx(s["batch_size"] / s["median_s"], rel=1e-12)
    assert rows["flow"]["ratio_to_flow"] == 1.0
    assert rows["flow"]["target_ratio"] is None and rows["ect"]["target_ratio"] == 1.4
    assert rows["ect"]["num_params"] == rows["flow"]["num_params"]  # the same network

    table = (tmp_path / "bench_test.md").read_text()
    assert machine["description"] in table
    assert f"| ect | {rows['ect']['step_s']['median'] * 1e3:.1f} [" in table
    assert f"| {rows['ect']['ratio_to_flow']:.2f} (" in table
    assert rows["ect"]["notes"] and rows["ect"]["notes"][0] in table  # random weights, not a pretrained run


def test_harness_lists_the_registry_and_reads_per_method_settings_from_configs():
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    import harness

    from fewstep_jax import methods

    assert harness.METHODS == tuple(methods.REGISTRY) and harness.REFERENCE in harness.METHODS
    assert [m for m in harness.METHODS if harness.uses_d(m)] == ["shortcut", "meanflow", "alphaflow", "ayf"]
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        harness.bench_config("nope", "digits", 8, {})
