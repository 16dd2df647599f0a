"""The one method-agnostic training loop, and the sample / eval modes.

Data flow of a step (DESIGN.md): numpy batch (this process's slice) ->
make_array_from_process_local_data (sharded over the mesh) -> jitted
train_step(state, batch) with donated state -> method.loss -> grads -> optax ->
EMAs -> non-finite guard -> metrics (fetched every log interval).

Randomness: every key derives from config.seed with fold_in; the training key
of step k is fold_in(train_stream, k), so a run resumed at step k draws exactly
what the uninterrupted run would have.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import parameter_overview
from jax.experimental import multihost_utils

from fewstep_jax import checkpoint as ckpt_lib
from fewstep_jax import config_lib
from fewstep_jax import data as data_lib
from fewstep_jax import evaluate as eval_lib
from fewstep_jax import methods as methods_lib
from fewstep_jax import metrics as metrics_lib
from fewstep_jax import models as models_lib
from fewstep_jax import optim as optim_lib
from fewstep_jax import sharding as sharding_lib
from fewstep_jax import state as state_lib
from fewstep_jax import writers as writers_lib

# fold_in constants of the independent random streams.
INIT_STREAM, TRAIN_STREAM, EVAL_STREAM = 0, 1, 2


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss or gradient; the last good checkpoint is kept."""


@dataclasses.dataclass
class Experiment:
    """Everything built from a config before any compilation."""

    config: ml_collections.ConfigDict
    workdir: str
    train: config_lib.TrainConfig
    eval: config_lib.EvalConfig
    optim: config_lib.OptimConfig
    info: data_lib.DatasetInfo
    iterator: Any
    method: methods_lib.Method
    tx: Any
    schedule: Any
    decays: dict[str, state_lib.EMADecay]
    mesh: Any
    batch_sharding: Any
    state_shardings: Any
    abstract_state: Any
    checkpointer: ckpt_lib.Checkpointer
    is_main: bool
    multi_process: bool = False
    frozen: Any = None  # the method's frozen inputs (e.g. sCD's teacher), replicated

    @property
    def base_key(self) -> jax.Array:
        return jax.random.key(self.config.seed)

    @property
    def first_ema(self) -> str | None:
        """Name of the first configured EMA (config order; pytrees sort dict keys)."""
        return next(iter(self.decays), None)

    def sampling_params(self, state: state_lib.TrainState) -> dict[str, Any]:
        """What `method.sample` reads: {'net': the first EMA's (or the live) network params,
        plus the method's sampling inputs from state.extra (e.g. SCT's guidance snapshot)}."""
        if self.eval.use_ema and self.first_ema is not None:
            net = state.ema[self.first_ema]["net"]
        else:
            net = state.params["net"]
        return {"net": net, **self.method.sampling_inputs(state.extra)}


def check_workdir(workdir: str) -> None:
    """A ValueError in one line for a workdir that cannot hold a run: a file, a path under a file,
    or a folder that cannot be written."""
    path = os.path.abspath(workdir)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--workdir={workdir} is a file, not a directory")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"--workdir={workdir} cannot be created: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--workdir={workdir} cannot be written: no write permission on {existing}")


