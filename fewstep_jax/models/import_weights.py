"""Convert an official pretrained model into the suite's format:

    python -m fewstep_jax.models.import_weights --from=edm --in=edm-cifar10-32x32-uncond-vp.pkl --out=DIR [--check]

--from: edm | edm2 | dit | sit (models/pretrained: REGISTRY). Writes DIR/params.safetensors (the
suite network's params) and DIR/pretrained.json (the model section that rebuilds the network,
the data it expects, the method of its parameterization, the paper's sampler and a summary),
and prints the summary: architecture, parameter count, EMA (EDM2's post-hoc sigma_rel, from the
file name), resolution, labels. `train.init_from=DIR` and sCD's `method.teacher=DIR` read the
folder (or the released file itself, converted on the fly each time: the folder saves that).

--check samples a small grid with the paper's deterministic sampler (EDM: Heun, 18 steps = NFE
35 for CIFAR-10, 40 steps = NFE 79 for its ImageNet-64 ADM; EDM2: Heun, 32 steps = NFE 63),
balanced labels for conditional models, and writes DIR/check.png (latent models: their first
three latent channels, there is no VAE decoder in the suite) so that one sees the import worked.
On a CPU keep --check_samples small.

Why safetensors + JSON rather than a suite checkpoint: a checkpoint of this suite is a whole
training state (optimizer moments, EMAs, data iterator) under a full config; an imported model
has none of these, and train.init_from / method.teacher only read the network's weights and the
sections that say what they mean. The folder holds exactly that, readable without building an
optimizer (1.5B parameters for EDM2-XXL), and cannot carry code.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    from fewstep_jax.models.pretrained import REGISTRY

    flags.DEFINE_enum(
        "from",
        None,
        list(REGISTRY),
        "Family of the file: " + "; ".join(f"{k}: {v.description}" for k, v in REGISTRY.items()),
    )
    flags.DEFINE_string("in", None, "The released file (.pkl / .pt).")
    flags.DEFINE_string("out", None, "Folder to write params.safetensors and pretrained.json into.")
    flags.DEFINE_bool("check", False, "Sample a small grid with the paper's sampler into OUT/check.png.")
    flags.DEFINE_integer("check_samples", 16, "Number of samples of --check.")
    flags.DEFINE_integer("check_steps", 0, "Sampler steps of --check (0: the paper's).")
    flags.DEFINE_integer("seed", 0, "Random seed of --check.")
    flags.mark_flags_as_required(["from", "in", "out"])


def check_samples(imported: Any, out_dir: str, *, num_samples: int = 16, num_steps: int = 0, seed: int = 0) -> dict:
    """Sample `num_samples` with the imported model's sampler (its method section); write
    out_dir/check.png. Returns what was done and the samples' statistics."""
    import functools

    import jax
    import ml_collections
    import numpy as np

    from fewstep_jax import evaluate, methods
    from fewstep_jax.data import DatasetInfo

    info = DatasetInfo(imported.data_name or imported.family, tuple(imported.data_shape), imported.num_classes, 0.5)
    method = methods.build(ml_collections.ConfigDict(imported.method), imported.build(), info)
    sampler = imported.sampling["sampler"]
    steps = num_steps or int(imported.sampling["num_steps"])
    labels = evaluate.eval_labels(imported.num_classes, num_samples)
    sample = jax.jit(functools.partial(method.sample, num_samples=num_samples, num_steps=steps, sampler=sampler))
    start = time.perf_counter()
    x = np.asarray(sample({"net": imported.params}, jax.random.key(seed), labels=labels))
    seconds = time.perf_counter() - start
    path = os.path.join(out_dir, "check.png")
    evaluate.save_samples_png(x, path)
    return dict(
        png=path,
        samples=num_samples,
        sampler=sampler,
        steps=steps,
        nfe=method.nfe(steps, sampler),
        labels=None if labels is None else labels.tolist(),
        finite=bool(np.all(np.isfinite(x))),
        mean=float(np.mean(x)),
        std=float(np.std(x)),
        min=float(np.min(x)),
        max=float(np.max(x)),
        seconds=round(seconds, 1),
        note="latent channels 0-2 shown (no VAE decoder in the suite)"
        if imported.data_name is None and imported.data_shape[-1] == 4
        else "",
    )


def convert(family: str | None, in_path: str, out_dir: str) -> Any:
    """Import `in_path` and write it into `out_dir`; returns the Imported."""
    from fewstep_jax.models import pretrained

    imported = pretrained.import_file(in_path, family)
    pretrained.save(imported, out_dir)
    return imported


def _print_summary(imported: Any, out_dir: str) -> None:
    print(f"imported {imported.source} ({imported.family}) -> {out_dir}")
    for key, value in imported.summary.items():
        print(f"  {key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")
    print(f"  model section: {json.dumps(imported.model)}")
    print(f"  method: {json.dumps(imported.method)}; sampler: {json.dumps(imported.sampling)}")
    print(f"use it with --config.train.init_from={out_dir} (or sCD's --config.method.teacher={out_dir})")


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from fewstep_jax.models import pretrained

    try:
        imported = convert(FLAGS["from"].value, FLAGS["in"].value, FLAGS.out)
    except (pretrained.PretrainedError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    _print_summary(imported, FLAGS.out)
    if FLAGS.check:
        report = check_samples(
            imported, FLAGS.out, num_samples=FLAGS.check_samples, num_steps=FLAGS.check_steps, seed=FLAGS.seed
        )
        print(f"check: {json.dumps(report)}")
        if not report["finite"]:
            print("error: the check samples are not finite", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
