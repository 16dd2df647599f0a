"""Training-step cost, memory and sampling throughput of every method on one network and batch.

  make bench                                # = python benchmarks/bench.py: digits UNet, batch 64 (CPU)
  python benchmarks/bench.py --methods=flow,meanflow,shortcut --batch=128 --rounds=20 --steps=4
  python benchmarks/bench.py --network=ddpmpp                 # DDPM++ CIFAR-10, batch 128 (a GPU)
  python benchmarks/bench.py --network=dit_b2                 # DiT-B/2 bf16 latents, batch 256 (a GPU)

Every method runs on the same network and global batch with its own objective, optimizer and
EMAs (harness.py builds them). Measured per method:
  compile    lower + compile of the train step, ahead of time, in a fresh process with an empty
             compilation cache.
  step time  median and interquartile range of single steps, each waited for with
             jax.block_until_ready, after every method has compiled and run --warmup steps. The
             timed steps come in --rounds rounds; a round gives every method --steps steps,
             round-robin from a starting method that rotates with the round, so drift of the
             machine and the order of compilation and warm-up fall on all methods alike.
  images/s   global batch / median step time.
  x flow     median step time / flow matching's median step time, from the same rounds (with
             the range of the per-round ratios).
  FLOPs      of the compiled step (XLA cost_analysis), and MFU = FLOPs / step time / peak.
  memory     peak resident set of the method's own process (ru_maxrss, compilation included) and,
             on a GPU, the device's peak_bytes_in_use: both are maxima over a process's life, so
             each method is compiled and stepped in a fresh subprocess first (whose compilation
             cache the timing process then loads); also XLA's memory plan of the step.
  sampling   images/s of the method's sampler at --nfes network evaluations: every sampler is
             compiled first, then --sample_reps round-robin rounds time one call of each.

Writes --out_dir/bench_<tag>.json and .md (tag: the machine and the network). The step-cost
targets (each method's `step_cost_target`) are reported next to the measured ratios, never enforced.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import harness
from absl import app, flags, logging

from fewstep_jax import methods as methods_lib

REPO = harness.REPO
progress, fmt = harness.progress, harness.fmt

#: Model FLOPs utilization to reach on a GPU, per network.
MFU_TARGETS = {"dit_b2": 0.40}

flags.DEFINE_enum("network", "digits", list(harness.NETWORKS), "The network every method trains.")
flags.DEFINE_list("methods", list(harness.METHODS), "Methods; flow matching (the reference) is added when missing.")
flags.DEFINE_integer("batch", 0, "Global batch (0: the network's default, digits 64, ddpmpp 128, dit_b2 256).")
flags.DEFINE_integer("rounds", 10, "Interleaved timing rounds.")
flags.DEFINE_integer("steps", 2, "Timed steps per method per round.")
flags.DEFINE_integer("warmup", 2, "Untimed steps per method after compilation.")
flags.DEFINE_list("nfes", ["1", "2", "4"], "Network evaluations per sample for the sampling throughput.")
flags.DEFINE_integer("sample_batch", 0, "Images per sampling call (0: the global batch).")
flags.DEFINE_integer("sample_reps", 3, "Timed sampling calls per NFE.")
flags.DEFINE_float("peak_tflops", 0.0, "Peak TFLOP/s per device for MFU (0: datasheet value or a measured matmul).")
flags.DEFINE_bool(
    "fresh_process",
    True,
    "Compile, measure memory and sample each method in a fresh subprocess. False: all in this process "
    "(faster, but compilations share warm caches and per-method memory is not reported).",
)
flags.DEFINE_multi_string(
    "model_override", [], "KEY=VALUE (a Python literal) set in the network's model section, e.g. channels=16."
)
flags.DEFINE_string("out_dir", os.path.join(REPO, "benchmarks", "results"), "Where bench_<tag>.json / .md go.")
flags.DEFINE_string("tag", "", "Result file tag (default: <machine>-<network>).")
# Internal: one method's compile / memory / sampling measurement in a fresh process.
flags.DEFINE_string("profile", "", "(internal) measure this method alone and write JSON to --profile_out.")
flags.DEFINE_string("profile_out", "", "(internal) see --profile.")
flags.DEFINE_string("cache_dir", "", "(internal) the compilation cache shared by the fresh processes.")
FLAGS = flags.FLAGS


def model_overrides() -> dict:
    try:
        return harness.parse_overrides(FLAGS.model_override)
    except ValueError as e:
        raise app.UsageError(str(e)) from e


def batch_size() -> int:
    return FLAGS.batch or harness.NETWORKS[FLAGS.network].default_batch


def use_compilation_cache(directory: str) -> None:
    """Persist every compilation in `directory`: the fresh processes compile each method cold and
    leave the executable there, so the timing process loads instead of compiling again."""
    import jax

    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def build(method: str, workdir: str) -> harness.MethodBench:
    return harness.MethodBench(method, FLAGS.network, batch_size(), workdir, model_overrides())


def measure_alone(bench: harness.MethodBench, *, memory: bool) -> dict:
    """Compile, --warmup steps, then memory when this process holds only this method."""
    out = {"num_params": bench.num_params, "notes": bench.notes, **bench.compile()}
    bench.run(FLAGS.warmup)
    if memory:
        out.update(harness.host_memory(), device_peak_mib=harness.device_peak_mib())
    else:
        out.update(host_peak_rss_mib=None, host_rss_mib=None, device_peak_mib=None)
    return out


def report_alone(method: str, out: dict) -> None:
    rss = out["host_peak_rss_mib"]
    progress(
        f"  {method}: compile {out['lower_s'] + out['compile_s']:.1f} s"
        + (f", peak RSS {rss:.0f} MiB" if rss is not None else "")
    )


def measure_in_fresh_process(method: str, cache_dir: str, out_path: str) -> dict:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        f"--profile={method}",
        f"--profile_out={out_path}",
        f"--cache_dir={cache_dir}",
        f"--network={FLAGS.network}",
        f"--batch={batch_size()}",
        f"--warmup={FLAGS.warmup}",
        *[f"--model_override={o}" for o in FLAGS.model_override],
    ]
    done = subprocess.run(cmd, cwd=REPO)
    if done.returncode:
        raise RuntimeError(f"measuring {method} in a fresh process failed (exit {done.returncode}): {' '.join(cmd)}")
    with open(out_path) as f:
        return json.load(f)


def method_row(
    method: str, alone: dict, rounds: list[list[float]], flow_rounds: list[list[float]], sampling: list, peak: float
) -> dict:
    stats = harness.step_summary(rounds, flow_rounds, batch_size())
    median = stats["step_s"]["median"]
    flops = alone["flops_per_step"]
    return {
        "method": method,
        "config": f"configs/{method}_digits.py",
        "num_params": alone["num_params"],
        "notes": alone["notes"],
        "compile_s": alone["lower_s"] + alone["compile_s"],
        "lower_s": alone["lower_s"],
        "xla_compile_s": alone["compile_s"],
        **stats,
        "target_ratio": methods_lib.REGISTRY[method].step_cost_target,
        "flops_per_step": flops,
        "tflops_per_s": flops / median / 1e12 if flops else None,
        "mfu": flops / median / (peak * 1e12) if flops else None,
        "host_peak_rss_mib": alone["host_peak_rss_mib"],
        "host_rss_mib": alone["host_rss_mib"],
        "device_peak_mib": alone["device_peak_mib"],
        "xla_memory_mib": alone["xla_memory_mib"],
        "sampling": sampling,
    }


def markdown(report: dict) -> str:
    s, m = report["settings"], report["machine"]
    rows = report["methods"]
    load = report["load_average"]
    steps = rows[0]["step_s"]["n"]
    with_d = [r["method"] for r in rows if harness.uses_d(r["method"])]
    with_d = f", plus the `d` input of {' and '.join(with_d)}" if with_d else ""
    lines = [
        f"# Step cost per method: {s['network_title']}, global batch {s['batch_size']}",
        "",
        f"Machine: {m['description']}. Load average (1 min) {load['start'][0]:.2f} at the start, "
        f"{load['end'][0]:.2f} at the end. Command: `{report['command']}` ({report['wall_s']:.0f} s).",
        "",
        f"Same network ({rows[0]['num_params']:,} parameters{with_d}) and batch for every method, "
        "each with the objective, optimizer and EMAs of its "
        f"`configs/<method>_digits.py`. ms / step: median [interquartile range] of {steps} single steps, "
        f"each waited for with `jax.block_until_ready`, in {s['rounds']} interleaved rounds of {s['steps']} "
        f"(round-robin, rotating start) after {s['warmup']} untimed steps per method. x flow: ratio of medians "
        "(range of the per-round ratios); targets are reported, not enforced. Compile: lower + compile of the "
        f"step, {s['compile_time']}. GFLOP: XLA cost analysis of the compiled step; MFU against "
        f"{report['peak_tflops']:.3g} TFLOP/s ({report['peak_source']}). Memory: {s['memory']}.",
        "",
        "| method | ms / step [IQR] | images / s | x flow (rounds) | target | compile s | GFLOP / step | MFU "
        "| peak RSS MiB | device peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        st = r["step_s"]
        target = r["target_ratio"]
        met = target is not None and r["ratio_to_flow"] <= target
        target_text = "-" if target is None else f"<= {target:g} ({'met' if met else 'missed'})"
        gflops = None if r["flops_per_step"] is None else r["flops_per_step"] / 1e9
        lines.append(
            f"| {r['method']} | {st['median'] * 1e3:.1f} [{st['q1'] * 1e3:.1f}, {st['q3'] * 1e3:.1f}] "
            f"| {r['images_per_s']:.0f} | {r['ratio_to_flow']:.2f} ({min(r['round_ratios']):.2f}-"
            f"{max(r['round_ratios']):.2f}) | {target_text} | {r['compile_s']:.1f} "
            f"| {fmt(gflops, '.2f', 'n/a')} | {fmt(r['mfu'], '.1%', 'n/a')} | {fmt(r['host_peak_rss_mib'], '.0f')} "
            f"| {fmt(r['device_peak_mib'], '.0f')} |"
        )
    mfu_target = report["mfu_target"]
    if mfu_target is not None:
        lines += ["", f"MFU target for this network on a GPU: >= {mfu_target:.0%} (reported, not enforced)."]
    nfes = [x["nfe"] for x in rows[0]["sampling"]]
    lines += [
        "",
        f"Sampling, images / s (batch {rows[0]['sampling'][0].get('batch_size', '-')}, compilation excluded, "
        f"median of {s['sample_reps']} calls; sampler and steps in brackets):",
        "",
        "| method | " + " | ".join(f"{n} NFE" for n in nfes) + " |",
        "|---|" + "---|" * len(nfes),
    ]
    for r in rows:
        cells = [
            "n/a" if x["images_per_s"] is None else f"{x['images_per_s']:.0f} ({x['sampler']}, {x['steps']})"
            for x in r["sampling"]
        ]
        lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
    notes = [f"- {r['method']}: {n}" for r in rows for n in r["notes"]]
    if notes:
        lines += ["", "Timing-only substitutions:", "", *notes]
    return "\n".join(lines) + "\n"


def run_profile() -> None:
    """--profile=METHOD: the fresh process of one method."""
    use_compilation_cache(FLAGS.cache_dir)
    with tempfile.TemporaryDirectory(prefix="bench_") as workdir:
        bench = build(FLAGS.profile, workdir)
        try:
            out = measure_alone(bench, memory=True)
        finally:
            bench.close()
    with open(FLAGS.profile_out, "w") as f:
        json.dump(out, f)


def measure(methods: list[str], scratch: str) -> dict:
    """Everything but the report: per-method compile / memory, the timing and sampling rounds,
    the machine and the peak FLOP/s."""
    benches: dict[str, harness.MethodBench] = {}
    alone: dict[str, dict] = {}
    try:
        if FLAGS.fresh_process:
            cache_dir = os.path.join(scratch, "compilation_cache")
            for i, m in enumerate(methods):
                progress(f"[{i + 1}/{len(methods)}] {m}: compile and memory in a fresh process")
                alone[m] = measure_in_fresh_process(m, cache_dir, os.path.join(scratch, f"{m}.json"))
                report_alone(m, alone[m])
            # Only now does this process touch the device: the fresh processes had it to themselves.
            use_compilation_cache(cache_dir)
        for i, m in enumerate(methods):
            progress(f"[{i + 1}/{len(methods)}] {m}: building for the timing rounds")
            benches[m] = bench = build(m, scratch)
            if FLAGS.fresh_process:
                bench.compile()  # loaded from the cache its fresh process wrote
                bench.run(FLAGS.warmup)
            else:
                alone[m] = measure_alone(bench, memory=False)
                report_alone(m, alone[m])
        rounds = harness.interleaved_rounds(benches, FLAGS.rounds, FLAGS.steps)
        nfes = [int(n) for n in FLAGS.nfes]
        sampling = harness.sampling_rounds(benches, nfes, FLAGS.sample_batch or batch_size(), FLAGS.sample_reps)
        model = benches[methods[0]].config.model
        peak, peak_source = harness.peak_tflops(model.get("dtype", "float32"), FLAGS.peak_tflops)
        return {
            "machine": harness.describe_machine(),
            "model": model.to_dict(),
            "peak_tflops": peak,
            "peak_source": peak_source,
            "methods": [
                method_row(m, alone[m], rounds[m], rounds[harness.REFERENCE], sampling[m], peak) for m in methods
            ],
        }
    finally:
        for bench in benches.values():
            bench.close()


def settings() -> dict:
    return {
        "network": FLAGS.network,
        "network_title": harness.NETWORKS[FLAGS.network].title,
        "batch_size": batch_size(),
        "rounds": FLAGS.rounds,
        "steps": FLAGS.steps,
        "warmup": FLAGS.warmup,
        "sample_reps": FLAGS.sample_reps,
        "compile_time": (
            "ahead of time, in a fresh process with an empty compilation cache"
            if FLAGS.fresh_process
            else "ahead of time, all methods in one process (--nofresh_process)"
        ),
        "memory": (
            "peak resident set (ru_maxrss) of a fresh process per method after compilation and the warm-up "
            "steps, Python and the JAX runtime included; device: memory_stats peak_bytes_in_use"
            if FLAGS.fresh_process
            else "not measured per method (--nofresh_process: one process for all)"
        ),
        "flops": "XLA cost_analysis of the compiled step (the per-device program); MFU per device",
    }


def main(argv):
    harness.check_command_line(argv)
    logging.set_verbosity(logging.WARNING)  # the per-method setup logs would drown the progress lines
    if FLAGS.profile:
        return run_profile()
    if min(FLAGS.rounds, FLAGS.steps, FLAGS.sample_reps) < 1 or FLAGS.warmup < 0:
        raise app.UsageError("--rounds, --steps and --sample_reps must be positive, --warmup not negative")
    methods = list(dict.fromkeys([harness.REFERENCE, *FLAGS.methods]))
    load_start = os.getloadavg()
    network = harness.NETWORKS[FLAGS.network]
    progress(f"{len(methods)} methods on {network.title}, batch {batch_size()}; load average {load_start[0]:.2f}")
    scratch = tempfile.mkdtemp(prefix="bench_")
    try:
        measured = measure(methods, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report = {
        "schema": 1,
        "command": "python benchmarks/bench.py" + "".join(f" {a}" for a in sys.argv[1:]),
        "load_average": {"start": list(load_start), "end": list(os.getloadavg())},
        "wall_s": time.perf_counter() - harness.T0,
        "settings": settings(),
        "reference": harness.REFERENCE,
        "mfu_target": MFU_TARGETS.get(FLAGS.network),
        **measured,
    }
    tag = FLAGS.tag or f"{harness.machine_tag(report['machine'])}-{FLAGS.network}"
    harness.publish_report(FLAGS.out_dir, f"bench_{tag}", report, markdown(report))


if __name__ == "__main__":
    app.run(main)