def setup(config: ml_collections.ConfigDict, workdir: str) -> Experiment:
    """Validate the config and build data, network, method, optimizer and mesh.

    Every user error (unknown key or name, indivisible batch, bad option) is
    raised here as a ValueError, before anything is compiled.
    """
    check_workdir(workdir)
    config_lib.validate(config, jax.device_count())
    train = config_lib.typed_view(config_lib.TrainConfig, config.train, "train")
    ev = config_lib.typed_view(config_lib.EvalConfig, config.eval, "eval")
    optim = config_lib.typed_view(config_lib.OptimConfig, config.optim, "optim")
    sharding = config_lib.typed_view(config_lib.ShardingConfig, config.sharding, "sharding")

    info, iterator = data_lib.build_dataset(
        config.data,
        seed=config.seed,
        global_batch_size=train.batch_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    net = models_lib.build(config.model, data_shape=info.shape, num_classes=info.num_classes)
    method = methods_lib.build(config.method, net, info)
    tx, schedule = optim_lib.build(optim, train.num_steps)
    decays = state_lib.ema_decays(train)

    mesh = sharding_lib.make_mesh(sharding.fsdp)
    batch_sharding = sharding_lib.batch_sharding(mesh)
    example = {
        "x": np.zeros((1, *info.shape), np.float32),
        "y": np.zeros((1,), np.int32),
    }
    init_key = jax.random.fold_in(jax.random.key(config.seed), INIT_STREAM)
    abstract = jax.eval_shape(lambda k: fresh_state(method, k, example, tx, decays), init_key)
    state_shardings = sharding_lib.state_shardings(abstract, mesh, sharding.strategy, sharding.min_shard_size)
    if sharding.strategy == "fsdp":
        split, total = sharding_lib.sharded_fraction(abstract, state_shardings)
        logging.info(
            "fsdp: %d of %d train-state elements (%.1f%%) sharded over %d devices",
            split, total, 100.0 * split / max(total, 1), mesh.shape["fsdp"],
        )
    checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=train.keep_checkpoints)
    return Experiment(
        config=config,
        workdir=workdir,
        train=train,
        eval=ev,
        optim=optim,
        info=info,
        iterator=iterator,
        method=method,
        tx=tx,
        schedule=schedule,
        decays=decays,
        mesh=mesh,
        batch_sharding=batch_sharding,
        state_shardings=state_shardings,
        abstract_state=ckpt_lib.abstract_with_shardings(abstract, state_shardings),
        checkpointer=checkpointer,
        is_main=jax.process_index() == 0,
        multi_process=jax.process_count() > 1,
    )


def fresh_state(method: methods_lib.Method, key: jax.Array, example: dict, tx: Any, decays: dict[str, Any]):
    params = method.project_params(method.init_params(key, example))
    return state_lib.create(params, tx, decays, method.init_extra(params))


def attach_frozen(exp: Experiment) -> None:
    """Load the method's frozen inputs (e.g. sCD's teacher): training needs them, sampling does not."""
    frozen = exp.method.load_frozen(load_pretrained)
    if frozen is not None:
        exp.frozen = jax.device_put(frozen, sharding_lib.replicated(exp.mesh))


def load_pretrained(workdir: str) -> tuple[ml_collections.ConfigDict, Any]:
    """(config, EMA network params) of the latest checkpoint of a trained workdir.

    Used to initialize from a pretrained model (train.init_from) and to load
    teachers; the params land on the current mesh, replicated.
    """
    directory = os.path.join(workdir, "checkpoints")
    hint = f"train it first, e.g. python -m fewstep_jax.main --config=configs/<teacher>.py --workdir={workdir}"
    if not os.path.isdir(directory):
        raise ckpt_lib.CheckpointError(f"no trained run at {workdir} (no {directory}); {hint}")
    probe = ckpt_lib.Checkpointer(directory, keep=1)
    step = probe.latest_step()
    if step is None:
        probe.close()
        raise ckpt_lib.CheckpointError(f"no checkpoint in {directory}; {hint}")
    config = ckpt_lib.config_from_json(probe.saved_config(step))
    probe.close()
    exp = setup(config, workdir)
    state, _ = exp.checkpointer.restore(step, exp.abstract_state)
    exp.checkpointer.close()
    logging.info("loaded %s (%s, step %d)", workdir, config.method.name, step)
    return config, exp.sampling_params(state)["net"]


