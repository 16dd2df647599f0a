"""Building an experiment from a config: data, network, method, optimizer, mesh and the train
state's layout, each built once (`setup`); the state to start from (`restore_or_init`: the
workdir's checkpoint, else a fresh state, initialized from train.init_from when set); and the
pretrained networks that fine-tuning and distillation read (`load_pretrained`).

Every user error (unknown key or name, indivisible batch, bad option, missing dataset) is
raised by `setup` as a ValueError before anything is compiled: config_lib.validate checks the
config's own values, and each builder checks the section it reads.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from fewstep_jax import checkpoint as ckpt_lib
from fewstep_jax import config_lib
from fewstep_jax import data as data_lib
from fewstep_jax import methods as methods_lib
from fewstep_jax import metrics as metrics_lib
from fewstep_jax import models as models_lib
from fewstep_jax import optim as optim_lib
from fewstep_jax import sharding as sharding_lib
from fewstep_jax import state as state_lib

# fold_in constants of the independent random streams.
INIT_STREAM, TRAIN_STREAM, EVAL_STREAM = 0, 1, 2


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
        net = sampling_net(state, self.decays, self.eval.use_ema)
        return {"net": net, **self.method.sampling_inputs(state.extra)}


def sampling_net(state: state_lib.TrainState, decays: dict[str, Any], use_ema: bool) -> Any:
    """The network params sampling uses: the first configured EMA's, or the live ones."""
    first = next(iter(decays), None)
    if use_ema and first is not None:
        return state.ema[first]["net"]
    return state.params["net"]


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


def build_method(config: ml_collections.ConfigDict, info: data_lib.DatasetInfo) -> methods_lib.Method:
    """The network of config.model for the dataset and the method of config.method on it; each
    builder checks its section (unknown name or key, bad option) with a ValueError."""
    net = models_lib.build(config.model, data_shape=info.shape, num_classes=info.num_classes)
    return methods_lib.build(config.method, net, info)


def check(config: ml_collections.ConfigDict, num_devices: int) -> config_lib.Sections:
    """Everything `setup` checks before it builds, without reading data or touching devices:
    the config's values, the dataset (known, prepared), the network and the method sections."""
    sections = config_lib.validate(config, num_devices)
    build_method(config, data_lib.dataset_info(config.data))
    return sections


def example_batch(info: data_lib.DatasetInfo) -> dict[str, np.ndarray]:
    return {"x": np.zeros((1, *info.shape), np.float32), "y": np.zeros((1,), np.int32)}


def fresh_state(method: methods_lib.Method, key: jax.Array, example: dict, tx: Any, decays: dict[str, Any]):
    params = method.project_params(method.init_params(key, example))
    return state_lib.create(params, tx, decays, method.init_extra(params))


def state_layout(
    method: methods_lib.Method,
    tx: Any,
    decays: dict[str, Any],
    info: data_lib.DatasetInfo,
    seed: int,
    mesh: Any,
    sharding: config_lib.ShardingConfig,
) -> tuple[Any, Any]:
    """(shardings, abstract state carrying them) of the train state, shape-first: jax.eval_shape
    of the init, nothing allocated or compiled."""
    init_key = jax.random.fold_in(jax.random.key(seed), INIT_STREAM)
    abstract = jax.eval_shape(lambda k: fresh_state(method, k, example_batch(info), tx, decays), init_key)
    shardings = sharding_lib.state_shardings(abstract, mesh, sharding.strategy, sharding.min_shard_size)
    if sharding.strategy == "fsdp":
        split, total = sharding_lib.sharded_fraction(abstract, shardings)
        logging.info(
            "fsdp: %d of %d train-state elements (%.1f%%) sharded over %d devices",
            split, total, 100.0 * split / max(total, 1), mesh.shape["fsdp"],
        )
    return shardings, ckpt_lib.abstract_with_shardings(abstract, shardings)


