"""One command for one accelerator: step time, images/s, compile time, memory and MFU of the headline
methods, sampling throughput, and the PyTorch peers' figures from the same run.

  make bench-accelerator                               # = python benchmarks/accelerator.py (~8 min, H100 / H200)
  python benchmarks/accelerator.py --peers=PEERS_DIR   # also the PyTorch peers (PEERS_DIR/run_peers.py, torch)
  python benchmarks/accelerator.py --tiny              # tiny shapes, few steps: checks the script on a CPU

Stages, in this order (the order the issue's targets need them), each in its own subprocess with its
own time budget (--budget STAGE=SECONDS) inside one total deadline (--deadline_s, default 7.5 min):
  matmul        the measured bf16 matmul rate (harness.measured_matmul_tflops) and the datasheet dense
                bf16 peak of the device kind (H100 / H200 SXM 989, A100 312 TFLOP/s; none for others).
  dit_b2_bf16   DiT-B/2 in bf16 on 32x32x4 latents, 1,000 classes, batch 256.
  ddpmpp_bf16   DDPM++ of configs/trigflow_cifar.py on CIFAR-10 (32x32x3), model.dtype=bfloat16, batch 128.
  peers         the PyTorch peers' driver (PEERS_DIR/run_peers.py, run as a subprocess with --peers_python
                when that interpreter imports torch; its code is never imported here). Without --peers or
                torch the stage is recorded as not run, with the reason.
  ddpmpp_fp32   the same DDPM++ in float32, batch 128.
Every model stage trains flow matching (the reference), ECT, SCT, sCT (scm_sct), MeanFlow and shortcut
on one network with each method's own objective, optimizer and EMAs (harness.MethodBench: random
batches, random weights); it lowers every step, compiles them on --compile_threads threads, runs
--warmup steps, times --rounds interleaved rounds of --steps single steps (harness.interleaved_rounds),
then times the samplers at 1 and 2 NFE. Stage processes write their results after every phase
(compiled, timed, sampled), and this process rewrites the report after every stage, so whatever
finished is kept when a later stage fails, runs out of its budget or hits the deadline.

Reported per method: ms / step (median and interquartile range), images/s, x flow (median step time
over flow matching's, from the same rounds), compile (lower + XLA compile; compiled --compile_threads
at a time, so with more than one the seconds include contention), GFLOP / step (XLA cost analysis),
TFLOP/s, MFU against the measured bf16 matmul rate and against the datasheet peak (both bf16, also for
the float32 stage), and memory: XLA's plan of the step (arguments + temporaries + outputs - donated,
per method) and the stage process's device peak (memory_stats peak_bytes_in_use over all its methods;
CPU: none, the process's peak resident set instead).

The issue's targets are computed columns, reported and never enforced: DiT-B/2 bf16 flow step >= 40%
MFU against the measured matmul rate; DDPM++ bf16 ECT >= 1.2x the peer ECT's images/s under bf16
autocast; MeanFlow and shortcut steps <= 1.25x and sCT <= 1.6x flow matching's, per stage; 1- and
2-NFE sampling ahead of the peers (the peer driver times training steps only, so this one has no
figure to compare with).

Writes --out_dir/accelerator_<tag>.json and .md (tag: the device, '-tiny' with --tiny).
--tiny: tiny networks (DDPM++ with 8 channels at 8x8, a one-block DiT at 8x8x4), batch 32 (shortcut's
bootstrap rows need 28), one round, compiled without XLA's expensive optimizations: a check that every
stage runs and reports, not a measurement.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable

import harness
from absl import app, flags, logging

from fewstep_jax import methods as methods_lib

progress = harness.progress

#: Model stages: name -> (network, precision, model-section changes).
MODEL_STAGES = {
    "dit_b2_bf16": ("dit_b2", "bf16", {}),
    "ddpmpp_bf16": ("ddpmpp", "bf16", {"dtype": "bfloat16"}),
    "ddpmpp_fp32": ("ddpmpp", "fp32", {}),
}
STAGES = ("matmul", "dit_b2_bf16", "ddpmpp_bf16", "peers", "ddpmpp_fp32")
#: Seconds per stage on an accelerator; their sum exceeds the deadline on purpose: stages that run
#: short leave their time to the next ones.
BUDGETS = {"matmul": 45, "dit_b2_bf16": 150, "ddpmpp_bf16": 150, "peers": 120, "ddpmpp_fp32": 120}
TINY_BUDGET = 900
#: A stage is not started with less than this many seconds left before the deadline.
MIN_STAGE_S = 20
METHODS = ("flow", "ect", "sct", "scm_sct", "meanflow", "shortcut")
TINY = {
    "ddpmpp": ((8, 8, 3), {"channels": 8, "channel_mult": (1,), "attn_resolutions": (), "num_blocks": 1}),
    "dit_b2": ((8, 8, 4), {"depth": 1, "hidden": 32, "num_heads": 2}),
}
TINY_BATCH = 32
#: An XLA:CPU option that shortens the compilation of the tiny steps (nothing is timed that matters).
#: Only options every supported jaxlib knows: XLA aborts at start-up on an unknown one.
TINY_XLA_FLAGS = "--xla_cpu_copy_insertion_use_region_analysis=false"

#: The issue's targets (reported, never enforced).
MFU_TARGET = ("dit_b2_bf16", "flow", 0.40)
PEER_ECT_TARGET = ("ddpmpp_bf16", "ect", "ect_ddpmpp/bf16", 1.2)
STEP_COST_TARGETS = ("meanflow", "shortcut", "scm_sct")
#: (our stage / method, peer / config, note) pairs compared on images/s.
PEER_PAIRS = (
    ("ddpmpp_bf16", "ect", "ect_ddpmpp/bf16", "ECT on DDPM++, bf16 (peer: autocast)"),
    ("ddpmpp_fp32", "ect", "ect_ddpmpp/fp32", "ECT on DDPM++, float32 (peer: TF32 allowed)"),
    ("dit_b2_bf16", "flow", "dit_b2/bf16_sdpa", "flow matching on DiT-B/2, bf16"),
    ("dit_b2_bf16", "meanflow", "meanflow_dit/bf16", "MeanFlow on DiT-B/2, bf16"),
    ("ddpmpp_bf16", "meanflow", "meanflow_unet/bf16", "MeanFlow; the peer's network is py-meanflow's SongUNet"),
    ("ddpmpp_fp32", "meanflow", "meanflow_unet/fp32_native", "MeanFlow; peer: py-meanflow's SongUNet"),
    ("ddpmpp_fp32", "flow", "meanflow_unet/plainfm_fp32", "flow matching; peer: py-meanflow's SongUNet"),
)
PEER_FIELDS = (
    "peer", "config", "status", "batch", "params", "median_ms", "images_per_s", "tflops_per_s",
    "flops_per_step", "peak_mem_gib", "first_step_s", "error",
)  # fmt: skip

flags.DEFINE_bool("tiny", False, "Tiny networks and few steps: checks the script on a CPU (see the module doc).")
flags.DEFINE_list("stages", list(STAGES), f"Stages to run, of {', '.join(STAGES)} (always in that order).")
flags.DEFINE_list("methods", list(METHODS), "Methods of every model stage; flow matching (the reference) is added.")
flags.DEFINE_float("deadline_s", 450.0, "Total seconds; stages that would start later are not run (--tiny: 3600).")
flags.DEFINE_multi_string("budget", [], "STAGE=SECONDS: a stage's own time limit (defaults: BUDGETS; --tiny 900).")
flags.DEFINE_integer("rounds", 5, "Interleaved timing rounds per model stage (--tiny: 1).")
flags.DEFINE_integer("steps", 4, "Timed steps per method per round (--tiny: 2).")
flags.DEFINE_integer("warmup", 3, "Untimed steps per method after compilation (--tiny: 1).")
flags.DEFINE_list("nfes", ["1", "2"], "Network evaluations per sample for the sampling throughput.")
flags.DEFINE_integer("sample_reps", 3, "Timed sampling calls per method and NFE (--tiny: 1).")
flags.DEFINE_integer("compile_threads", 0, "Train steps compiled at once (0: min(methods, CPU cores / 4), >= 1).")
flags.DEFINE_string("peers", "", "Folder of the PyTorch peers' driver run_peers.py (empty: the peers are not run).")
flags.DEFINE_string("peers_python", sys.executable, "Python that runs the peers' driver (needs torch).")
flags.DEFINE_list("peers_args", [], "Extra arguments for the peers' driver, e.g. --compile.")
flags.DEFINE_string("out_dir", os.path.join(harness.REPO, "benchmarks", "results"), "Where the report goes.")
flags.DEFINE_string("tag", "", "Result file tag (default: the device, with '-tiny' for --tiny).")
flags.DEFINE_multi_string("fault", [], "(testing) STAGE:crash or STAGE:hang makes that stage fail at its start.")
flags.DEFINE_string("stage", "", "(internal) run this one stage and write its result to --stage_out.")
flags.DEFINE_string("stage_out", "", "(internal) see --stage.")
FLAGS = flags.FLAGS


def setting(name: str, tiny: float) -> float:
    """Flag `name`'s value, or `tiny` when --tiny is given and the flag is not."""
    return tiny if FLAGS.tiny and not FLAGS[name].present else FLAGS[name].value


