"""Metrics out: TensorBoard event files, `metrics.jsonl`, and console progress.

Only process 0 writes (the other processes get a writer that does nothing).
TensorBoard files are written with tensorboardX, which needs no TensorFlow.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Mapping

from absl import logging


class MetricWriter:
    def __init__(self, workdir: str, *, enabled: bool = True):
        self.enabled = enabled
        self.tb = None
        self.jsonl = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        from tensorboardX import SummaryWriter  # lazy: keeps import of the package light

        self.tb = SummaryWriter(logdir=os.path.join(workdir, "tensorboard"))
        self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in scalars.items()}
        for k, v in clean.items():
            self.tb.add_scalar(k, v, step)
        record = {"step": int(step), **{k: (v if math.isfinite(v) else str(v)) for k, v in clean.items()}}
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()

    def flush(self) -> None:
        if self.enabled:
            self.tb.flush()
            self.jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self.tb.close()
            self.jsonl.close()


class Progress:
    """Steps/s and ETA for the console, measured between calls."""

    def __init__(self, start_step: int, total_steps: int):
        self.total = total_steps
        self.last_step = start_step
        self.last_time = time.perf_counter()

    def update(self, step: int) -> dict[str, float]:
        now = time.perf_counter()
        rate = (step - self.last_step) / max(now - self.last_time, 1e-9)
        self.last_step, self.last_time = step, now
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        return {"steps_per_sec": rate, "eta_sec": eta}


def format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def log_progress(step: int, total: int, scalars: Mapping[str, float], progress: Mapping[str, float]) -> None:
    shown = "  ".join(f"{k}={v:.4g}" for k, v in sorted(scalars.items()))
    logging.info(
        "step %d/%d  %.2f steps/s  ETA %s  %s",
        step,
        total,
        progress["steps_per_sec"],
        format_eta(progress["eta_sec"]),
        shown,
    )