def setup(config: ml_collections.ConfigDict, workdir: str, *, check_metrics: bool | None = None) -> Experiment:
    """Validate the config, then build data, network, method, optimizer, mesh and the train
    state's layout, each once.

    check_metrics: whether the dataset's sample metric must be able to run (FID weights and
    statistics; checked before anything is built); None: when the loop evaluates
    (train.eval_every). Every user error is a ValueError raised here, before any compilation.
    """
    check_workdir(workdir)
    sections = config_lib.validate(config, jax.device_count())
    train = sections.train
    if check_metrics is None:
        check_metrics = train.eval_every > 0
    if check_metrics:
        # e.g. FID without Inception weights: fail before anything is built or written
        metrics_lib.check_available(config.data, sections.eval)
    info, iterator = data_lib.build_dataset(
        config.data,
        seed=config.seed,
        global_batch_size=train.batch_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    method = build_method(config, info)
    tx, schedule = optim_lib.build(sections.optim, train.num_steps)
    decays = state_lib.ema_decays(train)
    mesh = sharding_lib.make_mesh(sections.sharding.fsdp)
    state_shardings, abstract_state = state_layout(method, tx, decays, info, config.seed, mesh, sections.sharding)
    return Experiment(
        config=config,
        workdir=workdir,
        train=train,
        eval=sections.eval,
        optim=sections.optim,
        info=info,
        iterator=iterator,
        method=method,
        tx=tx,
        schedule=schedule,
        decays=decays,
        mesh=mesh,
        batch_sharding=sharding_lib.batch_sharding(mesh),
        state_shardings=state_shardings,
        abstract_state=abstract_state,
        checkpointer=ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=train.keep_checkpoints),
        is_main=jax.process_index() == 0,
        multi_process=jax.process_count() > 1,
    )


def init_state(exp: Experiment) -> state_lib.TrainState:
    """Shape-first init: jit(init, out_shardings) materializes params where they live."""
    example = example_batch(exp.info)

    def init(key):
        return fresh_state(exp.method, key, example, exp.tx, exp.decays)

    key = jax.random.fold_in(exp.base_key, INIT_STREAM)
    return jax.jit(init, out_shardings=exp.state_shardings)(key)


# ---------------------------------------------------------------------------
# Pretrained networks: train.init_from and frozen teachers


def load_pretrained(workdir: str) -> tuple[ml_collections.ConfigDict, Any]:
    """(config, EMA network params) of the latest checkpoint of a trained workdir, or of an
    official pretrained model.

    Used to initialize from a pretrained model (train.init_from) and to load teachers. Builds
    only what reading the checkpoint needs (the network, method and optimizer give the state's
    shapes; no data iterator); the params land on the current mesh, laid out as that run's
    sharding section says (replicated by default).

    `workdir` may also name a released file (NVlabs' EDM / EDM2 `.pkl`, DiT / SiT `.pt`) or a
    folder written by `python -m fewstep_jax.models.import_weights`: it is imported
    (models/pretrained), and the config holds its model, data (name, conditional) and method
    sections plus a `pretrained` section (family, source, data_shape, num_classes); the params
    are host arrays.
    """
    from fewstep_jax.models import pretrained

    if pretrained.is_pretrained_path(workdir):
        imported = pretrained.load(workdir)
        logging.info("imported %s (%s): %s", workdir, imported.family, imported.summary.get("architecture", ""))
        return imported.config(), imported.params
    directory = os.path.join(workdir, "checkpoints")
    hint = (
        f"train it first, e.g. python -m fewstep_jax.main --config=configs/<teacher>.py --workdir={workdir}, "
        "or name an official pretrained file (docs/PRETRAINED.md)"
    )
    if not os.path.isdir(directory):
        raise ckpt_lib.CheckpointError(f"no trained run at {workdir} (no {directory}); {hint}")
    checkpointer = ckpt_lib.Checkpointer(directory, keep=1)
    try:
        step = checkpointer.latest_step()
        if step is None:
            raise ckpt_lib.CheckpointError(f"no checkpoint in {directory}; {hint}")
        config = ckpt_lib.config_from_json(checkpointer.saved_config(step))
        sections = config_lib.validate(config, jax.device_count())
        info = data_lib.dataset_info(config.data)
        method = build_method(config, info)
        tx, _ = optim_lib.build(sections.optim, sections.train.num_steps)
        decays = state_lib.ema_decays(sections.train)
        mesh = sharding_lib.make_mesh(sections.sharding.fsdp)
        _, abstract_state = state_layout(method, tx, decays, info, config.seed, mesh, sections.sharding)
        state, _ = checkpointer.restore(step, abstract_state)
    finally:
        checkpointer.close()
    logging.info("loaded %s (%s, step %d)", workdir, config.method.name, step)
    return config, sampling_net(state, decays, sections.eval.use_ema)


