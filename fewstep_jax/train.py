"""The one method-agnostic training loop.

Data flow of a step (DESIGN.md): numpy batch (this process's slice) ->
make_array_from_process_local_data (sharded over the mesh) -> jitted
train_step(state, batch) with donated state -> method.loss -> grads -> optax ->
EMAs -> non-finite guard -> metrics (fetched every log interval).

Randomness: every key derives from config.seed with fold_in; the training key
of step k is fold_in(train_stream, k), so a run resumed at step k draws exactly
what the uninterrupted run would have.

The experiment the loop trains is built by experiment.py; the sample grids and
evaluations it writes on the way come from modes.py.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import parameter_overview
from jax.experimental import multihost_utils

from fewstep_jax import evaluate as eval_lib
from fewstep_jax import experiment as experiment_lib
from fewstep_jax import methods as methods_lib
from fewstep_jax import metrics as metrics_lib
from fewstep_jax import models as models_lib
from fewstep_jax import sharding as sharding_lib
from fewstep_jax import state as state_lib
from fewstep_jax import writers as writers_lib
from fewstep_jax.experiment import TRAIN_STREAM, Experiment
from fewstep_jax.modes import run_eval, write_samples


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss or gradient; the last good checkpoint is kept."""


def make_train_step(exp: Experiment):
    """The jitted step: (state, batch) -> (state, metrics); state is donated.

    `step.lower(state, batch)` is its ahead-of-time lowering (benchmarks: compile time, FLOPs).
    """
    method, tx, decays, schedule = exp.method, exp.tx, exp.decays, exp.schedule
    train_key = jax.random.fold_in(exp.base_key, TRAIN_STREAM)
    first_ema = exp.first_ema
    replace_grads = exp.train.on_nonfinite == "replace_grads"

    def train_step(state: state_lib.TrainState, batch: dict[str, jax.Array], frozen: Any):
        rng = jax.random.fold_in(train_key, state.step)
        ema_params = state.ema[first_ema] if first_ema is not None else state.params

        def loss_fn(params):
            inputs = methods_lib.LossInputs(ema_params, frozen, state.extra)
            return method.loss(params, batch, rng, state.step, inputs)

        def update_extra(extra, ema):
            new_ema = ema[first_ema] if first_ema is not None else None
            return method.update_extra(extra, batch=batch, step=state.step, ema_params=new_ema)

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        if replace_grads:
            grads, metrics["nonfinite_grads_replaced"] = state_lib.replace_nonfinite(grads)
        new_state, grad_norm = state_lib.apply_gradients(
            state, grads, loss, tx, decays, update_extra, project=method.project_params, check_loss=not replace_grads
        )
        metrics = dict(metrics, loss=loss, grad_norm=grad_norm, lr=schedule(state.step))
        return new_state, metrics

    replicated = sharding_lib.replicated(exp.mesh)
    jitted = jax.jit(
        train_step,
        in_shardings=(exp.state_shardings, exp.batch_sharding, replicated),
        out_shardings=(exp.state_shardings, replicated),
        donate_argnums=(0,),
    )

    def step(state, batch):
        return jitted(state, batch, exp.frozen)

    step.lower = lambda state, batch: jitted.lower(state, batch, exp.frozen)
    return step


def check_finite(state: state_lib.TrainState, exp: Experiment) -> None:
    step, code = (int(v) for v in jax.device_get(state.nonfinite))
    if step < 0:
        return
    quantity = state_lib.NONFINITE_QUANTITIES.get(code, "value")
    last = exp.checkpointer.latest_step()
    kept = f"the last good checkpoint (step {last}) is kept" if last is not None else "no checkpoint was written"
    raise NonFiniteError(
        f"non-finite {quantity} at step {step + 1}; training stopped and {kept}. "
        "Try a lower optim.lr, gradient clipping (optim.grad_clip), or check the data."
    )


def warn_replaced(fetched: list[dict[str, Any]], step: int) -> None:
    """train.on_nonfinite='replace_grads': say when gradient entries were replaced since the last log."""
    replaced = sum(int(m.get("nonfinite_grads_replaced", 0)) for m in fetched)
    if replaced:
        logging.warning(
            "steps %d-%d: %d non-finite gradient entries replaced (train.on_nonfinite='replace_grads')",
            step - len(fetched) + 1,
            step,
            replaced,
        )