def write_json(path: str, payload: dict) -> None:
    """Written whole or not at all (a stage may be killed while writing)."""
    with open(path + ".tmp", "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(path + ".tmp", path)


def read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------- stage processes


def inject_fault(stage: str) -> None:
    for item in FLAGS.fault:
        name, _, kind = item.partition(":")
        if name != stage:
            continue
        if kind == "crash":
            os._exit(70)
        if kind == "hang":
            time.sleep(10**6)
        raise app.UsageError(f"--fault={item}: the kind must be crash or hang")


def matmul_stage(out_path: str) -> None:
    dtype = "bfloat16"
    n, reps = (256, 3) if FLAGS.tiny else (0, 10)
    machine = harness.describe_machine()
    measured = harness.measured_matmul_tflops(dtype, reps=reps, n=n)
    write_json(
        out_path,
        {
            "machine": machine,
            "dtype": dtype,
            "n": n or (2048 if machine["platform"] == "cpu" else 8192),
            "measured_tflops": measured,
            "datasheet_tflops": harness.datasheet_tflops(machine["device_kind"], dtype),
        },
    )
    progress(f"matmul: {measured:.3g} TFLOP/s measured in {dtype} on {machine['device_kind']}")


def stage_methods() -> list[str]:
    return list(dict.fromkeys([harness.REFERENCE, *FLAGS.methods]))


def model_stage(stage: str, out_path: str) -> None:
    """Builds, compiles, times and samples every method on the stage's network; writes after each phase."""
    network, precision, overrides = MODEL_STAGES[stage]
    shape = None
    if FLAGS.tiny:
        shape, tiny_model = TINY[network]
        overrides = {**tiny_model, **overrides}
    batch = TINY_BATCH if FLAGS.tiny else harness.NETWORKS[network].default_batch
    methods = stage_methods()
    rows: dict[str, dict] = {m: {"method": m} for m in methods}
    result = {
        "network": network,
        "title": harness.NETWORKS[network].title,
        "precision": precision,
        "batch_size": batch,
        "shape": list(shape or harness.NETWORKS[network].shape),
        "model_overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()},
        "phase": "started",
        "methods": rows,
    }

    def save(phase: str) -> None:
        result["phase"] = phase
        write_json(out_path, result)

    save("started")
    benches: dict[str, harness.MethodBench] = {}
    with tempfile.TemporaryDirectory(prefix="accelerator_") as workdir:
        try:
            for m in methods:
                try:
                    bench = harness.MethodBench(m, network, batch, workdir, overrides, shape)
                    bench.lower()
                except Exception as e:  # noqa: BLE001 - one method's failure must not end the stage
                    rows[m]["error"] = f"setup: {type(e).__name__}: {e}"
                    progress(f"{stage}: {m} failed to set up: {e}")
                    continue
                benches[m] = bench
                rows[m].update(num_params=bench.num_params, notes=bench.notes)
            compile_methods(stage, benches, rows, lambda: save("compiling"))
            save("compiled")
            if not benches:
                raise RuntimeError("no method set up and compiled; see each method's error")
            for m in list(benches):
                benches[m].run(setting("warmup", 1))
            rounds = harness.interleaved_rounds(benches, setting("rounds", 1), setting("steps", 2))
            for m, r in rounds.items():
                rows[m].update(harness.step_summary(r, rounds.get(harness.REFERENCE), batch))
                flops = rows[m].get("flops_per_step")
                rows[m]["tflops_per_s"] = flops / rows[m]["step_s"]["median"] / 1e12 if flops else None
            save("timed")
            nfes = [int(n) for n in FLAGS.nfes]
            try:
                sampling = harness.sampling_rounds(benches, nfes, batch, setting("sample_reps", 1))
                for m, s in sampling.items():
                    rows[m]["sampling"] = s
            except Exception as e:  # noqa: BLE001 - the step figures stand without the samplers
                result["sampling_error"] = f"{type(e).__name__}: {e}"
            result.update(harness.host_memory(), device_peak_mib=harness.device_peak_mib())
            save("done")
        finally:
            for bench in benches.values():
                bench.close()


def compile_methods(
    stage: str, benches: dict[str, harness.MethodBench], rows: dict[str, dict], save: Callable[[], None]
) -> None:
    """Compiles the lowered steps on --compile_threads threads, saving after each; a method that
    fails is dropped."""
    threads = FLAGS.compile_threads or max(1, min(len(benches), (os.cpu_count() or 1) // 4))
    progress(f"{stage}: compiling {len(benches)} train steps, {threads} at a time")
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        futures = {pool.submit(bench.compile): m for m, bench in benches.items()}
        for future in concurrent.futures.as_completed(futures):
            m = futures[future]
            try:
                info = future.result()
            except Exception as e:  # noqa: BLE001
                rows[m]["error"] = f"compile: {type(e).__name__}: {e}"
                benches.pop(m).close()
                continue
            rows[m].update(info, compile_s=info["lower_s"] + info["compile_s"], xla_compile_s=info["compile_s"])
            save()
            progress(f"{stage}: {m} compiled in {rows[m]['compile_s']:.1f} s")


def run_stage() -> None:
    """--stage: this process is one stage; an exception is recorded in its result, then re-raised."""
    inject_fault(FLAGS.stage)
    try:
        if FLAGS.stage == "matmul":
            matmul_stage(FLAGS.stage_out)
        else:
            model_stage(FLAGS.stage, FLAGS.stage_out)
    except BaseException as e:
        partial = read_json(FLAGS.stage_out) or {}
        partial["error"] = f"{type(e).__name__}: {e}"
        partial["traceback"] = traceback.format_exc()[-3000:]
        write_json(FLAGS.stage_out, partial)
        raise


# ---------------------------------------------------------------------------- the driver


def budgets() -> dict[str, float]:
    out = {s: float(TINY_BUDGET if FLAGS.tiny else BUDGETS[s]) for s in STAGES}
    for item in FLAGS.budget:
        name, sep, value = item.partition("=")
        if not sep or name not in STAGES:
            raise app.UsageError(f"--budget needs STAGE=SECONDS with STAGE one of {', '.join(STAGES)}, got {item!r}")
        out[name] = float(value)
    return out


def run_process(cmd: list[str], budget: float, env: dict | None = None) -> tuple[str, str | None, float]:
    """(status, reason, seconds) of a subprocess in its own session, killed with its children when it
    runs past `budget` seconds."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=harness.REPO, env=env, start_new_session=True)
    try:
        code = proc.wait(timeout=budget)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        return "timed out", f"stopped after its budget of {budget:.0f} s", time.perf_counter() - start
    seconds = time.perf_counter() - start
    if code:
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        return "failed", how, seconds
    return "ok", None, seconds


def stage_env() -> dict:
    env = dict(os.environ)
    if FLAGS.tiny:
        env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "true"
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {TINY_XLA_FLAGS}".strip()
    return env


def run_jax_stage(stage: str, budget: float, scratch: str) -> dict:
    out_path = os.path.join(scratch, f"{stage}.json")
    cmd = [sys.executable, os.path.abspath(__file__), *sys.argv[1:], f"--stage={stage}", f"--stage_out={out_path}"]
    status, reason, seconds = run_process(cmd, budget, stage_env())
    result = read_json(out_path)
    if result and result.get("error") and status != "timed out":
        reason = f"{reason}: {result['error']}"
    return {"status": status, "reason": reason, "wall_s": seconds, "result": result}


def peer_device(report: dict) -> str:
    machine = stage_result(report, "matmul").get("machine") or {}
    return "cuda" if machine.get("platform") == "gpu" and not FLAGS.tiny else "cpu"


def run_peers(budget: float, scratch: str, device: str) -> dict:
    """The peers' driver in its own process (never imported), when --peers is given and its Python has torch."""
    if not FLAGS.peers:
        return {"status": "not run", "reason": "no --peers folder given", "wall_s": 0.0, "result": None}
    driver = os.path.join(os.path.abspath(FLAGS.peers), "run_peers.py")
    if not os.path.isfile(driver):
        return {"status": "not run", "reason": f"{driver} not found", "wall_s": 0.0, "result": None}
    check = subprocess.run([FLAGS.peers_python, "-c", "import torch"], capture_output=True, text=True, timeout=300)
    if check.returncode:
        last = (check.stderr.strip().splitlines() or ["?"])[-1]
        reason = f"torch is not importable by {FLAGS.peers_python} ({last})"
        return {"status": "not run", "reason": reason, "wall_s": 0.0, "result": None}
    out_path = os.path.join(scratch, "peers.json")
    steps, warmup = (2, 1) if FLAGS.tiny else (10, 3)
    cmd = [FLAGS.peers_python, driver, "--device", device, "--sizes", "tiny" if FLAGS.tiny else "full"]
    cmd += ["--steps", str(steps), "--warmup", str(warmup), "--out", out_path]
    # Configurations not started by then are skipped, so the one running can finish within the budget.
    cmd += ["--budget-s", f"{max(1.0, budget - min(60.0, budget / 3)):.0f}", *FLAGS.peers_args]
    status, reason, seconds = run_process(cmd, budget)
    raw = read_json(out_path)
    result = None
    if raw is not None:
        configs = [{k: r.get(k) for k in PEER_FIELDS} for r in raw.get("results", [])]
        result = {"environment": raw.get("meta", {}).get("environment"), "command": cmd[1:], "configs": configs}
        failed = [f"{c['peer']}/{c['config']}" for c in configs if not str(c["status"]).startswith("ok")]
        if status == "failed" and configs:
            # The driver exits 1 when any configuration failed; the others are good figures.
            status, reason = "ok", f"{len(failed)} of {len(configs)} configurations did not run: {', '.join(failed)}"
    return {"status": status, "reason": reason, "wall_s": seconds, "result": result}


def main(argv):
    harness.check_command_line(argv)
    logging.set_verbosity(logging.WARNING)
    unknown = [s for s in FLAGS.stages if s not in STAGES] + [m for m in FLAGS.methods if m not in methods_lib.REGISTRY]
    if unknown:
        raise app.UsageError(f"unknown stages or methods {unknown}; stages: {', '.join(STAGES)}")
    if min(FLAGS.rounds, FLAGS.steps, FLAGS.sample_reps) < 1 or FLAGS.warmup < 0 or FLAGS.compile_threads < 0:
        raise app.UsageError("--rounds, --steps and --sample_reps must be positive; --warmup, --compile_threads >= 0")
    if FLAGS.stage:
        return run_stage()
    limits = budgets()
    report = {
        "schema": 1,
        "command": "python benchmarks/accelerator.py" + "".join(f" {a}" for a in sys.argv[1:]),
        "tiny": FLAGS.tiny,
        "deadline_s": setting("deadline_s", 3600.0),
        "load_average": {"start": list(os.getloadavg()), "end": None},
        "settings": {
            "methods": stage_methods(),
            "rounds": setting("rounds", 1),
            "steps": setting("steps", 2),
            "warmup": setting("warmup", 1),
            "sample_reps": setting("sample_reps", 1),
            "nfes": [int(n) for n in FLAGS.nfes],
            "budgets_s": limits,
        },
        "stages": {},
    }
    tag = FLAGS.tag
    with tempfile.TemporaryDirectory(prefix="accelerator_") as scratch:
        for stage in STAGES:
            left = report["deadline_s"] - (time.perf_counter() - harness.T0)
            if stage not in FLAGS.stages:
                record = {"status": "not run", "reason": "not in --stages", "wall_s": 0.0, "result": None}
            elif left < min(MIN_STAGE_S, limits[stage]):
                record = {"status": "not run", "reason": f"deadline: {max(left, 0):.0f} s left", "wall_s": 0.0}
                record["result"] = None
            else:
                budget = min(limits[stage], left)
                progress(f"stage {stage}: budget {budget:.0f} s")
                if stage == "peers":
                    record = run_peers(budget, scratch, peer_device(report))
                else:
                    record = run_jax_stage(stage, budget, scratch)
                record["budget_s"] = budget
                progress(f"stage {stage}: {record['status']}" + (f" ({record['reason']})" if record["reason"] else ""))
            report["stages"][stage] = record
            tag = tag or machine_tag(report)
            write(report, tag)
    report["load_average"]["end"] = list(os.getloadavg())
    base = write(report, tag)
    print(markdown(report))
    progress(f"wrote {base}.json and {base}.md")


def machine_tag(report: dict) -> str:
    """The device's tag once the matmul stage has described it ('' until then)."""
    machine = stage_result(report, "matmul").get("machine")
    if not machine:
        return ""
    return harness.machine_tag(machine) + ("-tiny" if FLAGS.tiny else "")


def write(report: dict, tag: str) -> str:
    report["wall_s"] = time.perf_counter() - harness.T0
    report["machine"] = stage_result(report, "matmul").get("machine")
    report.update(evaluate(report))
    return harness.write_report(FLAGS.out_dir, f"accelerator_{tag or 'unknown-device'}", report, markdown(report))


# ---------------------------------------------------------------------------- derived figures


def stage_result(report: dict, stage: str) -> dict:
    """What a stage recorded so far ({} before it ran or when it recorded nothing)."""
    return report["stages"].get(stage, {}).get("result") or {}


def stage_rows(report: dict, stage: str) -> dict[str, dict]:
    return stage_result(report, stage).get("methods") or {}


def peer_config(report: dict, name: str) -> dict | None:
    result = stage_result(report, "peers")
    for c in result.get("configs") or []:
        if f"{c['peer']}/{c['config']}" == name:
            return c
    return None


def peer_missing(report: dict, name: str) -> str:
    record = report["stages"].get("peers", {})
    if record.get("status") not in ("ok", "timed out") or peer_config(report, name) is None:
        return f"no peer figure ({record.get('reason') or record.get('status', 'peers not run')})"
    return f"no peer figure ({name}: {peer_config(report, name).get('error') or 'did not run'})"


def why_missing(report: dict, stage: str, method: str) -> str:
    """Why a stage's method has no figure: the stage's fate or the method's error."""
    record = report["stages"].get(stage)
    if record is None or record["status"] == "not run":
        return f"{stage} not run" + (f" ({record['reason']})" if record else "")
    rows = stage_rows(report, stage)
    if rows and method not in rows:
        return f"{method} not in --methods"
    row = rows.get(method) or {}
    if row.get("error"):
        return f"{stage} {method}: {row['error'][:120]}"
    return f"{stage} {record['status']}" + (f" ({record['reason'][:120]})" if record.get("reason") else "")


def target(name: str, value: float | None, op: str, threshold: float, missing: str = "") -> dict:
    met = None if value is None else (value >= threshold if op == ">=" else value <= threshold)
    return {"target": name, "value": value, "op": op, "threshold": threshold, "met": met, "note": missing}


def evaluate(report: dict) -> dict:
    """MFU of every timed method, the issue's targets and the comparisons with the peers, from the
    figures recorded so far."""
    matmul = stage_result(report, "matmul")
    measured, datasheet = matmul.get("measured_tflops"), matmul.get("datasheet_tflops")
    for stage in MODEL_STAGES:
        for row in stage_rows(report, stage).values():
            tflops = row.get("tflops_per_s")
            row["mfu_measured"] = tflops / measured if tflops and measured else None
            row["mfu_datasheet"] = tflops / datasheet if tflops and datasheet else None
            row["target_ratio"] = methods_lib.REGISTRY[row["method"]].step_cost_target
    targets = []
    stage, method, threshold = MFU_TARGET
    row = stage_rows(report, stage).get(method, {})
    missing = ""
    if row.get("mfu_measured") is None:
        missing = "no measured matmul rate" if row.get("tflops_per_s") else why_missing(report, stage, method)
    targets.append(target(f"{stage} {method}: MFU vs measured bf16 matmul", row.get("mfu_measured"), ">=", threshold,
                          missing))  # fmt: skip
    stage, method, peer, threshold = PEER_ECT_TARGET
    ours = stage_rows(report, stage).get(method, {}).get("images_per_s")
    theirs = (peer_config(report, peer) or {}).get("images_per_s")
    missing = (
        "" if ours and theirs else (why_missing(report, stage, method) if not ours else peer_missing(report, peer))
    )
    targets.append(target(f"{stage} {method}: images/s vs peer {peer}", ours / theirs if ours and theirs else None,
                          ">=", threshold, missing))  # fmt: skip
    for stage in MODEL_STAGES:
        rows = stage_rows(report, stage)
        for method in STEP_COST_TARGETS:
            row = rows.get(method, {})
            ratio = row.get("ratio_to_flow")
            limit = methods_lib.REGISTRY[method].step_cost_target
            missing = "" if ratio is not None else why_missing(report, stage, method)
            targets.append(target(f"{stage} {method}: step time / flow", ratio, "<=", limit, missing))
    note = "no peer figure: the peer driver times training steps only"
    for nfe in (1, 2):
        targets.append(target(f"{nfe}-NFE sampling images/s vs peers", None, ">=", 1.0, note))
    comparisons = []
    for stage, method, peer, note in PEER_PAIRS:
        ours = stage_rows(report, stage).get(method, {}).get("images_per_s")
        theirs = (peer_config(report, peer) or {}).get("images_per_s")
        comparisons.append(
            {
                "ours": f"{stage}/{method}",
                "peer": peer,
                "ours_images_per_s": ours,
                "peer_images_per_s": theirs,
                "ratio": ours / theirs if ours and theirs else None,
                "note": note + ("; tiny shapes, not comparable" if report["tiny"] else ""),
            }
        )
    return {"targets": targets, "peer_comparisons": comparisons}


# ---------------------------------------------------------------------------- the table


fmt = harness.fmt


def markdown(report: dict) -> str:
    s = report["settings"]
    machine = report.get("machine") or {}
    load = report["load_average"]
    end = f", {load['end'][0]:.2f} at the end" if load["end"] else ""
    lines = [
        "# Accelerator benchmark" + (" (--tiny: a check of the script, not a measurement)" if report["tiny"] else ""),
        "",
        f"Machine: {machine.get('description', 'not described (the matmul stage did not run)')}. "
        f"Load average (1 min) {load['start'][0]:.2f} at the start{end}. Command: `{report['command']}` "
        f"({report['wall_s']:.0f} s of a {report['deadline_s']:.0f} s deadline).",
        "",
        "| stage | status | seconds (budget) | note |",
        "|---|---|---|---|",
    ]
    for name, r in report["stages"].items():
        budget = f" ({r['budget_s']:.0f})" if "budget_s" in r else ""
        phase = (r.get("result") or {}).get("phase")
        note = "; ".join(x for x in (r.get("reason"), f"reached phase '{phase}'" if phase else None) if x)
        lines.append(f"| {name} | {r['status']} | {r['wall_s']:.0f}{budget} | {note or '-'} |")
    matmul = stage_result(report, "matmul")
    lines += [
        "",
        "## Targets (computed from the figures below; reported, not enforced)",
        "",
        "| target | measured | target | result |",
        "|---|---|---|---|",
    ]
    for t in report["targets"]:
        result = (t["note"] or "n/a") if t["met"] is None else ("met" if t["met"] else "missed")
        lines.append(f"| {t['target']} | {fmt(t['value'], '.3g')} | {t['op']} {t['threshold']:g} | {result} |")
    lines += [
        "",
        "## Training step",
        "",
        f"Every method with its own objective, optimizer and EMAs on the stage's network (random batches and "
        f"weights). ms / step: median [interquartile range] of {s['rounds']} interleaved rounds of {s['steps']} "
        f"steps after {s['warmup']} warm-up steps. x flow: ratio of medians (targets from the method registry). "
        f"MFU: XLA's FLOPs of the step / step time against the measured bf16 matmul rate "
        f"({rate(matmul.get('measured_tflops'), 'not measured')}) and the datasheet dense bf16 peak "
        f"({rate(matmul.get('datasheet_tflops'), 'unknown for this device')}), also for float32. Memory: XLA's "
        "plan of the step (arguments + temporaries + outputs - donated).",
        "",
        "| stage | method | ms / step [IQR] | images / s | x flow | target | compile s | GFLOP / step | TFLOP/s "
        "| MFU (matmul) | MFU (datasheet) | XLA plan MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for stage in MODEL_STAGES:
        for m, r in stage_rows(report, stage).items():
            lines.append(step_line(stage, m, r))
    memory_notes = []
    for stage in MODEL_STAGES:
        result = stage_result(report, stage)
        if "host_peak_rss_mib" in result:
            device = result["device_peak_mib"]
            device = "no device memory stats" if device is None else f"device peak {device:.0f} MiB"
            memory_notes.append(
                f"- {stage} ({result['title']}, batch {result['batch_size']}): {device}, host peak RSS "
                f"{result['host_peak_rss_mib']:.0f} MiB, over all its methods in one process."
            )
    if memory_notes:
        lines += ["", "Memory of each stage's process:", "", *memory_notes]
    nfes = s["nfes"]
    lines += [
        "",
        "## Sampling, images / s (compilation excluded; sampler and steps in brackets)",
        "",
        "| stage | method | " + " | ".join(f"{n} NFE" for n in nfes) + " |",
        "|---|---|" + "---|" * len(nfes),
    ]
    for stage in MODEL_STAGES:
        for m, r in stage_rows(report, stage).items():
            if r.get("sampling"):
                cells = [
                    "n/a" if x["images_per_s"] is None else f"{x['images_per_s']:.0f} ({x['sampler']}, {x['steps']})"
                    for x in r["sampling"]
                ]
                lines.append(f"| {stage} | {m} | " + " | ".join(cells) + " |")
    lines += peers_markdown(report)
    notes = sorted(
        {n for stage in MODEL_STAGES for r in stage_rows(report, stage).values() for n in r.get("notes", [])}
    )
    if notes:
        lines += ["", "Timing-only substitutions:", "", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def rate(tflops: float | None, missing: str) -> str:
    return missing if tflops is None else f"{tflops:.4g} TFLOP/s"


def step_line(stage: str, method: str, r: dict) -> str:
    if "step_s" not in r:
        what = r.get("error") or ("compiled, not timed" if "compile_s" in r else "not reached")
        return f"| {stage} | {method} | {what} |" + " |" * 9
    st = r["step_s"]
    ratio, limit = r["ratio_to_flow"], r.get("target_ratio")
    target_text = "-" if limit is None or ratio is None else f"<= {limit:g} ({'met' if ratio <= limit else 'missed'})"
    gflop = None if r.get("flops_per_step") is None else r["flops_per_step"] / 1e9
    plan = (r.get("xla_memory_mib") or {}).get("total")
    return (
        f"| {stage} | {method} | {st['median'] * 1e3:.1f} [{st['q1'] * 1e3:.1f}, {st['q3'] * 1e3:.1f}] "
        f"| {r['images_per_s']:.0f} | {fmt(ratio, '.2f')} | {target_text} | {r['compile_s']:.1f} "
        f"| {fmt(gflop, '.1f', 'n/a')} | {fmt(r['tflops_per_s'], '.3g', 'n/a')} | {fmt(r.get('mfu_measured'), '.1%')} "
        f"| {fmt(r.get('mfu_datasheet'), '.1%')} | {fmt(plan, '.0f', 'n/a')} |"
    )


def peers_markdown(report: dict) -> list[str]:
    record = report["stages"].get("peers")
    if record is None:
        return []
    lines = ["", "## PyTorch peers (same machine, same run)", ""]
    result = record.get("result") or {}
    if not result.get("configs"):
        return lines + [f"{record['status']}: {record.get('reason') or 'no results'}."]
    lines += [
        f"`{' '.join(result['command'])}`; torch {(result.get('environment') or {}).get('torch', '?')}.",
        "",
        "| peer / config | status | ms / step | images / s | TFLOP/s | peak GiB |",
        "|---|---|---|---|---|---|",
    ]
    for c in result["configs"]:
        status = c["status"] if not c.get("error") else f"{c['status']}: {str(c['error'])[:80]}"
        lines.append(
            f"| {c['peer']}/{c['config']} | {status} | {fmt(c['median_ms'], '.1f')} | {fmt(c['images_per_s'], '.0f')} "
            f"| {fmt(c['tflops_per_s'], '.3g')} | {fmt(c['peak_mem_gib'], '.2f')} |"
        )
    lines += [
        "",
        "| ours | peer | ours images / s | peer images / s | ours / peer | note |",
        "|---|---|---|---|---|---|",
    ]
    for c in report["peer_comparisons"]:
        lines.append(
            f"| {c['ours']} | {c['peer']} | {fmt(c['ours_images_per_s'], '.0f')} "
            f"| {fmt(c['peer_images_per_s'], '.0f')} | {fmt(c['ratio'], '.2f')} | {c['note']} |"
        )
    return lines


if __name__ == "__main__":
    app.run(main)