def attach_frozen(exp: Experiment) -> None:
    """Load the method's frozen inputs (e.g. sCD's and AYF's teachers): training needs them,
    sampling does not. An official file among them must be a model of this config's data
    (check_imported_data); the method checks its parameterization (load_frozen)."""

    def loader(path: str) -> tuple[ml_collections.ConfigDict, Any]:
        config, params = load_pretrained(path)
        if "pretrained" in config:
            check_imported_data(f"{exp.config.method.name}: the teacher {path}", exp.info, config)
        return config, params

    frozen = exp.method.load_frozen(loader)
    if frozen is not None:
        exp.frozen = jax.device_put(frozen, sharding_lib.replicated(exp.mesh))


def _check_net_shapes(exp: Experiment, ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    """Every pretrained weight (flat `theirs`) must exist in this network (flat `ours`, arrays or
    shape structs) with the same shape."""
    missing = sorted(k for k in theirs if k not in ours)
    mismatched = sorted(k for k in theirs if k in ours and tuple(ours[k].shape) != tuple(theirs[k].shape))
    if missing or mismatched:
        raise ValueError(
            f"train.init_from={exp.train.init_from}: its network does not match config.model "
            f"(weights absent here: {missing[:5]}; different shapes: {mismatched[:5]}); "
            "use the same model section as the pretrained run"
        )


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
    _check_net_shapes(exp, ours, theirs)
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
    """train.init_from must come from a method whose network output means the same thing.

    A network run through the exact EDM -> TrigFlow conversion (model.time_map='edm_as_trigflow',
    layers.map_time) takes the weights of an EDM-preconditioned one (an EDM / EDM2 file, an edm
    run) whose sigma_d is model.time_map_sigma_d, which must be this method's sigma_d."""
    from fewstep_jax.models import pretrained

    theirs = methods_lib.REGISTRY.get(pre_config.method.name)
    ours = exp.method
    sigma_d = getattr(ours.cfg, "sigma_d", None)
    model = pretrained.resolved_model(exp.config.model.to_dict())
    converted = model.get("time_map", "identity") == "edm_as_trigflow"
    wanted = "edm" if converted else ours.parameterization
    what = "file" if "pretrained" in pre_config else "run"
    if theirs is None or theirs.parameterization != wanted:
        kind = "unknown" if theirs is None else theirs.parameterization
        hint = ""
        if kind == "edm" and ours.parameterization == "trigflow":
            hint = (
                "; an EDM-preconditioned network becomes a TrigFlow one exactly with "
                "--config.model.time_map=edm_as_trigflow (c_noise = ln(sigma_d tan t) / 4, output negated; sCM sec. 3)"
            )
        raise ValueError(
            f"train.init_from={exp.train.init_from} is a {pre_config.method.name!r} {what} ({kind} parameterization); "
            f"{ours.name!r}{' with model.time_map=edm_as_trigflow' if converted else ''} needs a {wanted} one"
            + hint
        )
    if converted:
        if ours.parameterization != "trigflow" or model["time_map_sigma_d"] != sigma_d:
            raise ValueError(
                f"model.time_map=edm_as_trigflow runs an EDM network as a TrigFlow one: it needs a TrigFlow method "
                f"with method.sigma_d = model.time_map_sigma_d (here {ours.name!r}, sigma_d={sigma_d}, "
                f"time_map_sigma_d={model['time_map_sigma_d']})"
            )
    if sigma_d is not None and pre_config.method.get("sigma_d", sigma_d) != sigma_d:
        raise ValueError(
            f"train.init_from={exp.train.init_from} was trained with sigma_d={pre_config.method.sigma_d}, "
            f"this config uses method.sigma_d={sigma_d}"
        )


def check_imported_data(what: str, info: data_lib.DatasetInfo, pre_config: ml_collections.ConfigDict) -> None:
    """An imported pretrained file (pre_config.pretrained) must be a model of this config's data:
    its shape, labels, (when the file's data is one of the suite's) name, and for latents the
    preset (data/latents.py) they were normalized with; a one-line ValueError starting with
    `what` otherwise."""
    file_data = pre_config.pretrained
    theirs = (tuple(file_data.data_shape), int(file_data.num_classes))
    if theirs != (tuple(info.shape), info.num_classes) or (pre_config.data.name and pre_config.data.name != info.name):
        raise ValueError(
            f"{what} is a model of {pre_config.data.name or 'other data'} with shape {theirs[0]} and "
            f"{theirs[1]} classes; this config's data {info.name!r} has shape {tuple(info.shape)} and "
            f"{info.num_classes} classes"
        )
    preset = file_data.get("latent_preset", "")
    if preset and info.latent_preset and preset != info.latent_preset:
        from fewstep_jax.models import pretrained

        if preset == pretrained.LATENT_UNKNOWN:
            fix = "no preset of the suite normalizes latents as the file's model expects"
        else:
            fix = (
                f"prepare {info.name} with --latent_preset={preset} (docs/LATENTS.md) and set "
                f"--config.data.latent_preset={preset}"
            )
        raise ValueError(
            f"{what} is a model of latents under the {preset!r} preset; this config's data {info.name!r} were "
            f"prepared with {info.latent_preset!r}: {fix}"
        )


def check_imported(exp: Experiment, pre_config: ml_collections.ConfigDict) -> None:
    """An imported pretrained file (pre_config.pretrained) must fit this config: its data
    (check_imported_data) and the network's architecture (models.pretrained.architecture_differences),
    each named in one line."""
    from fewstep_jax.models import pretrained

    source, info = exp.train.init_from, exp.info
    check_imported_data(f"train.init_from={source}", info, pre_config)
    differences = pretrained.architecture_differences(
        pre_config.model.to_dict(), exp.config.model.to_dict(), info.num_classes
    )
    if differences:
        raise ValueError(
            f"train.init_from={source}: config.model describes another network than the file's: "
            + "; ".join(differences[:6])
            + (" ..." if len(differences) > 6 else "")
            + " (set these with --config.model.KEY=VALUE)"
        )


def pretrained_net(exp: Experiment) -> Any:
    """The network params of train.init_from (a run's EMA, or an imported official file),
    checked before anything is compiled: the same data, a parameterization this method can use,
    and every pretrained weight present in this network with its shape (the state's layout)."""
    from flax import traverse_util

    pre_config, net_params = load_pretrained(exp.train.init_from)
    if "pretrained" in pre_config:
        check_imported(exp, pre_config)
    elif ckpt_lib.config_to_json(pre_config.data) != ckpt_lib.config_to_json(exp.config.data):
        raise ValueError(
            f"train.init_from={exp.train.init_from} was trained on data {pre_config.data.to_dict()}, "
            f"this config uses {exp.config.data.to_dict()}"
        )
    check_pretrained_method(exp, pre_config)
    ours = traverse_util.flatten_dict(exp.abstract_state.params["net"], sep="/")
    _check_net_shapes(exp, ours, traverse_util.flatten_dict(net_params, sep="/"))
    return net_params


def init_from_pretrained(exp: Experiment, state: state_lib.TrainState) -> state_lib.TrainState:
    """A fresh state whose network (live and EMAs) is the EMA network of train.init_from's run
    (or an imported official file), which must share this config's data and parameterization."""
    state = with_pretrained_net(exp, state, pretrained_net(exp))
    logging.info("initialized the network from the EMA of %s", exp.train.init_from)
    return state


# ---------------------------------------------------------------------------
# Restoring


def restore_or_init(exp: Experiment, *, allow_config_change: bool = False) -> tuple[state_lib.TrainState, int]:
    """Resume from the latest checkpoint of the workdir if there is one; otherwise a fresh state
    (from train.init_from when set) at step 0."""
    if exp.checkpointer.latest_step() is None:
        net_params = pretrained_net(exp) if exp.train.init_from else None  # checked before compiling
        state = init_state(exp)
        if net_params is not None:
            state = with_pretrained_net(exp, state, net_params)
            logging.info("initialized the network from the EMA of %s", exp.train.init_from)
        return state, 0
    return restore_latest(exp, allow_config_change=allow_config_change)


def restore_latest(exp: Experiment, *, allow_config_change: bool = False) -> tuple[state_lib.TrainState, int]:
    """The latest readable checkpoint of a compatible config, with the data iterator's state."""
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


def load_for_inference(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    allow_config_change: bool = False,
    check_metrics: bool = False,
) -> tuple[Experiment, Any, int]:
    """(experiment, state, step) of the latest checkpoint, or of eval.checkpoint_step; the
    caller closes exp.checkpointer."""
    exp = setup(config, workdir, check_metrics=check_metrics)
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