def with_pretrained_net(exp: Experiment, state: state_lib.TrainState, net_params: Any) -> state_lib.TrainState:
    """Replace the network weights (live and every EMA) by pretrained ones.

    Every pretrained weight must exist in this network with the same shape. This
    network may have extra weights (e.g. the guidance-scale embedding of a guided
    sCD student, model.use_d), which keep their fresh initialization and are
    logged. Extra trainable pieces of the method (a learned loss weighting) are
    re-initialized too, and the optimizer state starts anew.
    """
    from flax import traverse_util

    ours = traverse_util.flatten_dict(jax.device_get(state.params["net"]), sep="/")
    theirs = traverse_util.flatten_dict(jax.device_get(net_params), sep="/")
    missing = sorted(k for k in theirs if k not in ours)
    mismatched = sorted(k for k in theirs if k in ours and ours[k].shape != theirs[k].shape)
    if missing or mismatched:
        raise ValueError(
            f"train.init_from={exp.train.init_from}: its network does not match config.model "
            f"(weights absent here: {missing[:5]}; different shapes: {mismatched[:5]}); "
            "use the same model section as the pretrained run"
        )
    fresh = sorted(k for k in ours if k not in theirs)
    if fresh:
        logging.info(
            "init_from: %d weights are new in this network and keep their initialization: %s", len(fresh), fresh
        )
    merged = traverse_util.unflatten_dict({**ours, **theirs}, sep="/")

    def copy(tree):  # separate buffers: the state is donated to the train step
        return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)

    params = dict(state.params, net=copy(merged))
    ema = {name: dict(e, net=copy(merged)) for name, e in state.ema.items()}
    extra = copy(exp.method.init_extra(params))
    new = state.replace(params=params, ema=ema, opt_state=exp.tx.init(params), extra=extra)
    return jax.device_put(new, exp.state_shardings)


def check_pretrained_method(exp: Experiment, pre_config: ml_collections.ConfigDict) -> None:
    """train.init_from must come from a method whose network output means the same thing."""
    theirs = methods_lib.REGISTRY.get(pre_config.method.name)
    ours = exp.method
    if theirs is None or theirs.parameterization != ours.parameterization:
        kind = "unknown" if theirs is None else theirs.parameterization
        raise ValueError(
            f"train.init_from={exp.train.init_from} is a {pre_config.method.name!r} run ({kind} parameterization); "
            f"{ours.name!r} needs a {ours.parameterization} one"
        )
    sigma_d = getattr(ours.cfg, "sigma_d", None)
    if sigma_d is not None and pre_config.method.get("sigma_d", sigma_d) != sigma_d:
        raise ValueError(
            f"train.init_from={exp.train.init_from} was trained with sigma_d={pre_config.method.sigma_d}, "
            f"this config uses method.sigma_d={sigma_d}"
        )


def init_state(exp: Experiment) -> state_lib.TrainState:
    """Shape-first init: jit(init, out_shardings) materializes params where they live."""
    example = {"x": np.zeros((1, *exp.info.shape), np.float32), "y": np.zeros((1,), np.int32)}

    def init(key):
        return fresh_state(exp.method, key, example, exp.tx, exp.decays)

    key = jax.random.fold_in(exp.base_key, INIT_STREAM)
    return jax.jit(init, out_shardings=exp.state_shardings)(key)


def restore_or_init(exp: Experiment, *, allow_config_change: bool = False) -> tuple[state_lib.TrainState, int]:
    """Resume from the latest checkpoint of the workdir if there is one."""
    step = exp.checkpointer.latest_step()
    if step is None:
        state = init_state(exp)
        if exp.train.init_from:
            pre_config, net_params = load_pretrained(exp.train.init_from)
            if ckpt_lib.config_to_json(pre_config.data) != ckpt_lib.config_to_json(exp.config.data):
                raise ValueError(
                    f"train.init_from={exp.train.init_from} was trained on data {pre_config.data.to_dict()}, "
                    f"this config uses {exp.config.data.to_dict()}"
                )
            check_pretrained_method(exp, pre_config)
            state = with_pretrained_net(exp, state, net_params)
            logging.info("initialized the network from the EMA of %s", exp.train.init_from)
        return state, 0
    steps = sorted(exp.checkpointer.all_steps(), reverse=True)
    for i, step in enumerate(steps):
        try:
            exp.checkpointer.check_compatible(step, exp.config, allow_change=allow_config_change)
            state, data_state = exp.checkpointer.restore(step, exp.abstract_state)
        except ckpt_lib.UnreadableCheckpoint as e:
            if i + 1 == len(steps):
                raise
            # A corrupted latest checkpoint (e.g. a file damaged after the atomic rename):
            # set it aside and fall back to the previous one rather than losing the run.
            moved = exp.checkpointer.quarantine(step)
            logging.warning(
                "%s\nMoved it to %s. Falling back to the previous checkpoint, step %d.", e, moved, steps[i + 1]
            )
            continue
        exp.iterator.set_state(data_state)
        logging.info("Resumed from %s at step %d", exp.checkpointer.directory, step)
        return state, step
    raise AssertionError("unreachable: the loop returns or raises")


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
            return method.loss(params, ema_params, batch, rng, state.step, frozen, state.extra)

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