class PreemptionFlag:
    """Turns SIGTERM into a flag the loop checks after every step.

    install=False leaves SIGTERM alone: in a multi-process job jax.distributed's preemption
    notifier owns it and the loop asks `reached_preemption_sync_point` instead.
    """

    def __init__(self, install: bool = True):
        self.triggered = False
        self.previous = None
        self.install = install

    def __enter__(self):
        if not self.install:
            return self
        try:
            self.previous = signal.signal(signal.SIGTERM, self.handle)
        except ValueError:  # not the main thread: no handler, no preemption support
            self.previous = None
        return self

    def handle(self, signum, frame):
        del signum, frame
        self.triggered = True

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def save_checkpoint(exp: Experiment, state: state_lib.TrainState, step: int) -> None:
    check_finite(state, exp)  # never save a state behind a non-finite step
    exp.checkpointer.save(step, state, exp.iterator.get_state(), exp.config)


def start(exp: Experiment, *, allow_config_change: bool = False) -> tuple[state_lib.TrainState, int]:
    """The state to train from (experiment.restore_or_init) with the method's frozen inputs
    attached (loaded and checked first: a wrong teacher fails before anything is compiled);
    writes config.json and parameters.txt and logs what is trained."""
    if exp.is_main:
        os.makedirs(exp.workdir, exist_ok=True)
    try:
        experiment_lib.attach_frozen(exp)
        state, step = experiment_lib.restore_or_init(exp, allow_config_change=allow_config_change)
    except BaseException:
        exp.checkpointer.close()
        raise
    if exp.is_main:
        with open(os.path.join(exp.workdir, "config.json"), "w") as f:
            f.write(exp.config.to_json_best_effort(indent=2))
        with open(os.path.join(exp.workdir, "parameters.txt"), "w") as f:
            f.write(parameter_overview.get_parameter_overview(jax.device_get(state.params), include_stats=False))
    logging.info(
        "%s on %s: %d network parameters, %d devices, global batch %d, steps %d -> %d",
        exp.config.method.name,
        exp.info.name,
        models_lib.count_params(state.params["net"]),
        jax.device_count(),
        exp.train.batch_size,
        step,
        exp.train.num_steps,
    )
    return state, step


