"""Memory against step time of the jvp training step, per rematerialization policy (model.remat).

  make bench-memory                    # = python benchmarks/memory.py: DiT-XL/2 MeanFlow, EDM2-L sCT
  python benchmarks/memory.py --runs=dit_xl2_meanflow --remat=none,nothing_saveable --time_batch=0
  python benchmarks/memory.py --memory_batch=64 --time_batch=4 --steps=5       # on a GPU

Runs (the paper configurations, network and method unchanged, random batches of the data's shape):
  dit_xl2_meanflow   configs/meanflow_imagenet256.py:xl  DiT-XL/2 on 32x32x4 latents, MeanFlow (jvp of u)
  edm2_l_sct         configs/scm_sct_imagenet64.py:l     EDM2-L on 64x64x3 images, sCT (jvp of F)
  dit_b2_meanflow    configs/meanflow_imagenet256.py:b4, patch 2: DiT-B/2 (not by default)
  edm2_s_sct         configs/scm_sct_imagenet64.py:s     EDM2-S (not by default)
Each run and policy is measured in a fresh process (--nofresh_process: all in this one).

For every run and policy:
  train step   XLA's memory plan (compiled.memory_analysis) of the whole training step at
               --memory_batch per device: parameters, EMAs and Adam state (arguments, donated),
               temporaries (activations and what the backward pass keeps), the new state (outputs).
               Compiled only: nothing is allocated, so any model size can be planned on a CPU.
  loss + grad  the jvp loss and its gradient (the step without the optimizer update, so that only
               parameters and gradients are allocated) at --time_batch: its memory plan and the
               median of --steps measured steps after one warm-up step (--time_batch=0: skip;
               on a CPU also skipped when the plan needs more than --max_memory_fraction of the
               available memory, since the machine may be shared).
XLA:CPU expands jax.checkpoint's optimization barriers before common-subexpression elimination,
which then merges the recomputation with the forward pass, so on a CPU rematerialization would
change nothing; every compilation here keeps the barriers (xla_disable_hlo_passes=
cse_barrier_expander), so the plans show what the policy does.

Writes --out_dir/memory_<machine>.json and .md and prints the table.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import harness
import jax
import ml_collections
from absl import app, flags, logging

from fewstep_jax import config_lib, experiment, sharding, train
from fewstep_jax import methods as methods_lib

#: Compiler options of every compilation here (see the module docstring).
KEEP_REMAT_BARRIERS = {"xla_disable_hlo_passes": "cse_barrier_expander"}


@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    title: str
    config: str  # configs/<file>.py:<variant>
    network: harness.Network
    model: tuple[tuple[str, Any], ...] = ()  # model-section changes to the paper configuration


LATENTS_256 = harness.Network(
    "imagenet256_latents",
    "",
    0,
    dict(name="imagenet256_latents", conditional=True),
    shape=(32, 32, 4),
    num_classes=1000,
)
IMAGENET_64 = harness.Network(
    "imagenet64", "", 0, dict(name="imagenet64", conditional=True), shape=(64, 64, 3), num_classes=1000, data_std=0.5
)
RUNS = {
    r.name: r
    for r in (
        Run(
            "dit_xl2_meanflow",
            "DiT-XL/2, MeanFlow (configs/meanflow_imagenet256.py:xl), 32x32x4 latents, 1,000 classes",
            "meanflow_imagenet256:xl",
            LATENTS_256,
        ),
        Run(
            "edm2_l_sct",
            "EDM2-L, sCT (configs/scm_sct_imagenet64.py:l), 64x64x3 images, 1,000 classes",
            "scm_sct_imagenet64:l",
            IMAGENET_64,
        ),
        # Smaller members of the same families, small enough to time on a shared CPU machine.
        Run(
            "dit_b2_meanflow",
            "DiT-B/2, MeanFlow (configs/meanflow_imagenet256.py:b4 with patch 2), 32x32x4 latents, 1,000 classes",
            "meanflow_imagenet256:b4",
            LATENTS_256,
            model=(("patch", 2),),
        ),
        Run(
            "edm2_s_sct",
            "EDM2-S, sCT (configs/scm_sct_imagenet64.py:s), 64x64x3 images, 1,000 classes",
            "scm_sct_imagenet64:s",
            IMAGENET_64,
        ),
    )
}
DEFAULT_RUNS = ("dit_xl2_meanflow", "edm2_l_sct")

flags.DEFINE_list("runs", list(DEFAULT_RUNS), f"Runs: {', '.join(RUNS)}.")
flags.DEFINE_list("remat", ["none", "dots_saveable", "nothing_saveable"], "model.remat policies.")
flags.DEFINE_string("attention", "auto", "model.attention of every run.")
flags.DEFINE_integer("memory_batch", 32, "Per-device batch of the compiled training step's memory plan.")
flags.DEFINE_integer("time_batch", 1, "Batch of the timed loss + gradient steps (0: compile-only).")
flags.DEFINE_integer("steps", 2, "Timed steps per configuration (after one warm-up step).")
flags.DEFINE_string("out_dir", os.path.join(harness.REPO, "benchmarks", "results"), "Where memory_<tag>.json / .md go.")
flags.DEFINE_string("tag", "", "Result file tag (default: the machine).")
flags.DEFINE_float(
    "max_memory_fraction", 0.7, "On a CPU, time only when the plan fits in this share of the available memory."
)
flags.DEFINE_multi_string("model_override", [], "KEY=VALUE (a Python literal) set in every run's model section.")
flags.DEFINE_bool(
    "fresh_process", True, "Measure each run and policy in a fresh process, so compilations do not pile up in memory."
)
flags.DEFINE_string("part_out", "", "(internal) measure the one run and policy given, write its row here.")
FLAGS = flags.FLAGS

progress = harness.progress


def run_config(run: Run, remat: str, batch: int) -> ml_collections.ConfigDict:
    file, _, variant = run.config.partition(":")
    config = config_lib.load_config(os.path.join(harness.REPO, "configs", f"{file}.py"), variant or None)
    config.model.update(dict(run.model))
    config.model.update(harness.parse_overrides(FLAGS.model_override))
    config.model.remat = remat
    config.model.attention = FLAGS.attention
    config.data = ml_collections.ConfigDict(run.network.data)
    config.train.batch_size = batch * jax.device_count()
    config.train.update(dict(sample_every=0, eval_every=0, init_from=""))
    return config


def train_step_plan(run: Run, remat: str, workdir: str) -> tuple[dict[str, float], float, int]:
    """(memory plan, compile seconds, parameter count) of the full training step, compiled only."""
    config = run_config(run, remat, FLAGS.memory_batch)
    with harness.random_batches(run.network):
        exp = experiment.setup(config, os.path.join(workdir, f"{run.name}-{remat}-plan"))
    try:
        batch = sharding.global_batch(next(exp.iterator), exp.batch_sharding)
        start = time.perf_counter()
        lowered = train.make_train_step(exp).lower(exp.abstract_state, batch)
        compiled = lowered.compile(compiler_options=KEEP_REMAT_BARRIERS)
        seconds = time.perf_counter() - start
        count = sum(leaf.size for leaf in jax.tree.leaves(exp.abstract_state.params["net"]))
        return harness.memory_plan(compiled), seconds, int(count)
    finally:
        exp.checkpointer.close()


def available_mib() -> float | None:
    """MemAvailable of /proc/meminfo in MiB (None where there is none)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def timed_gradient(run: Run, remat: str, workdir: str) -> dict:
    """Memory plan and measured seconds of the loss + gradient at --time_batch. Compiled against
    abstract parameters first; nothing is allocated when the plan exceeds --max_memory_fraction of
    the host's available memory on a CPU (the machine may be shared)."""
    config = run_config(run, remat, FLAGS.time_batch)
    with harness.random_batches(run.network):
        exp = experiment.setup(config, os.path.join(workdir, f"{run.name}-{remat}-time"))
    try:
        method = exp.method
        example = harness.example_batch(exp.info)

        def init(key):
            return method.project_params(method.init_params(key, example))

        key = jax.random.key(0)
        params = jax.eval_shape(init, key)
        extra = jax.eval_shape(method.init_extra, params)
        batches = [sharding.global_batch(next(exp.iterator), exp.batch_sharding) for _ in range(2)]

        def loss_and_grad(params, extra, batch, step):
            rng = jax.random.fold_in(jax.random.key(1), step)
            inputs = methods_lib.LossInputs(params, exp.frozen, extra)
            return jax.value_and_grad(lambda p: method.loss(p, batch, rng, step, inputs), has_aux=True)(params)

        start = time.perf_counter()
        lowered = jax.jit(loss_and_grad).lower(params, extra, batches[0], 0)
        compiled = lowered.compile(compiler_options=KEEP_REMAT_BARRIERS)
        out = {"plan": harness.memory_plan(compiled), "compile_s": time.perf_counter() - start}
        available = available_mib() if jax.default_backend() == "cpu" else None
        if available is not None and out["plan"]["total"] > FLAGS.max_memory_fraction * available:
            out["skipped"] = f"needs {gib(out['plan']['total'])} GiB, {gib(available)} GiB available"
            return out
        with harness.unoptimized_compilation():
            params = jax.jit(init)(key)
        extra = method.init_extra(params)
        jax.block_until_ready(compiled(params, extra, batches[0], 0))  # warm-up
        times = []
        for i in range(FLAGS.steps):
            start = time.perf_counter()
            jax.block_until_ready(compiled(params, extra, batches[(i + 1) % 2], i + 1))
            times.append(time.perf_counter() - start)
        del params, extra
        gc.collect()
        return dict(out, times_s=times, median_s=statistics.median(times))
    finally:
        exp.checkpointer.close()


