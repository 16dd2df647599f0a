"""benchmarks/reproduce.py: the noise rule behind the claim verdicts, the job runner, and the report
written from a workdir of (synthetic) finished runs."""

import json
import os
import sys

import numpy as np
import pytest
from absl import flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import reproduce  # noqa: E402


@pytest.fixture(autouse=True)
def parsed_flags(tmp_path):
    if not flags.FLAGS.is_parsed():
        flags.FLAGS(["reproduce"])
    old = flags.FLAGS.workdir
    flags.FLAGS.workdir = str(tmp_path / "runs")
    yield
    flags.FLAGS.workdir = old


def test_stat_formats_mean_to_the_precision_of_its_spread():
    assert str(reproduce.Stat(2.3456, 0.123, 3)) == "2.35 ± 0.12"
    assert str(reproduce.Stat(0.06424, 0.0123, 3)) == "0.064 ± 0.012"
    assert str(reproduce.Stat(1.1071, 0.00065, 3)) == "1.11 ± 0.00065"
    assert str(reproduce.Stat(31.37, 0.0, 1)) == "31.4"


def test_a_difference_counts_only_beyond_twice_the_combined_noise():
    a, b = reproduce.Stat(1.0, 0.3, 3), reproduce.Stat(1.0 + 2 * 0.5 - 0.01, 0.4, 3)  # hypot(0.3, 0.4) = 0.5
    assert reproduce.versus(a, b) == "level"
    assert reproduce.versus(a, reproduce.Stat(2.01, 0.4, 3)) == "lower"
    assert reproduce.versus(reproduce.Stat(2.01, 0.4, 3), a) == "higher"
    assert reproduce.versus(a, None) == "missing"
    assert reproduce.lower_is_claimed(a, reproduce.Stat(2.01, 0.4, 3)) == reproduce.SUPPORTED


