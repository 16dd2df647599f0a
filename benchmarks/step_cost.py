"""Cost of one training step per method, relative to a reference method.

Every config is run with the same network and global batch (the reference
config's `model` and `train.batch_size` are imposed on the others; a method
that needs the second conditioning input, e.g. shortcut's step-size level,
keeps model.use_d). For each,
the jitted train step is compiled, warmed up, then timed over repeated steps
with block_until_ready; the median is reported with the ratio to the reference.

  python benchmarks/step_cost.py                       # TrigFlow vs sCT vs sCD on digits
  python benchmarks/step_cost.py --configs=flow_digits,trigflow_digits --steps=30

Writes a markdown table to stdout and JSON to --out (default: step_cost.json).
sCD needs a teacher: a TrigFlow workdir at --teacher, or one made on the fly
(initialized weights suffice for timing).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time

import ml_collections
from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DEFAULT_CONFIGS = ["trigflow_digits", "scm_sct_digits", "scm_scd_digits", "edm_digits", "ect_digits", "sct_digits"]
flags.DEFINE_list("configs", DEFAULT_CONFIGS, "Config names (first = reference).")
flags.DEFINE_integer("steps", 20, "Timed steps per method (after warm-up).")
flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
flags.DEFINE_string("teacher", "", "TrigFlow workdir for sCD (default: made on the fly).")
flags.DEFINE_string("out", "step_cost.json", "JSON output path.")
FLAGS = flags.FLAGS


def load(name: str):
    from fewstep_jax import config_lib

    return config_lib.load_sibling(os.path.join(REPO, "configs", "x.py"), name, None)


def make_teacher(reference) -> str:
    from fewstep_jax import train

    workdir = tempfile.mkdtemp(prefix="bench_teacher_")
    config = load("trigflow_digits")
    config.model = reference.model
    config.train.num_steps = 1
    config.train.sample_every = config.train.eval_every = 0
    train.train_and_evaluate(config, workdir)
    return workdir


def time_method(config) -> dict:
    import jax

    from fewstep_jax import sharding, train

    exp = train.setup(config, tempfile.mkdtemp(prefix="bench_"))
    train.attach_frozen(exp)
    state = train.init_state(exp)
    step_fn = train.make_train_step(exp)
    batches = [sharding.global_batch(next(exp.iterator), exp.batch_sharding) for _ in range(4)]
    start = time.perf_counter()
    state, metrics = step_fn(state, batches[0])
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    for i in range(FLAGS.warmup):
        state, metrics = step_fn(state, batches[i % 4])
    jax.block_until_ready(metrics)
    times = []
    for i in range(FLAGS.steps):
        start = time.perf_counter()
        state, metrics = step_fn(state, batches[i % 4])
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    exp.checkpointer.close()
    return {"compile_s": compile_s, "median_step_s": statistics.median(times), "min_step_s": min(times)}


def main(argv):
    del argv
    import jax

    names = FLAGS.configs
    reference = load(names[0])
    rows = []
    teacher = FLAGS.teacher
    for name in names:
        config = load(name)
        use_d = config.model.get("use_d", False)  # the method's own second conditioning input
        config.model = ml_collections.ConfigDict(reference.model.to_dict())
        if use_d:
            config.model.use_d = True
        config.train.batch_size = reference.train.batch_size
        config.train.init_from = ""
        if config.method.name == "scm_scd":
            teacher = teacher or make_teacher(reference)
            config.method.teacher = teacher
        result = time_method(config)
        rows.append({"config": name, "method": config.method.name, **result})
        print(f"{name}: {result['median_step_s'] * 1e3:.1f} ms/step", file=sys.stderr)
    ref = rows[0]["median_step_s"]
    for r in rows:
        r["ratio"] = r["median_step_s"] / ref
    device = jax.devices()[0]
    machine = (
        f"{device.platform} ({device.device_kind}), {os.cpu_count()} CPUs, {platform.machine()}, "
        f"jax {jax.__version__}"
    )
    print(f"Step cost, batch {reference.train.batch_size}, network of {names[0]}; {machine}\n")
    print(f"| config | method | median ms/step | ratio to {rows[0]['method']} | compile s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['config']} | {r['method']} | {r['median_step_s'] * 1e3:.1f} | "
            f"{r['ratio']:.2f} | {r['compile_s']:.1f} |"
        )
    with open(FLAGS.out, "w") as f:
        json.dump({"machine": machine, "batch_size": reference.train.batch_size, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    app.run(main)