def eval_settings(exp: Experiment, params: Any) -> config_lib.EvalConfig:
    """exp.eval, but unguided (with a warning) while the method cannot guide yet: training-time
    samples of SCT before its guidance snapshot."""
    ev = exp.eval
    if ev.guidance != 1.0 and not exp.method.can_guide(params):
        logging.warning("eval.guidance=%g is not available yet (no guidance snapshot): sampling unguided", ev.guidance)
        return dataclasses.replace(ev, guidance=1.0)
    return ev


def write_samples(exp: Experiment, sample_fns, state, step: int, tag: str) -> None:
    """A PNG grid (images) or scatter plot (2-D) per evaluated step count.

    Every process samples (the computation spans all devices); process 0 writes.
    """
    ev = eval_settings(exp, exp.sampling_params(state))
    n = ev.grid_size
    labels = eval_lib.eval_labels(exp.info.num_classes, n)
    reference = None
    if len(exp.info.shape) == 1:
        n = max(n, 2000)
        labels = eval_lib.eval_labels(exp.info.num_classes, n)
        reference = data_lib.reference_data(exp.config.data, "test", n=n)["x"]
    net_params = exp.sampling_params(state)
    rng = jax.random.fold_in(jax.random.fold_in(exp.base_key, EVAL_STREAM), step)
    for k in ev.nfes:
        x = eval_lib.generate_steps(sample_fns, net_params, rng, k, ev, n=n, labels=labels, batch_size=min(n, 2000))
        if not exp.is_main:
            continue
        nfe = exp.method.nfe(k, ev.sampler)
        path = os.path.join(exp.workdir, "samples", f"{tag}_{ev.sampler}_nfe{nfe}.png")
        cols = exp.info.num_classes if exp.info.num_classes and n % exp.info.num_classes == 0 else None
        eval_lib.save_samples_png(
            x,
            path,
            cols=cols,
            reference=reference,
            title=f"{exp.config.method.name} {ev.sampler} NFE {nfe} ({tag})",
        )