def _write_run(dataset, key, rows, floor, primary, *, num_steps, log_evals=(), tangent_nonfinite=None):
    run = reproduce.BY_KEY[key]
    wd = reproduce.run_dir(dataset, run)
    os.makedirs(wd)
    with open(reproduce.eval_path(dataset, run), "w") as f:
        json.dump({"step": num_steps, "rows": rows, "floor": floor, "primary": primary, "num_samples": 500,
                   "sampler": "euler"}, f)  # fmt: skip
    with open(os.path.join(wd, "metrics.jsonl"), "w") as f:
        for step in (num_steps // 2, num_steps):
            row = {"step": step, "loss": 1.0 / step}
            if tangent_nonfinite is not None:
                row["tangent_nonfinite_frac"] = tangent_nonfinite
            f.write(json.dumps(row) + "\n")
        for step, value in log_evals:
            f.write(json.dumps({"step": step, f"eval/euler_nfe1/{primary}": value}) + "\n")
    with open(os.path.join(wd, "summary.json"), "w") as f:
        json.dump({"status": "finished", "steps_per_sec": 4.0, "wall_sec": 300.0}, f)
    samples = {f"steps{r['steps']}": np.zeros((20, 8, 8, 1), np.float32) for r in rows if r["seed"] == 0}
    np.savez(os.path.join(wd, "reproduction_samples.npz"), **samples)


def test_report_tables_pictures_and_verdicts_follow_the_runs(tmp_path):
    floor = {"fd": 2.4, "fd_heldout": 4.65}

    def rows(values_by_nfe, spread=0.1):
        return [{"seed": s, "steps": n, "nfe": n, "fd": v + spread * (s - 1), "fd_heldout": v + 2}
                for n, v in values_by_nfe.items() for s in range(3)]  # fmt: skip

    _write_run("digits", "trigflow", rows({1: 31.0, 2: 30.0, 4: 8.0, 8: 5.0, 64: 2.0}), floor, "fd", num_steps=1200)
    _write_run("digits", "scm_sct", rows({1: 2.5, 2: 2.1, 4: 3.0, 8: 3.1}), floor, "fd", num_steps=1200,
               tangent_nonfinite=0.0)  # fmt: skip
    _write_run("digits", "scm_scd", rows({1: 2.4, 2: 2.9, 4: 3.0, 8: 3.1}), floor, "fd", num_steps=1200,
               tangent_nonfinite=0.25)  # fmt: skip
    _write_run(
        "digits", "ect", rows({1: 3.5, 2: 2.6}), floor, "fd", num_steps=1200, log_evals=[(300, 14.0), (600, 4.0)]
    )
    _write_run(
        "digits", "sct", rows({1: 2.6, 2: 2.55}), floor, "fd", num_steps=1200, log_evals=[(300, 11.0), (600, 3.5)]
    )

    out = tmp_path / "docs" / "REPRODUCTION.md"
    assert reproduce.write_report(["digits"], str(out)) == str(out)
    text = out.read_text()
    for picture in ("digits_nfe.png", "digits_samples.png", "digits_training.png"):
        assert (tmp_path / "docs" / "reproduction" / picture).stat().st_size > 1000
        assert f"reproduction/{picture}" in text
    assert "| sCT (from TrigFlow) | 2.50 ± 0.1 | 2.10 ± 0.1 | 3.00 ± 0.1 | 3.10 ± 0.1 |  |" in text  # no NFE 64

    claims = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    # 2.1 <= 1.1 x 2.0 (the teacher's best, at NFE 64); 2.9 is beyond it by more than the noise
    assert "**supported**" in claims["2-step sCT is within 10% of the teacher's best metric"]
    assert "**not supported**" in claims["2-step sCD is within 10% of the teacher's best metric"]
    assert "**not supported**" in claims["sCD is level with or better than sCT at 2 steps"]
    assert "**not supported**" in claims["continuous-time training is stable: every jvp tangent finite"]
    assert "**supported**" in claims["SCT beats ECT at 1 step"]
    assert "**within noise**" in claims["SCT beats ECT at 2 steps"]  # 0.05 apart, noise 2 x hypot(0.1, 0.1)
    assert "**supported**" in claims["SCT converges faster than ECT"]  # ahead at both evaluations
    assert "**not run**" in claims["at 1 step, shortcut beats flow matching"]


def test_jobs_run_after_their_dependencies_and_a_failure_blocks_only_its_dependents(tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()

    def job(name, deps=(), fail=False):
        command = [sys.executable, "-c", f"import sys; open({str(marks / name)!r}, 'w'); sys.exit({int(fail)})"]
        return reproduce.Job(name, command, str(tmp_path / "logs" / f"{name}.log"), deps,
                             lambda: (marks / name).exists() and name != "bad")  # fmt: skip

    jobs = [job("teacher"), job("student", ("teacher",)), job("bad", fail=True), job("after_bad", ("bad",))]
    with pytest.raises(RuntimeError, match="bad failed.*not run \\(a dependency failed\\): after_bad"):
        reproduce.run_jobs(jobs, parallel=2)
    assert {p.name for p in marks.iterdir()} == {"teacher", "student", "bad"}
    reproduce.run_jobs(jobs[:2], parallel=2)  # done jobs are skipped


def test_runs_are_the_registered_methods_with_what_their_classes_say():
    """One run per registered method (plus phased SCT), each after the runs it starts from or
    distils, labelled and linked by the class attributes, evaluated to 64 steps where compared at many."""
    from fewstep_jax import methods

    assert [r.key for r in reproduce.RUNS if not r.variant] == sorted(
        methods.REGISTRY, key=lambda n: bool(methods.REGISTRY[n].pretrained_method)
    )
    keys = [r.key for r in reproduce.RUNS]
    for run in reproduce.RUNS:
        cls = methods.REGISTRY[run.config]
        assert (run.init, run.teacher) == (cls.pretrained_method, cls.teacher_method)
        assert all(keys.index(dep) < keys.index(run.key) for dep in (run.init, run.teacher) if dep)
        many = reproduce.MANY if cls.many_steps else reproduce.FEW
        assert run.nfes == ((4,) if run.variant == "phased" else many)
    labels = {r.key: r.label for r in reproduce.RUNS}
    assert labels["trigflow"] == "TrigFlow (teacher)" and labels["edm"] == "EDM (ECT/SCT's pretrained model)"
    assert labels["scm_scd"] == "sCD (from TrigFlow)" and labels["sct_phased"] == "phased SCT (from EDM)"
    assert labels["dmf"] == "DMF (from flow matching)" and labels["dmf_meanflow"] == "MeanFlow (from flow matching)"
    assert reproduce.BASELINES == ("trigflow", "edm", "flow")
