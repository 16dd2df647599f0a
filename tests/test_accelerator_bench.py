"""benchmarks/accelerator.py on a CPU with --tiny: every stage reports finite figures that are the
statistics of its own recorded times, the targets and peer ratios are computed from them, and a stage
that crashes or hangs leaves the others written. The peers' driver is a stand-in written here (the
real one needs torch and runs on a GPU); no timing is asserted."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys

import pytest
from conftest import REPO

# (peer/config, images/s) the stand-in driver reports; one more configuration fails.
PEER_RATES = {"ect_ddpmpp/bf16": 40.0, "ect_ddpmpp/fp32": 20.0, "dit_b2/bf16_sdpa": 80.0, "meanflow_dit/bf16": 30.0}
STAND_IN_DRIVER = """
import argparse, json, os, sys
import torch  # the stand-in package of this test
ap = argparse.ArgumentParser()
for flag in ("--device", "--sizes", "--steps", "--warmup", "--out", "--budget-s"):
    ap.add_argument(flag)
a = ap.parse_args()
rates = json.load(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "rates.json")))
results = [dict(peer=k.split("/")[0], config=k.split("/")[1], status="ok", batch=4, params=10, median_ms=4e3 / v,
                images_per_s=v, tflops_per_s=None, flops_per_step=None) for k, v in rates.items()]