def run_eval(exp: Experiment, sample_fns, evaluator, state, step: int) -> dict[str, float]:
    rng = jax.random.fold_in(jax.random.fold_in(exp.base_key, EVAL_STREAM), 10_000_000 + step)
    params = exp.sampling_params(state)
    ev = eval_settings(exp, params)
    rows = eval_lib.evaluate_steps(exp.method, sample_fns, params, evaluator, ev, rng, ev.nfes)
    out = {}
    for r in rows:
        for m, v in r.items():
            if m not in eval_lib.ROW_KEYS:
                out[f"eval/{ev.sampler}_nfe{r['nfe']}/{m}"] = v
    return out


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
    if config_lib.typed_view(config_lib.TrainConfig, config.train, "train").eval_every:
        # e.g. FID without Inception weights: fail before anything is built or written
        metrics_lib.check_available(config.data, config_lib.typed_view(config_lib.EvalConfig, config.eval, "eval"))
    exp = setup(config, workdir)
    if exp.is_main:
        os.makedirs(workdir, exist_ok=True)
    try:
        state, step = restore_or_init(exp, allow_config_change=allow_config_change)
        attach_frozen(exp)
    except BaseException:
        exp.checkpointer.close()
        raise
    if exp.is_main:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    total = exp.train.num_steps
    num_params = models_lib.count_params(state.params["net"])
    if exp.is_main:
        with open(os.path.join(workdir, "parameters.txt"), "w") as f:
            f.write(parameter_overview.get_parameter_overview(jax.device_get(state.params), include_stats=False))
    logging.info(
        "%s on %s: %d network parameters, %d devices, global batch %d, steps %d -> %d",
        config.method.name,
        exp.info.name,
        num_params,
        jax.device_count(),
        exp.train.batch_size,
        step,
        total,
    )

    writer = writers_lib.MetricWriter(workdir, enabled=exp.is_main)
    train_step = make_train_step(exp)
    sample_fns = eval_lib.SampleFns(exp.method, exp.batch_sharding)
    evaluator = None
    summary: dict[str, Any] = {"start_step": step, "status": "running"}
    progress = writers_lib.Progress(step, total)
    pending: list[dict[str, jax.Array]] = []
    start_step, t_start, t_first = step, time.perf_counter(), None
    t_aside = 0.0  # seconds spent checkpointing / sampling / evaluating (not training)
    last_saved = step

    try:
        with PreemptionFlag(install=not exp.multi_process) as preempt:
            while step < total:
                batch = sharding_lib.global_batch(next(exp.iterator), exp.batch_sharding)
                state, metrics = train_step(state, batch)
                step += 1
                pending.append(metrics)
                if t_first is None:
                    jax.block_until_ready(metrics)
                    t_first = time.perf_counter()  # excludes compilation from the throughput
                    first_done = step
                last = step == total
                if step % exp.train.log_every == 0 or last:
                    fetched = jax.device_get(pending)
                    pending = []
                    scalars = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
                    warn_replaced(fetched, step)
                    prog = progress.update(step)
                    writer.write_scalars(step, {**scalars, "steps_per_sec": prog["steps_per_sec"]})
                    if exp.is_main:
                        writers_lib.log_progress(step, total, scalars, prog)
                    check_finite(state, exp)  # after logging, so the bad step's metrics are on record
                t_aside_start = time.perf_counter()
                if step % exp.train.checkpoint_every == 0 or last:
                    save_checkpoint(exp, state, step)
                    last_saved = step
                if exp.train.sample_every and (step % exp.train.sample_every == 0 or last):
                    write_samples(exp, sample_fns, state, step, tag=f"step{step:07d}")
                if exp.train.eval_every and (step % exp.train.eval_every == 0 or last):
                    if evaluator is None:
                        evaluator = metrics_lib.build_evaluator(config.data, exp.eval)
                        summary["floor"] = evaluator.floor()
                        writer.write_scalars(step, {f"floor/{k}": v for k, v in summary["floor"].items()})
                    results = run_eval(exp, sample_fns, evaluator, state, step)
                    writer.write_scalars(step, results)
                    summary["eval"] = results
                t_aside += time.perf_counter() - t_aside_start
                if exp.multi_process:
                    # jax.distributed's preemption notifier owns SIGTERM in a multi-process job; the
                    # sync point is true on every process at the same step once any process got it.
                    preempt.triggered = multihost_utils.reached_preemption_sync_point(step)
                if (preempt.triggered or step == stop_at) and not last:
                    reason = "SIGTERM received" if preempt.triggered else f"stop_at={stop_at} reached"
                    logging.warning("%s: saving a checkpoint at step %d and exiting", reason, step)
                    if last_saved != step:
                        save_checkpoint(exp, state, step)
                    summary["status"] = "preempted" if preempt.triggered else "stopped"
                    break
    finally:
        # Also on errors: finish pending async saves (the last good checkpoint).
        exp.checkpointer.close()
        writer.close()

    if start_step >= total:
        logging.info("the workdir is already trained to step %d: writing samples and metrics only", total)
        write_samples(exp, sample_fns, state, step, tag=f"step{step:07d}")
        if exp.train.eval_every:
            evaluator = metrics_lib.build_evaluator(config.data, exp.eval)
            summary["floor"] = evaluator.floor()
            summary["eval"] = run_eval(exp, sample_fns, evaluator, state, step)
    elapsed = time.perf_counter() - t_start
    if summary["status"] == "running":
        summary["status"] = "finished"
    summary.update(end_step=step, wall_sec=elapsed)
    if t_first is not None and step > first_done:
        # Training throughput after compilation, without checkpoint / sample / eval time.
        summary["steps_per_sec"] = (step - first_done) / (time.perf_counter() - t_first - t_aside)
    if exp.is_main:
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        logging.info("%s at step %d (%d steps in %.1f s)", summary["status"], step, step - start_step, elapsed)
    return summary


