"""Images/s of the real-data readers per CPU core, against the rate an accelerator consumes.

  make bench-input                          # = python benchmarks/input_bench.py (a few minutes on 2 cores)
  python benchmarks/input_bench.py --examples=8192 --threads=0,4,8 --accelerator_json=benchmarks/results/X.json

For each dataset (cifar10, imagenet64, imagenet256_latents) this writes generated files in the format
a user provides (fewstep_jax/data/sources.py), prepares them with fewstep_jax.data.prepare (not
timed), then reads training batches the way training does (data.build_dataset, its 'train' split,
global batch --batch): one warm-up batch, then --batches timed batches, for each read_threads value
of --threads (0: read in the calling thread only).
  cifar10              cifar-10-python.tar.gz with the real pickle layout, smooth random 32x32 images
                       (stored as PNG once prepared, like the real ones).
  imagenet64           a train/ folder of per-synset folders of JPEGs of 96-200 px sides, ADM center
                       crop to 64x64 at preparation (stored as PNG); the reader decodes the PNGs.
  imagenet256_latents  latent shards of SD-VAE moments [n, 32, 32, 8] float16 with labels, preset sd;
                       the reader samples mean + std * noise with fresh noise per stream position.
Measured: images/s (wall clock) and images per CPU-second (this process's CPU time over all its
threads, the rate of one core). read_threads=0 starts no read-ahead threads, but the record reader
uses a few threads of its own, so the wall-clock rate is not one core's; images per CPU-second is,
and stays meaningful on a busy machine where the wall-clock rate does not. The machine and its load
average are recorded.

The rate an accelerator needs: the fastest method's images/s of the matching stage of an accelerator
benchmark report (--accelerator_json, benchmarks/accelerator.py; GPU reports only), else an estimate
from published training throughput (PUBLISHED: the source, scaled to an H100 SXM by the ratio of dense
peak FLOP/s at equal utilization; an estimate, and so marked). Cores needed = that rate / the per-core rate.

Writes --out_dir/input_bench_<machine>.json and .md.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import sys
import tarfile
import tempfile
import time

import harness
import numpy as np
from absl import app, flags, logging
from PIL import Image

DATASETS = ("cifar10", "imagenet64", "imagenet256_latents")
H100_BF16_TFLOPS = harness.datasheet_tflops("H100", "bfloat16")

#: Published training throughput per dataset, turned into an H100 estimate: images/s of the whole
#: run / its chips * (H100 SXM dense bf16 peak / that chip's dense peak in the run's precision) *
#: (cost of the published network / cost of ours, where they differ).
PUBLISHED = {
    "cifar10": dict(
        source="EDM (Karras et al. 2022), NVlabs/edm README: CIFAR-10 DDPM++, 200 Mimg (train.py default "
        "--duration) in ~2 days on 8 V100 in float32 (V100 SXM2 15.7 TFLOP/s)",
        images_per_s=200e6 / (2 * 86400),
        chips=8,
        chip_tflops=15.7,
        network_ratio=1.0,
    ),
    "imagenet64": dict(
        source="EDM (Karras et al. 2022), NVlabs/edm README: ImageNet-64 ADM, 2,500 Mimg in ~13 days on 32 A100 "
        "in fp16 (A100 312 TFLOP/s); the ADM network, not the suite's EDM2 ones",
        images_per_s=2500e6 / (13 * 86400),
        chips=32,
        chip_tflops=312.0,
        network_ratio=1.0,
    ),
    "imagenet256_latents": dict(
        source="DiT (Peebles & Xie 2023, sec. 4): DiT-XL/2 at 5.7 iterations/s, batch 256, on a TPU v3-256 pod "
        "(128 chips of 123 TFLOP/s bf16); DiT-B/2 costs 23.01 / 118.64 of XL/2's forward Gflops (DiT Table 4)",
        images_per_s=5.7 * 256,
        chips=128,
        chip_tflops=123.0,
        network_ratio=118.64 / 23.01,
    ),
}
#: The accelerator benchmark stage whose images/s a dataset feeds.
STAGE_OF = {"cifar10": "ddpmpp_bf16", "imagenet256_latents": "dit_b2_bf16"}

flags.DEFINE_list("datasets", list(DATASETS), f"Datasets, of {', '.join(DATASETS)}.")
flags.DEFINE_integer("examples", 4096, "Generated training examples per dataset.")
flags.DEFINE_integer("batch", 256, "Global batch of the timed reads.")
flags.DEFINE_integer("batches", 16, "Timed batches per setting (after one warm-up batch).")
flags.DEFINE_list("threads", ["0", "2"], "data.read_threads settings (0: the calling thread only).")
flags.DEFINE_string("accelerator_json", "", "An accelerator benchmark report (GPU) to take the needed rates from.")
flags.DEFINE_string("out_dir", os.path.join(harness.REPO, "benchmarks", "results"), "Where the report goes.")
flags.DEFINE_string("tag", "", "Result file tag (default: the machine).")
FLAGS = flags.FLAGS
progress = harness.progress


# ---------------------------------------------------------------------------- generated files


def smooth_images(rng: np.random.Generator, n: int, height: int, width: int) -> np.ndarray:
    """uint8 [n, height, width, 3]: upsampled coarse noise plus fine noise, so PNG and JPEG
    compress them about as well as photographs (plain noise would be the worst case)."""
    out = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        coarse = rng.integers(0, 256, (height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8)
        base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR), np.int16)
        out[i] = np.clip(base + rng.integers(-12, 13, base.shape), 0, 255)
    return out


def tar_add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def write_cifar10(folder: str, rng: np.random.Generator, n: int) -> None:
    """cifar-10-python.tar.gz: n training images in the five batches (CHW rows), a small test batch."""
    with tarfile.open(os.path.join(folder, "cifar-10-python.tar.gz"), "w:gz") as tar:
        sizes = {f"data_batch_{i + 1}": len(part) for i, part in enumerate(np.array_split(np.arange(n), 5))}
        sizes["test_batch"] = 16
        for name, size in sizes.items():
            rows = smooth_images(rng, size, 32, 32).transpose(0, 3, 1, 2).reshape(size, 3072)
            batch = {b"batch_label": name.encode(), b"labels": rng.integers(0, 10, size).tolist(), b"data": rows}
            tar_add(tar, f"cifar-10-batches-py/{name}", pickle.dumps(batch, protocol=2))
        meta = {b"label_names": [b"class"] * 10, b"num_cases_per_batch": 10000, b"num_vis": 3072}
        tar_add(tar, "cifar-10-batches-py/batches.meta", pickle.dumps(meta, protocol=2))


def write_imagenet64(folder: str, rng: np.random.Generator, n: int) -> None:
    """train/<synset>/<synset>_<i>.JPEG over the first 10 ILSVRC2012 synsets, sides of 96-200 px."""
    from fewstep_jax.data import formats

    synsets = formats.imagenet_labels("train")[:10]
    for i in range(n):
        synset = synsets[i % len(synsets)]
        height, width = (int(v) for v in rng.integers(96, 201, 2))
        os.makedirs(os.path.join(folder, "train", synset), exist_ok=True)
        Image.fromarray(smooth_images(rng, 1, height, width)[0]).save(
            os.path.join(folder, "train", synset, f"{synset}_{i}.JPEG"), format="JPEG", quality=90
        )


def write_latents(folder: str, rng: np.random.Generator, n: int) -> None:
    """Shards of SD-VAE moments [k, 32, 32, 8] float16 (mean of std ~5, log-variance ~ -12) with labels."""
    os.makedirs(folder)
    for i, part in enumerate(np.array_split(np.arange(n), max(1, n // 2048))):
        moments = np.empty((len(part), 32, 32, 8), np.float16)
        moments[..., :4] = 5 * rng.standard_normal((len(part), 32, 32, 4))
        moments[..., 4:] = -12 + rng.standard_normal((len(part), 32, 32, 4))
        np.savez(os.path.join(folder, f"shard_{i:03d}.npz"), moments=moments, labels=rng.integers(0, 1000, len(part)))


def prepare(name: str, root: str, rng: np.random.Generator) -> dict:
    """Generated files of `name` prepared into root/tfds; returns the data config that reads them."""
    from fewstep_jax.data import prepare as prepare_lib

    manual = os.path.join(root, name)
    os.makedirs(manual)
    data_dir = os.path.join(root, "tfds")
    start = time.perf_counter()
    extra = {}
    if name == "cifar10":
        write_cifar10(manual, rng, FLAGS.examples)
    elif name == "imagenet64":
        write_imagenet64(manual, rng, FLAGS.examples)
    else:
        manual = os.path.join(manual, "shards")
        write_latents(manual, rng, FLAGS.examples)
        extra["latent_preset"] = "sd"
    written = time.perf_counter()
    prepare_lib.prepare(name, manual_dir=manual, data_dir=data_dir, **extra)
    progress(f"{name}: files written in {written - start:.0f} s, prepared in {time.perf_counter() - written:.0f} s")
    shutil.rmtree(os.path.join(root, name))
    return dict(name=name, data_dir=data_dir, conditional=name != "cifar10", **extra)


# ---------------------------------------------------------------------------- reading


def read_rate(config: dict, threads: int) -> dict:
    """Timed reads of --batches training batches after one warm-up batch."""
    from fewstep_jax import data

    _, iterator = data.build_dataset(dict(config, read_threads=threads), seed=0, global_batch_size=FLAGS.batch)
    try:
        first = next(iterator)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(FLAGS.batches):
            batch = next(iterator)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        iterator.close()
    images = FLAGS.batches * FLAGS.batch
    finite = bool(np.isfinite(batch["x"]).all())
    return {
        "read_threads": threads,
        "images": images,
        "wall_s": wall,
        "cpu_s": cpu,
        "images_per_s": images / wall,
        "images_per_cpu_s": images / cpu if cpu > 0 else None,
        "shape": list(first["x"].shape),
        "finite": finite,
    }


def needed_rate(name: str, accelerator: dict | None) -> dict:
    """Images/s an accelerator consumes training on `name`: measured, else a published estimate."""
    stage = STAGE_OF.get(name)
    if accelerator and stage and (accelerator.get("machine") or {}).get("platform") not in (None, "cpu"):
        rows = ((accelerator["stages"].get(stage) or {}).get("result") or {}).get("methods") or {}
        rates = {m: r["images_per_s"] for m, r in rows.items() if r.get("images_per_s")}
        if rates:
            fastest = max(rates, key=rates.get)
            return {
                "images_per_s": rates[fastest],
                "estimate": False,
                "source": f"accelerator benchmark, {stage}/{fastest} on {accelerator['machine']['device_kind']}",
            }
    p = PUBLISHED[name]
    per_chip = p["images_per_s"] / p["chips"]
    return {
        "images_per_s": per_chip * H100_BF16_TFLOPS / p["chip_tflops"] * p["network_ratio"],
        "estimate": True,
        "published_images_per_s_per_chip": per_chip,
        "source": p["source"],
    }


def markdown(report: dict) -> str:
    m, load = report["machine"], report["load_average"]
    lines = [
        "| dataset | read_threads | images / s (wall) | images per CPU-second | accelerator needs, images / s "
        "| cores needed |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        need = row["need"]
        mark = " (estimate)" if need["estimate"] else ""
        for r in row["reads"]:
            per_core = r["images_per_cpu_s"]
            cores = need["images_per_s"] / per_core if per_core else None
            lines.append(
                f"| {row['dataset']} | {r['read_threads']} | {r['images_per_s']:.0f} | {harness.fmt(per_core, '.0f')} "
                f"| {need['images_per_s']:.0f}{mark} | {harness.fmt(cores, '.2f')} |"
            )
    sources = [f"- {row['dataset']}: {row['need']['source']}." for row in report["rows"]]
    header = [
        f"Machine: {m['description']}. Load average (1 min) {load['start'][0]:.2f} at the start, "
        f"{load['end'][0]:.2f} at the end (a shared machine: the wall-clock rates are lower than on an idle one; "
        f"images per CPU-second much less so). Command: `{report['command']}` ({report['wall_s']:.0f} s).",
        "",
        f"Reads of generated data in the real formats ({report['settings']['examples']} examples per dataset), "
        f"global batch {report['settings']['batch']}, {report['settings']['batches']} timed batches after a warm-up "
        "batch. Images per CPU-second counts the CPU time of all the process's threads: the rate of one core. "
        "Cores needed = the accelerator's rate / that.",
        "",
    ]
    return "\n".join(header + lines + ["", "Rates an accelerator needs:", "", *sources]) + "\n"


def main(argv):
    harness.check_command_line(argv, datasets=(FLAGS.datasets, DATASETS))
    if min(FLAGS.examples, FLAGS.batch, FLAGS.batches) < 1 or FLAGS.examples < 2 * FLAGS.batch:
        raise app.UsageError("--examples, --batch and --batches must be positive, --examples >= 2 x --batch")
    logging.set_verbosity(logging.WARNING)
    accelerator = None
    if FLAGS.accelerator_json:
        import json

        with open(FLAGS.accelerator_json) as f:
            accelerator = json.load(f)
    load_start = os.getloadavg()
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="input_bench_") as root:
        for name in FLAGS.datasets:
            config = prepare(name, root, rng)
            reads = []
            for threads in (int(t) for t in FLAGS.threads):
                reads.append(read_rate(config, threads))
                r = reads[-1]
                progress(
                    f"{name}, read_threads={threads}: {r['images_per_s']:.0f} images/s, "
                    f"{harness.fmt(r['images_per_cpu_s'], '.0f')} per CPU-second"
                )
            rows.append({"dataset": name, "reads": reads, "need": needed_rate(name, accelerator)})
    report = {
        "schema": 1,
        "command": "python benchmarks/input_bench.py" + "".join(f" {a}" for a in sys.argv[1:]),
        "machine": harness.describe_machine(),
        "load_average": {"start": list(load_start), "end": list(os.getloadavg())},
        "wall_s": time.perf_counter() - harness.T0,
        "settings": {"examples": FLAGS.examples, "batch": FLAGS.batch, "batches": FLAGS.batches},
        "rows": rows,
    }
    tag = FLAGS.tag or harness.machine_tag(report["machine"])
    harness.publish_report(FLAGS.out_dir, f"input_bench_{tag}", report, markdown(report))


if __name__ == "__main__":
    app.run(main)
