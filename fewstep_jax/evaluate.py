"""Sampling, sample grids (PNG), NFE sweeps and evaluation reports."""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from fewstep_jax.config_lib import EvalConfig

PROGRESS_SECONDS = 30.0
#: Keys of an evaluation row that describe how it was sampled; every other key is a metric.
ROW_KEYS = ("steps", "nfe", "guidance")


class SampleFns:
    """Compiled sampling functions, one per (batch, steps, sampler, guidance).

    With a batch `sharding` (the training loop and modes.py pass the mesh's), the samples and
    labels are split over its devices along the batch axis, so large evaluations (FID-50k) use
    every device; batches are then padded to a multiple of the device count.
    """

    def __init__(self, method, sharding: jax.sharding.NamedSharding | None = None):
        self.method = method
        self.sharding = sharding
        self.cache: dict[tuple, Callable] = {}

    @property
    def num_shards(self) -> int:
        return 1 if self.sharding is None else self.sharding.mesh.size

    def __call__(self, params, rng, *, labels, num_samples, num_steps, sampler, guidance):
        """Samples from `params` ({'net': ..., plus the method's sampling inputs})."""
        key = (num_samples, num_steps, sampler, float(guidance), labels is None)
        if key not in self.cache:
            self.method.check_steps(num_steps)

            def fn(params, rng, labels):
                return self.method.sample(
                    params,
                    rng,
                    num_samples=num_samples,
                    labels=labels,
                    num_steps=num_steps,
                    sampler=sampler,
                    guidance=guidance,
                )

            out = None if self.sharding is None else self.sharding
            self.cache[key] = jax.jit(fn, out_shardings=out)
        if labels is not None and self.sharding is not None:
            labels = jax.device_put(labels, self.sharding)
        return self.cache[key](params, rng, labels)


def eval_labels(num_classes: int, n: int) -> np.ndarray | None:
    """Balanced labels 0, 1, ..., C-1, 0, 1, ... for conditional models; None otherwise."""
    return None if num_classes == 0 else (np.arange(n) % num_classes).astype(np.int32)