def load_for_inference(
    config: ml_collections.ConfigDict, workdir: str, *, allow_config_change: bool = False
) -> tuple[Experiment, Any, int]:
    exp = setup(config, workdir)
    step = exp.checkpointer.latest_step()
    if step is None:
        raise ckpt_lib.CheckpointError(
            f"no checkpoint in {exp.checkpointer.directory}; train first with --mode=train --workdir={workdir}"
        )
    if exp.eval.checkpoint_step:
        available = exp.checkpointer.all_steps()
        if exp.eval.checkpoint_step not in available:
            exp.checkpointer.close()
            raise ckpt_lib.CheckpointError(
                f"eval.checkpoint_step={exp.eval.checkpoint_step} is not in {exp.checkpointer.directory}; "
                f"saved steps: {available}"
            )
        step = exp.eval.checkpoint_step
    exp.checkpointer.check_compatible(step, config, allow_change=allow_config_change)
    state, _ = exp.checkpointer.restore(step, exp.abstract_state)
    return exp, state, step


def sample_mode(config: ml_collections.ConfigDict, workdir: str, *, allow_config_change: bool = False) -> list[str]:
    """Write sample grids for every eval.nfes step count from the latest checkpoint."""
    exp, state, step = load_for_inference(config, workdir, allow_config_change=allow_config_change)
    write_samples(exp, eval_lib.SampleFns(exp.method, exp.batch_sharding), state, step, tag=f"final{step:07d}")
    exp.checkpointer.close()
    out = os.path.join(workdir, "samples")
    logging.info("samples written to %s", out)
    return sorted(os.listdir(out))


def eval_mode(config: ml_collections.ConfigDict, workdir: str, *, allow_config_change: bool = False) -> str:
    """Metrics at every eval.nfes step count, with the real-data floor; table + plot."""
    metrics_lib.check_available(config.data, config_lib.typed_view(config_lib.EvalConfig, config.eval, "eval"))
    exp, state, step = load_for_inference(config, workdir, allow_config_change=allow_config_change)
    evaluator = metrics_lib.build_evaluator(config.data, exp.eval)
    floor = evaluator.floor()
    rng = jax.random.fold_in(jax.random.fold_in(exp.base_key, EVAL_STREAM), 20_000_000 + step)
    rows = eval_lib.evaluate_steps(
        exp.method,
        eval_lib.SampleFns(exp.method, exp.batch_sharding),
        exp.sampling_params(state),
        evaluator,
        exp.eval,
        rng,
        exp.eval.nfes,
    )
    exp.checkpointer.close()
    title = f"{config.method.name} on {exp.info.name}, step {step}, {exp.eval.sampler} sampler"
    if exp.eval.guidance != 1.0:
        title += f", guidance {exp.eval.guidance:g}"
    out_dir = os.path.join(workdir, "eval", f"step{step:07d}_{exp.eval.sampler}")
    table = eval_lib.write_report(rows, floor, primary=evaluator.primary, out_dir=out_dir, title=title)
    logging.info("evaluation written to %s", out_dir)
    return table