results.append(dict(peer="meanflow_unet", config="bf16", status="error", error="RuntimeError: stand-in failure"))
meta = dict(environment=dict(torch=torch.__version__), argv=sys.argv[1:])
json.dump(dict(meta=meta, results=results), open(a.out, "w"))
sys.exit(1)  # as the real driver does when a configuration failed
"""


def run(tmp_path, *args, timeout=1800):
    cmd = [sys.executable, "benchmarks/accelerator.py", "--tiny", f"--out_dir={tmp_path}", "--tag=test", *args]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads((tmp_path / "accelerator_test.json").read_text())
    return report, (tmp_path / "accelerator_test.md").read_text(), done.stderr


def stand_in_peers(tmp_path) -> tuple[str, str]:
    """(peers folder, a Python that imports the stand-in torch) for --peers / --peers_python."""
    peers = tmp_path / "peers"
    (peers / "fake" / "torch").mkdir(parents=True)
    (peers / "fake" / "torch" / "__init__.py").write_text("__version__ = '0.0-stand-in'\n")
    (peers / "run_peers.py").write_text(STAND_IN_DRIVER)
    (peers / "rates.json").write_text(json.dumps(PEER_RATES))
    python = peers / "python"
    python.write_text(f'#!/bin/sh\nPYTHONPATH={peers / "fake"} exec {sys.executable} "$@"\n')
    python.chmod(0o755)
    return str(peers), str(python)


def test_a_crashing_and_a_hanging_stage_leave_the_other_stages_written(tmp_path):
    report, table, stderr = run(
        tmp_path,
        "--stages=matmul,dit_b2_bf16,ddpmpp_bf16,peers",
        "--fault=dit_b2_bf16:hang",
        "--budget=dit_b2_bf16=3",
        "--fault=ddpmpp_bf16:crash",
        f"--peers={tmp_path / 'no_peers_here'}",
        timeout=300,
    )
    stages = report["stages"]
    assert list(stages) == ["matmul", "dit_b2_bf16", "ddpmpp_bf16", "peers", "ddpmpp_fp32"]
    matmul = stages["matmul"]
    assert matmul["status"] == "ok" and math.isfinite(matmul["result"]["measured_tflops"])
    assert matmul["result"]["measured_tflops"] > 0 and matmul["result"]["datasheet_tflops"] is None  # a CPU
    assert stages["dit_b2_bf16"]["status"] == "timed out" and "budget of 3 s" in stages["dit_b2_bf16"]["reason"]
    assert stages["ddpmpp_bf16"]["status"] == "failed" and stages["ddpmpp_bf16"]["reason"] == "exit code 70"
    assert stages["peers"]["status"] == "not run" and "run_peers.py not found" in stages["peers"]["reason"]
    assert stages["ddpmpp_fp32"] == {"status": "not run", "reason": "not in --stages", "wall_s": 0.0, "result": None}
    # The stages after the failures still ran, and the targets say why they have no figure.
    mfu = report["targets"][0]
    assert mfu["value"] is None and mfu["met"] is None and mfu["note"].startswith("dit_b2_bf16 timed out")
    assert "| ddpmpp_bf16 | failed |" in table and "| dit_b2_bf16 | timed out |" in table
    assert report["machine"]["description"] in table


def test_peers_are_not_run_without_torch(tmp_path):
    peers, _ = stand_in_peers(tmp_path)
    report, table, _ = run(tmp_path, "--stages=peers", f"--peers={peers}", timeout=300)
    record = report["stages"]["peers"]
    assert record["status"] == "not run" and "torch is not importable" in record["reason"], record
    assert "No module named 'torch'" in record["reason"] and "not run: torch is not importable" in table


@pytest.mark.slow
def test_tiny_run_reports_every_stage_with_its_own_statistics(tmp_path):
    peers, python = stand_in_peers(tmp_path)
    methods = ["flow", "ect", "meanflow"]
    # ddpmpp_fp32 runs the same code as ddpmpp_bf16 in another dtype: left out to keep the test short
    # (test_a_crashing_and_a_hanging_stage_leave_the_other_stages_written records it as not run).
    report, table, stderr = run(
        tmp_path,
        "--methods=ect,meanflow",
        "--stages=matmul,dit_b2_bf16,ddpmpp_bf16,peers",
        f"--peers={peers}",
        f"--peers_python={python}",
    )
    stages = report["stages"]
    assert all(r["status"] == "ok" for name, r in stages.items() if name not in ("peers", "ddpmpp_fp32")), stages
    assert stages["ddpmpp_fp32"]["status"] == "not run"
    measured = stages["matmul"]["result"]["measured_tflops"]
    for name in ("dit_b2_bf16", "ddpmpp_bf16"):
        result = stages[name]["result"]
        assert result["phase"] == "done" and result["batch_size"] == 32
        rows = result["methods"]
        assert list(rows) == methods
        flow_median = statistics.median(rows["flow"]["step_times_s"])
        for m, r in rows.items():
            times = r["step_times_s"]
            assert len(times) == 2 and all(math.isfinite(t) and t > 0 for t in times)
            median = statistics.median(times)
            assert r["step_s"]["median"] == median
            assert r["images_per_s"] == pytest.approx(32 / median, rel=1e-12)
            assert r["ratio_to_flow"] == pytest.approx(median / flow_median, rel=1e-12)
            assert r["compile_s"] == pytest.approx(r["lower_s"] + r["xla_compile_s"]) and r["compile_s"] > 0
            assert r["flops_per_step"] > 0
            assert r["tflops_per_s"] == pytest.approx(r["flops_per_step"] / median / 1e12, rel=1e-12)
            assert r["mfu_measured"] == pytest.approx(r["tflops_per_s"] / measured, rel=1e-12)
            assert r["mfu_datasheet"] is None  # no datasheet peak for a CPU
            plan = r["xla_memory_mib"]
            assert plan["total"] == pytest.approx(plan["argument"] + plan["temp"] + plan["output"] - plan["alias"])
            assert [s["nfe"] for s in r["sampling"]] == [1, 2]
            for s in r["sampling"]:
                assert s["images_per_s"] == pytest.approx(s["batch_size"] / statistics.median(s["times_s"]))
                assert math.isfinite(s["images_per_s"])
            assert f"| {name} | {m} | {median * 1e3:.1f} [" in table
        assert result["host_peak_rss_mib"] > 0
    assert rows["ect"]["num_params"] == rows["flow"]["num_params"]  # one network per stage

    targets = {t["target"]: t for t in report["targets"]}
    mfu = targets["dit_b2_bf16 flow: MFU vs measured bf16 matmul"]
    assert mfu["value"] == stages["dit_b2_bf16"]["result"]["methods"]["flow"]["mfu_measured"]
    assert mfu["met"] == (mfu["value"] >= 0.4)
    ect = targets["ddpmpp_bf16 ect: images/s vs peer ect_ddpmpp/bf16"]
    ours = stages["ddpmpp_bf16"]["result"]["methods"]["ect"]["images_per_s"]
    assert ect["value"] == pytest.approx(ours / PEER_RATES["ect_ddpmpp/bf16"], rel=1e-12)
    assert ect["met"] == (ect["value"] >= 1.2)
    for name in ("dit_b2_bf16", "ddpmpp_bf16"):
        ratio = stages[name]["result"]["methods"]["meanflow"]["ratio_to_flow"]
        t = targets[f"{name} meanflow: step time / flow"]
        assert t["value"] == ratio and t["met"] == (ratio <= 1.25)
        assert targets[f"{name} shortcut: step time / flow"]["note"] == "shortcut not in --methods"
    assert targets["1-NFE sampling images/s vs peers"]["met"] is None
    assert "| 1-NFE sampling images/s vs peers | - | >= 1 | no peer figure" in table

    peers_record = stages["peers"]
    assert (
        peers_record["status"] == "ok"
        and "1 of 5 configurations did not run: meanflow_unet/bf16" in (peers_record["reason"])
    )
    command = peers_record["result"]["command"]
    assert command[command.index("--sizes") + 1] == "tiny" and command[command.index("--device") + 1] == "cpu"
    pairs = {(c["ours"], c["peer"]): c for c in report["peer_comparisons"]}
    for (ours_name, peer), c in pairs.items():
        stage, method = ours_name.split("/")
        result = stages[stage]["result"]
        row = result["methods"].get(method) if result else None  # None: the stage did not run
        if row is None or peer not in PEER_RATES:
            assert c["ratio"] is None
        else:
            assert c["ratio"] == pytest.approx(row["images_per_s"] / PEER_RATES[peer], rel=1e-12)
    assert "| ect_ddpmpp/bf16 | ok |" in table and "stand-in failure" in table
