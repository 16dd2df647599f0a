"""Throughput of the latent path's networks: VAE encode and decode, DINOv2 and Inception features.

  make bench-latent                                          # = python benchmarks/latent_bench.py
  python benchmarks/latent_bench.py --batches=32,64,128 --precisions=fp32_highest,fp32,bf16   # a GPU

Every network runs at its full published size with random weights (the throughput does not
depend on the values): the SD kl-f8 VAE (encode 256 px -> 32x32x4 moments, decode back; or
--resolution=512), DINOv2 ViT-L/14 at 224 px (FD-DINOv2, EDM2's protocol, resize included) and
the FID Inception-v3 at 299 px (resize included). For each network, batch and precision:

  compile    lower + compile of the jitted function (s)
  images/s   batch / median of --reps timed calls (each waited for), after one warm-up call
  memory     XLA's compiled memory plan: arguments + outputs + temporaries (MiB)
  error      bf16 / fp32-default against fp32 at Precision.HIGHEST on the same inputs: decode as
             the largest uint8 difference of the decoded images; encode and features as
             max |difference| / RMS of the fp32-HIGHEST output

Precisions: fp32_highest (float32 with Precision.HIGHEST: what the metrics use), fp32 (float32,
the backend's default matmul precision, TF32 on recent NVIDIA GPUs), bf16 (bfloat16 compute;
normalization statistics and softmax stay in float32). The report ends with what FID-50k and
FD-DINOv2-50k of a latent model cost at the measured rates (decoding and both feature networks;
sampling not included). Writes --out_dir/latent_bench_<machine>.json and .md.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import harness
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("parts", ["encode", "decode", "dinov2", "inception"], "Networks to measure.")
flags.DEFINE_list("batches", ["1"], "Batch sizes (images per call); a GPU wants 32,64,128.")
flags.DEFINE_list("precisions", ["fp32_highest", "bf16"], "fp32_highest, fp32, bf16.")
flags.DEFINE_integer("resolution", 256, "Image side for the VAE: 256 (32x32 latents) or 512 (64x64).")
flags.DEFINE_integer("reps", 3, "Timed calls per setting.")
flags.DEFINE_string("out_dir", os.path.join(harness.REPO, "benchmarks", "results"), "Where the report goes.")
flags.DEFINE_string("tag", "", "Result file tag (default: the machine).")

PRECISIONS = {
    "fp32_highest": (jnp.float32, jax.lax.Precision.HIGHEST),
    "fp32": (jnp.float32, jax.lax.Precision.DEFAULT),
    "bf16": (jnp.bfloat16, jax.lax.Precision.DEFAULT),
}
progress = harness.progress


def network(part: str, dtype, precision, resolution: int):
    """(jitted fn(params, x), params, input array) of one network at full size, random weights."""
    rng = np.random.default_rng(0)
    if part in ("encode", "decode"):
        from fewstep_jax.models import vae

        net = vae.AutoencoderKL(vae.SD_KL_F8, dtype=dtype, precision=precision)
        latent = resolution // 8
        params = net.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))["params"]
        if part == "encode":
            x = rng.uniform(-1, 1, (1, resolution, resolution, 3)).astype(np.float32)
            return jax.jit(lambda p, x: net.apply({"params": p}, x, method=net.encode)), params, x
        z = rng.standard_normal((1, latent, latent, 4)).astype(np.float32)

        def decode(p, z):
            return jnp.clip(jnp.round(127.5 * (net.apply({"params": p}, z, method=net.decode) + 1)), 0, 255)

        return jax.jit(decode), params, z
    images = rng.integers(0, 256, (1, resolution, resolution, 3), dtype=np.uint8)
    if part == "dinov2":
        from fewstep_jax.metrics import dinov2

        net = dinov2.DINOv2(dinov2.VIT_L14, dtype=dtype, precision=precision)
        params = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))["params"]
        params = jax.tree.map(lambda s: jnp.asarray(0.02 * rng.standard_normal(s.shape), jnp.float32), params)
        return jax.jit(lambda p, x: net.apply({"params": p}, dinov2.preprocess(x))), params, images
    from fewstep_jax.metrics import inception

    net = inception.InceptionV3()
    params = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 299, 299, 3))))["params"]
    params = jax.tree.map(lambda s: jnp.asarray(0.02 * rng.standard_normal(s.shape), jnp.float32), params)
    return jax.jit(lambda p, x: net.apply({"params": p}, inception.preprocess(x))["pool3"]), params, images


def measure(part: str, batch: int, name: str, reference: dict) -> dict:
    dtype, precision = PRECISIONS[name]
    if part == "inception" and name != "fp32_highest":
        return {}  # the FID network runs in float32 at its own precision only
    fn, params, one = network(part, dtype, precision, FLAGS.resolution)
    x = np.repeat(one, batch, axis=0)
    start = time.perf_counter()
    compiled = fn.lower(params, x).compile()
    compile_s = time.perf_counter() - start
    plan = harness.memory_plan(compiled)  # nothing is donated: total = arguments + outputs + temporaries
    out = np.asarray(jax.block_until_ready(compiled(params, x)), np.float64)
    times = []
    for _ in range(FLAGS.reps):
        start = time.perf_counter()
        jax.block_until_ready(compiled(params, x))
        times.append(time.perf_counter() - start)
    row = dict(
        part=part,
        batch=batch,
        precision=name,
        compile_s=compile_s,
        memory_mib=None if plan is None else plan["total"],
        median_s=statistics.median(times),
        images_per_s=batch / statistics.median(times),
    )
    key = (part, batch)
    if name == "fp32_highest":
        reference[key] = out
    elif key in reference:
        ref = reference[key]
        if part == "decode":
            row["error"] = f"max uint8 diff {int(np.abs(out - ref).max())}"
        else:
            rms = float(np.sqrt(np.mean(ref**2))) or 1.0
            row["error"] = f"max|d|/RMS {np.abs(out - ref).max() / rms:.2e}"
    progress(f"{part} batch {batch} {name}: {row['images_per_s']:.3g} img/s, compile {compile_s:.1f} s")
    return row


def fid_cost(rows: list[dict]) -> dict:
    """Seconds per image of the best measured setting of each part at fp32_highest (the metrics'
    precision), and FID-50k + FD-DINOv2-50k of a latent model in minutes."""
    best = {}
    for r in rows:
        if r["precision"] == "fp32_highest":
            best[r["part"]] = max(best.get(r["part"], 0.0), r["images_per_s"])
    parts = [p for p in ("decode", "inception", "dinov2") if p in best]
    seconds = sum(50_000 / best[p] for p in parts)
    return {"rates": best, "parts": parts, "minutes_50k": seconds / 60}


def markdown(report: dict) -> str:
    lines = [
        f"# Latent-path throughput: {report['machine']['description']}",
        "",
        f"`{report['command']}`; VAE at {report['resolution']} px; load average at start "
        f"{report['load_average']['start'][0]:.2f}, end {report['load_average']['end'][0]:.2f}.",
        "",
        "| network | batch | precision | images/s | compile (s) | memory (MiB) | vs fp32 HIGHEST |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        memory = "-" if r["memory_mib"] is None else f"{r['memory_mib']:.0f}"
        lines.append(
            f"| {r['part']} | {r['batch']} | {r['precision']} | {r['images_per_s']:.3g} | {r['compile_s']:.1f} | "
            f"{memory} | {r.get('error', '-')} |"
        )
    cost = report["fid_cost"]
    if cost["parts"]:
        lines += [
            "",
            f"50,000 images through the measured parts of FID-50k and FD-DINOv2-50k of a latent model "
            f"({', '.join(cost['parts'])}; fp32 HIGHEST, best batch; sampling not included): "
            f"**{cost['minutes_50k']:.0f} min** on this machine.",
        ]
    return "\n".join(lines) + "\n"


def main(argv):
    harness.check_command_line(argv)
    unknown = sorted(set(FLAGS.parts) - {"encode", "decode", "dinov2", "inception"})
    unknown += sorted(set(FLAGS.precisions) - set(PRECISIONS))
    if unknown or FLAGS.reps < 1 or FLAGS.resolution % 8:
        raise app.UsageError(f"unknown parts / precisions {unknown}, or a bad --reps / --resolution")
    precisions = sorted(FLAGS.precisions, key=lambda p: p != "fp32_highest")  # the reference first
    load_start = os.getloadavg()
    rows, reference = [], {}
    for part in FLAGS.parts:
        for batch in (int(b) for b in FLAGS.batches):
            for name in precisions:
                row = measure(part, batch, name, reference)
                if row:
                    rows.append(row)
    report = {
        "command": "python benchmarks/latent_bench.py" + "".join(f" {a}" for a in sys.argv[1:]),
        "machine": harness.describe_machine(),
        "resolution": FLAGS.resolution,
        "load_average": {"start": list(load_start), "end": list(os.getloadavg())},
        "rows": rows,
    }
    report["fid_cost"] = fid_cost(rows)
    tag = FLAGS.tag or harness.machine_tag(report["machine"])
    harness.publish_report(FLAGS.out_dir, f"latent_bench_{tag}", report, markdown(report))


if __name__ == "__main__":
    app.run(main)