class Loop:
    """One invocation of the loop: the metric writer, the compiled step and samplers, the
    evaluator (built at the first evaluation), the device metrics not yet fetched, the clocks
    behind the throughput, and the summary it returns."""

    def __init__(self, exp: Experiment, step: int):
        self.exp = exp
        self.writer = writers_lib.MetricWriter(exp.workdir, enabled=exp.is_main)
        self.train_step = make_train_step(exp)
        self.sample_fns = eval_lib.SampleFns(exp.method, exp.batch_sharding)
        self.evaluator = None
        self.summary: dict[str, Any] = {"start_step": step, "status": "running"}
        self.progress = writers_lib.Progress(step, exp.train.num_steps)
        self.pending: list[dict[str, jax.Array]] = []
        self.start_step, self.t_start, self.t_first, self.first_done = step, time.perf_counter(), None, step
        self.t_aside = 0.0  # seconds spent checkpointing / sampling / evaluating (not training)
        self.last_saved = step

    def run(self, state: state_lib.TrainState, step: int, stop_at: int | None) -> tuple[state_lib.TrainState, int]:
        """Train until train.num_steps, a preemption or `stop_at`; returns the state and its step."""
        exp, total = self.exp, self.exp.train.num_steps
        with PreemptionFlag(install=not exp.multi_process) as preempt:
            while step < total:
                batch = sharding_lib.global_batch(next(exp.iterator), exp.batch_sharding)
                state, metrics = self.train_step(state, batch)
                step += 1
                self.pending.append(metrics)
                if self.t_first is None:
                    jax.block_until_ready(metrics)
                    self.t_first = time.perf_counter()  # excludes compilation from the throughput
                    self.first_done = step
                last = step == total
                if step % exp.train.log_every == 0 or last:
                    self.log(state, step)
                self.save_sample_evaluate(state, step, last)
                if exp.multi_process:
                    # jax.distributed's preemption notifier owns SIGTERM in a multi-process job; the
                    # sync point is true on every process at the same step once any process got it.
                    preempt.triggered = multihost_utils.reached_preemption_sync_point(step)
                if (preempt.triggered or step == stop_at) and not last:
                    self.stop(state, step, preempted=preempt.triggered, stop_at=stop_at)
                    break
        return state, step

    def log(self, state: state_lib.TrainState, step: int) -> None:
        """Fetch the metrics since the last log, write their means, and stop on a non-finite step."""
        fetched = jax.device_get(self.pending)
        self.pending = []
        scalars = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
        warn_replaced(fetched, step)
        prog = self.progress.update(step)
        self.writer.write_scalars(step, {**scalars, "steps_per_sec": prog["steps_per_sec"]})
        if self.exp.is_main:
            writers_lib.log_progress(step, self.exp.train.num_steps, scalars, prog)
        check_finite(state, self.exp)  # after logging, so the bad step's metrics are on record

    def save_sample_evaluate(self, state: state_lib.TrainState, step: int, last: bool) -> None:
        """The checkpoint, sample grids and evaluation due at `step`; their time is not training time."""
        exp, started = self.exp, time.perf_counter()
        if step % exp.train.checkpoint_every == 0 or last:
            save_checkpoint(exp, state, step)
            self.last_saved = step
        if exp.train.sample_every and (step % exp.train.sample_every == 0 or last):
            write_samples(exp, self.sample_fns, state, step, tag=f"step{step:07d}")
        if exp.train.eval_every and (step % exp.train.eval_every == 0 or last):
            self.evaluate(state, step)
        self.t_aside += time.perf_counter() - started

    def evaluate(self, state: state_lib.TrainState, step: int) -> None:
        """Metrics at every eval.nfes step count; the real-data floor with the first evaluation."""
        if self.evaluator is None:
            self.evaluator = metrics_lib.build_evaluator(self.exp.config.data, self.exp.eval)
            self.summary["floor"] = self.evaluator.floor()
            self.writer.write_scalars(step, {f"floor/{k}": v for k, v in self.summary["floor"].items()})
        results = run_eval(self.exp, self.sample_fns, self.evaluator, state, step)
        self.writer.write_scalars(step, results)
        self.summary["eval"] = results

    def stop(self, state: state_lib.TrainState, step: int, *, preempted: bool, stop_at: int | None) -> None:
        """End before train.num_steps (SIGTERM or stop_at) with a checkpoint of `step`."""
        reason = "SIGTERM received" if preempted else f"stop_at={stop_at} reached"
        logging.warning("%s: saving a checkpoint at step %d and exiting", reason, step)
        if self.last_saved != step:
            save_checkpoint(self.exp, state, step)
        self.summary["status"] = "preempted" if preempted else "stopped"

    def rewrite_final(self, state: state_lib.TrainState, step: int) -> None:
        """A workdir already trained to train.num_steps: its final samples (and evaluation) again."""
        exp = self.exp
        logging.info("the workdir is already trained to step %d: writing samples and metrics only", exp.train.num_steps)
        write_samples(exp, self.sample_fns, state, step, tag=f"step{step:07d}")
        if exp.train.eval_every:
            evaluator = metrics_lib.build_evaluator(exp.config.data, exp.eval)
            self.summary["floor"] = evaluator.floor()
            self.summary["eval"] = run_eval(exp, self.sample_fns, evaluator, state, step)

    def finish(self, step: int) -> dict[str, Any]:
        """The summary (status, steps, wall time, training steps/s), also written to summary.json."""
        elapsed = time.perf_counter() - self.t_start
        summary = self.summary
        if summary["status"] == "running":
            summary["status"] = "finished"
        summary.update(end_step=step, wall_sec=elapsed)
        if self.t_first is not None and step > self.first_done:
            # Training throughput after compilation, without checkpoint / sample / eval time.
            summary["steps_per_sec"] = (step - self.first_done) / (time.perf_counter() - self.t_first - self.t_aside)
        if self.exp.is_main:
            with open(os.path.join(self.exp.workdir, "summary.json"), "w") as f:
                json.dump(summary, f, indent=2)
            logging.info("%s at step %d (%d steps in %.1f s)", summary["status"], step, step - self.start_step, elapsed)
        return summary


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    allow_config_change: bool = False,
    stop_at: int | None = None,
) -> dict[str, Any]:
    """Train (resuming from the workdir when it holds a checkpoint); returns a summary.

    `stop_at` ends this invocation at that step with a checkpoint, exactly as a
    preemption would (for chunked jobs, and for testing exact resumption). A
    workdir already trained to train.num_steps only gets its final samples (and,
    unless train.eval_every = 0, its evaluation) written again.
    """
    exp = experiment_lib.setup(config, workdir)
    state, step = start(exp, allow_config_change=allow_config_change)
    loop = Loop(exp, step)
    try:
        state, step = loop.run(state, step, stop_at)
    finally:
        # Also on errors: finish pending async saves (the last good checkpoint).
        exp.checkpointer.close()
        loop.writer.close()
    if loop.start_step >= exp.train.num_steps:
        loop.rewrite_final(state, step)
    return loop.finish(step)