def gib(mib: float) -> str:
    return f"{mib / 1024:.2f}"


def markdown(report: dict) -> str:
    s = report["settings"]
    timed = s["time_batch"] > 0
    lines = [
        "| run | remat | train step: temp GiB | train step: total GiB | loss + grad: temp GiB "
        "| loss + grad: s / step |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        step = row["train_step"]
        grad = row.get("loss_grad")
        temp = gib(grad["plan"]["temp"]) if grad else "-"
        seconds = (
            "-" if not grad else f"not run ({grad['skipped']})" if "skipped" in grad else f"{grad['median_s']:.2f}"
        )
        lines.append(
            f"| {row['run']} | {row['remat']} | {gib(step['temp'])} | {gib(step['total'])} | {temp} | {seconds} |"
        )
    header = [
        f"Machine: {report['machine']['description']}. Command: `{report['command']}` "
        f"({report['wall_s'] / 60:.0f} min).",
        "",
        *(
            []
            if report["complete"]
            else [
                f"**Partial: {len(report['rows'])} of {len(report['planned'])} planned rows** (the run was "
                "stopped or is still going; the file is rewritten after every row).",
                "",
            ]
        ),
        f"Train step: XLA's plan of the whole training step (Adam, EMAs, model.attention='{s['attention']}') at "
        f"batch {s['memory_batch']} per device, compiled only; total = arguments + temporaries + outputs - donated. "
        + (
            f"Loss + grad: the jvp loss and its gradient at batch {s['time_batch']}, XLA's temporaries and the "
            f"median of {s['steps']} measured steps after a warm-up step."
            if timed
            else "Loss + grad: not timed (--time_batch=0)."
        ),
        "",
    ]
    params = {row["run"]: row["num_params"] for row in report["rows"]}
    notes = [f"- {name}: {RUNS[name].title}, {count / 1e6:.0f}M parameters." for name, count in params.items()]
    return "\n".join(header + lines + [""] + notes) + "\n"


def measure(name: str, remat: str) -> dict:
    """The table row of one run and policy."""
    run = RUNS[name]
    with tempfile.TemporaryDirectory(prefix="memory_") as workdir:
        progress(f"{name}, remat={remat}: compiling the training step at batch {FLAGS.memory_batch}")
        step_plan, compile_s, count = train_step_plan(run, remat, workdir)
        row = dict(run=name, remat=remat, num_params=count, train_step=step_plan, compile_s=compile_s)
        progress(f"  temp {gib(step_plan['temp'])} GiB, total {gib(step_plan['total'])} GiB, {compile_s:.0f} s")
        if FLAGS.time_batch:
            row["loss_grad"] = grad = timed_gradient(run, remat, workdir)
            timing = grad.get("skipped") or f"{grad['median_s']:.2f} s / step"
            progress(f"  loss + grad at batch {FLAGS.time_batch}: temp {gib(grad['plan']['temp'])} GiB, {timing}")
    return row


def measure_in_fresh_process(name: str, remat: str, path: str) -> dict:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        f"--runs={name}",
        f"--remat={remat}",
        f"--part_out={path}",
        f"--attention={FLAGS.attention}",
        f"--memory_batch={FLAGS.memory_batch}",
        f"--time_batch={FLAGS.time_batch}",
        f"--steps={FLAGS.steps}",
        f"--max_memory_fraction={FLAGS.max_memory_fraction}",
        *[f"--model_override={o}" for o in FLAGS.model_override],
    ]
    done = subprocess.run(cmd, cwd=harness.REPO)
    if done.returncode:
        raise RuntimeError(f"measuring {name} with remat={remat} failed (exit {done.returncode}): {' '.join(cmd)}")
    with open(path) as f:
        return json.load(f)


