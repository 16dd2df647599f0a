"""benchmarks/input_bench.py on a few generated examples: the reported rates are the recorded images
over the recorded seconds, the batches are finite and of the training shape, and the rate an
accelerator needs comes from a GPU report when one is given, else from the published figures
(recomputed here from the numbers in the sources). No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO

BATCH, BATCHES = 16, 2
# An accelerator report of a GPU: the fastest DDPM++ bf16 method sets CIFAR-10's need.
GPU_REPORT = {
    "machine": {"platform": "gpu", "device_kind": "NVIDIA H200"},
    "stages": {
        "ddpmpp_bf16": {"result": {"methods": {"flow": {"images_per_s": 9000.0}, "ect": {"images_per_s": 7000.0}}}}
    },
}


def test_input_bench_reports_its_own_rates_and_the_needed_ones(tmp_path):
    accelerator = tmp_path / "accelerator.json"
    accelerator.write_text(json.dumps(GPU_REPORT))
    cmd = [
        sys.executable,
        "benchmarks/input_bench.py",
        "--datasets=cifar10,imagenet256_latents",
        "--examples=48",
        f"--batch={BATCH}",
        f"--batches={BATCHES}",
        "--threads=0,1",
        f"--accelerator_json={accelerator}",
        f"--out_dir={tmp_path}",
        "--tag=test",
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads((tmp_path / "input_bench_test.json").read_text())
    table = (tmp_path / "input_bench_test.md").read_text()
    assert len(report["load_average"]["start"]) == 3 and report["machine"]["description"] in table
    rows = {r["dataset"]: r for r in report["rows"]}
    assert list(rows) == ["cifar10", "imagenet256_latents"]
    shapes = {"cifar10": [BATCH, 32, 32, 3], "imagenet256_latents": [BATCH, 32, 32, 4]}
    for name, row in rows.items():
        assert [r["read_threads"] for r in row["reads"]] == [0, 1]
        for r in row["reads"]:
            assert r["images"] == BATCH * BATCHES and r["shape"] == shapes[name] and r["finite"]
            assert r["images_per_s"] == pytest.approx(r["images"] / r["wall_s"], rel=1e-12)
            assert r["images_per_cpu_s"] == pytest.approx(r["images"] / r["cpu_s"], rel=1e-12)
            cores = row["need"]["images_per_s"] / r["images_per_cpu_s"]
            assert f"| {name} | {r['read_threads']} | {r['images_per_s']:.0f} |" in table
            assert f"| {cores:.2f} |" in table
    cifar = rows["cifar10"]["need"]
    assert cifar == {"images_per_s": 9000.0, "estimate": False, "source": cifar["source"]}
    assert "ddpmpp_bf16/flow on NVIDIA H200" in cifar["source"]
    # No DiT-B/2 stage in the GPU report: DiT's TPU v3-256 throughput (5.7 it/s at batch 256 over 128
    # chips of 123 TFLOP/s) at an H100's 989.4, times XL/2's over B/2's forward Gflops (118.64 / 23.01).
    latents = rows["imagenet256_latents"]["need"]
    assert latents["estimate"] and "Peebles & Xie" in latents["source"]
    assert latents["images_per_s"] == pytest.approx(5.7 * 256 / 128 * 989.4 / 123 * 118.64 / 23.01, rel=1e-9)
    assert f"{latents['images_per_s']:.0f} (estimate)" in table