def generate(
    sample_fns: SampleFns,
    params: Any,
    rng: jax.Array,
    *,
    n: int,
    labels: np.ndarray | None,
    num_steps: int,
    sampler: str,
    guidance: float,
    batch_size: int,
) -> np.ndarray:
    """n samples in batches of at most batch_size (last batch padded, then cut); batch_size is
    rounded up to a multiple of the sampler's shard count. Logs progress on long runs."""
    batch_size = -(-batch_size // sample_fns.num_shards) * sample_fns.num_shards
    out = []
    start_time = last_log = time.perf_counter()
    for i, start in enumerate(range(0, n, batch_size)):
        size = min(batch_size, n - start)
        lab = None
        if labels is not None:
            lab = np.resize(labels[start : start + size], batch_size)  # pad to a fixed shape
        x = sample_fns(
            params,
            jax.random.fold_in(rng, i),
            labels=None if lab is None else jnp.asarray(lab),
            num_samples=batch_size,
            num_steps=num_steps,
            sampler=sampler,
            guidance=guidance,
        )
        if not x.is_fully_addressable:  # multi-process: every process gets the whole batch
            x = multihost_utils.process_allgather(x, tiled=True)
        out.append(np.asarray(jax.device_get(x))[:size])
        if time.perf_counter() - last_log > PROGRESS_SECONDS and start + size < n:
            done, elapsed = start + size, time.perf_counter() - start_time
            logging.info("sampling %d steps: %d / %d (%.0f samples/s, ETA %.0f s)",
                         num_steps, done, n, done / elapsed, (n - done) * elapsed / done)
            last_log = time.perf_counter()
    return np.concatenate(out)


def generate_steps(
    sample_fns: SampleFns,
    params: Any,
    rng: jax.Array,
    num_steps: int,
    ev: EvalConfig,
    *,
    n: int,
    labels: np.ndarray | None,
    batch_size: int,
) -> np.ndarray:
    """n samples with `num_steps` steps of the configured sampler (key fold_in(rng, steps)), with
    the guidance the method applies at that step count for eval.guidance (Method.sampling_guidance)."""
    return generate(
        sample_fns,
        params,
        jax.random.fold_in(rng, num_steps),
        n=n,
        labels=labels,
        num_steps=num_steps,
        sampler=ev.sampler,
        guidance=sample_fns.method.sampling_guidance(num_steps, ev.guidance),
        batch_size=batch_size,
    )


# ---------------------------------------------------------------------------
# Pictures


def image_grid(images: np.ndarray, *, cols: int | None = None, scale: int = 1) -> np.ndarray:
    """[N, H, W, C] in [-1, 1] -> uint8 [rows*(H+1)+1, cols*(W+1)+1, 3] with 1-px borders.

    Grayscale is repeated to RGB; other channel counts (VAE latents) show channels 0-2 as RGB.
    """
    if images.shape[-1] not in (1, 3):
        images = images[..., :3]
    n, h, w, c = images.shape
    cols = cols or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    pix = np.clip((images + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    if c == 1:
        pix = np.repeat(pix, 3, axis=-1)
    pix = pix.repeat(scale, axis=1).repeat(scale, axis=2)
    h, w = h * scale, w * scale
    grid = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1, 3), 64, np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = pix[i]
    return grid


def save_samples_png(
    samples: np.ndarray,
    path: str,
    *,
    title: str = "",
    cols: int | None = None,
    reference: np.ndarray | None = None,
) -> None:
    """Images -> a grid PNG; 2-D points -> a scatter plot PNG (reference in grey)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if samples.ndim == 4:
        from PIL import Image

        scale = max(1, 32 // samples.shape[1])
        Image.fromarray(image_grid(samples, cols=cols, scale=scale)).save(path)
        return
    from matplotlib.figure import Figure  # no pyplot: never touches the caller's backend

    fig = Figure(figsize=(4, 4), dpi=100)
    ax = fig.subplots()
    if reference is not None:
        ax.scatter(reference[:, 0], reference[:, 1], s=1, c="0.8", label="data")
    ax.scatter(samples[:, 0], samples[:, 1], s=1, c="tab:blue", label="samples")
    ax.set_xlim(-4.5, 4.5)
    ax.set_ylim(-4.5, 4.5)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)


def plot_metric_vs_nfe(
    series: list[tuple[str, list[dict]]], metric: str, floor: float | None, path: str, title: str
) -> None:
    """Metric vs NFE (log-log), one line per (label, rows) series, with the real-data floor."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.8), dpi=110)
    ax = fig.subplots()
    for label, rows in series:
        rows = sorted(rows, key=lambda r: r["nfe"])
        ax.plot([r["nfe"] for r in rows], [r[metric] for r in rows], "o-", label=label)
    if floor is not None:
        ax.axhline(floor, color="0.4", ls="--", label="real-data floor")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("NFE")
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


# ---------------------------------------------------------------------------
# Sweeps


def evaluate_steps(
    method,
    sample_fns: SampleFns,
    params: Any,
    evaluator: Any,
    ev: EvalConfig,
    rng: jax.Array,
    steps: Sequence[int],
) -> list[dict]:
    """Metric rows (one per step count) for the configured sampler and guidance; each row records
    the guidance scale its samples used (eval.guidance where the method applies it, else 1)."""
    n = ev.num_samples or evaluator.num_samples
    labels = eval_labels(method.info.num_classes, n)
    rows = []
    for k in steps:
        samples = generate_steps(
            sample_fns, params, rng, k, ev, n=n, labels=labels, batch_size=min(ev.batch_size, n)
        )
        metrics = evaluator.evaluate(samples, labels)
        row = {
            "steps": int(k),
            "nfe": method.nfe(k, ev.sampler),
            "guidance": float(method.sampling_guidance(k, ev.guidance)),
            **{m: float(v) for m, v in metrics.items()},
        }
        logging.info(
            "eval %s steps=%d nfe=%d guidance=%g: %s",
            ev.sampler,
            k,
            row["nfe"],
            row["guidance"],
            "  ".join(f"{m}={v:.4g}" for m, v in metrics.items()),
        )
        rows.append(row)
    return rows


def write_report(rows: list[dict], floor: dict, *, primary: str, out_dir: str, title: str) -> str:
    """results.json, results.md (a table with the floor; a guidance column when a row was guided)
    and metric_vs_nfe.png in out_dir."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump({"rows": rows, "floor": floor, "primary": primary}, f, indent=2)
    metrics = [k for k in rows[0] if k not in ROW_KEYS] if rows else []
    guided = any(r.get("guidance", 1.0) != 1.0 for r in rows)
    head = ["steps", "NFE"] + (["guidance"] if guided else [])
    lines = [f"# {title}", "", "| " + " | ".join(head + metrics) + " |"]
    lines.append("|" + "---|" * (len(head) + len(metrics)))
    for r in rows:
        cells = [str(r["steps"]), str(r["nfe"])] + ([f"{r.get('guidance', 1.0):g}"] if guided else [])
        lines.append("| " + " | ".join(cells + [f"{r[m]:.4g}" for m in metrics]) + " |")
    if floor:
        values = " | ".join(f"{floor.get(m, float('nan')):.4g}" for m in metrics)
        lines.append("| real data (floor) | " + " | ".join(["-"] * (len(head) - 1) + [values]) + " |")
    table = "\n".join(lines) + "\n"
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(table)
    if rows:
        plot_metric_vs_nfe(
            [("model", rows)], primary, floor.get(primary), os.path.join(out_dir, "metric_vs_nfe.png"), title
        )
    return table