def main(argv):
    harness.check_command_line(argv, runs=(FLAGS.runs, RUNS))
    if FLAGS.memory_batch < 1 or FLAGS.time_batch < 0 or FLAGS.steps < 1:
        raise app.UsageError("--memory_batch and --steps must be positive, --time_batch not negative")
    try:
        harness.parse_overrides(FLAGS.model_override)
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    logging.set_verbosity(logging.WARNING)
    if FLAGS.part_out:
        with open(FLAGS.part_out, "w") as f:
            json.dump(measure(FLAGS.runs[0], FLAGS.remat[0]), f)
        return
    report = {
        "schema": 1,
        "command": "python benchmarks/memory.py" + "".join(f" {a}" for a in sys.argv[1:]),
        "wall_s": 0.0,
        "machine": harness.describe_machine(),
        "settings": {
            "memory_batch": FLAGS.memory_batch,
            "time_batch": FLAGS.time_batch,
            "steps": FLAGS.steps,
            "attention": FLAGS.attention,
            "compiler_options": KEEP_REMAT_BARRIERS,
        },
        "planned": [[name, remat] for name in FLAGS.runs for remat in FLAGS.remat],
        "rows": [],
        "complete": False,
    }
    tag = FLAGS.tag or harness.machine_tag(report["machine"])
    planned = report["planned"]
    with tempfile.TemporaryDirectory(prefix="memory_") as scratch:
        for i, (name, remat) in enumerate(planned):
            if FLAGS.fresh_process:
                row = measure_in_fresh_process(name, remat, os.path.join(scratch, f"{name}-{remat}.json"))
            else:
                row = measure(name, remat)
            report["rows"].append(row)
            report["wall_s"] = time.perf_counter() - harness.T0
            report["complete"] = i + 1 == len(planned)
            # Rewritten after every row: a run stopped part-way keeps what it measured.
            if report["complete"]:
                harness.publish_report(FLAGS.out_dir, f"memory_{tag}", report, markdown(report))
            else:
                harness.write_report(FLAGS.out_dir, f"memory_{tag}", report, markdown(report))


if __name__ == "__main__":
    app.run(main)
