"""Orbax checkpoints: periodic saves with retention, resume, config compatibility.

A checkpoint step directory holds three items:
  state   the TrainState (sharding-aware, restored onto the current mesh)
  data    the data iterator state (JSON)
  config  the full experiment config (JSON), to refuse resuming under a config
          that would silently change the experiment
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

#: Config keys that may change between a checkpoint and its resumption: they
#: control how long and how visibly training runs, not what it computes.
RESUMABLE_CHANGES = (
    "train.num_steps",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.sample_every",
    "train.eval_every",
    "train.init_from",  # only read when a run starts from scratch
)
RESUMABLE_SECTIONS = ("eval.",)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: unreadable, or from another experiment."""


class UnreadableCheckpoint(CheckpointError):
    """A checkpoint directory exists but cannot be read (corrupted or incomplete files)."""



def config_to_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
    return json.loads(config.to_json())


def config_from_json(saved: dict[str, Any]) -> ml_collections.ConfigDict:
    """Inverse of config_to_json (JSON turned tuples into lists: turn them back)."""

    def tuples(v):
        if isinstance(v, dict):
            return {k: tuples(x) for k, x in v.items()}
        if isinstance(v, list):
            return tuple(tuples(x) for x in v)
        return v

    return ml_collections.ConfigDict(tuples(saved))


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


#: Schedules whose shape depends on train.num_steps: changing it changes the learning rates.
SCHEDULES_OVER_NUM_STEPS = ("cosine", "linear")


def implied_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """Flat {key: value} the code assumes for a key that a config leaves out: the section
    dataclasses' defaults (train, optim, eval, sharding) and those of the named network and
    method. A config written before a key existed behaves like one holding the default."""
    import dataclasses

    from fewstep_jax import config_lib, methods, models

    sections: dict[str, dict[str, Any]] = {}
    for section, cls in (
        ("train", config_lib.TrainConfig),
        ("optim", config_lib.OptimConfig),
        ("eval", config_lib.EvalConfig),
        ("sharding", config_lib.ShardingConfig),
    ):
        sections[section] = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
    model = models.REGISTRY.get(config.get("model", {}).get("name"))
    if model is not None:
        sections["model"] = dict(model.defaults)
    method = methods.REGISTRY.get(config.get("method", {}).get("name"))
    if method is not None:
        sections["method"] = {
            f.name: f.default for f in dataclasses.fields(method.Config) if f.default is not dataclasses.MISSING
        }
    return flatten(sections)


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Human-readable list of differences that matter for resuming.

    A key present on one side only is no difference when the other side holds the value the
    code assumes in its absence (a config saved before the key was added).
    """
    a, b = flatten(saved), flatten(current)
    defaults = implied_defaults(current)
    stretchable = a.get("optim.schedule") in SCHEDULES_OVER_NUM_STEPS
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key == "train.num_steps" and stretchable and a.get(key) != b.get(key):
            diffs.append(
                f"{key}: checkpoint has {a.get(key)!r}, config has {b.get(key)!r} "
                f"(the {a['optim.schedule']} learning-rate schedule decays over train.num_steps)"
            )
            continue
        if key in RESUMABLE_CHANGES or key.startswith(RESUMABLE_SECTIONS):
            continue
        default = defaults.get(key, "<absent>")
        va, vb = (tuple(v) if isinstance(v, list) else v for v in (a.get(key, default), b.get(key, default)))
        if va != vb:
            diffs.append(f"{key}: checkpoint has {va!r}, config has {vb!r}")
    return diffs


class Checkpointer:
    """Thin wrapper over orbax's CheckpointManager for this suite's items."""

    def __init__(self, directory: str, *, keep: int):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=max(keep, 1), create=True)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_names=("state", "data", "config"),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def quarantine(self, step: int) -> str:
        """Moves an unreadable checkpoint out of the way (to WORKDIR/corrupt_checkpoints/STEP, kept
        for inspection) so that training can write that step again; returns the new path."""
        source = os.path.join(self.directory, str(step))
        target = os.path.join(os.path.dirname(self.directory), "corrupt_checkpoints", str(step))
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if os.path.exists(target):
                target = f"{target}.{len(os.listdir(os.path.dirname(target)))}"
            os.replace(source, target)
        self.manager.reload()
        return target

    def save(self, step: int, state: Any, data_state: dict, config: ml_collections.ConfigDict) -> None:
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data_state),
                config=ocp.args.JsonSave(config_to_json(config)),
            ),
            force=True,
        )

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def saved_config(self, step: int) -> dict[str, Any]:
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        except Exception as e:  # orbax raises many types; all mean "cannot read"
            raise UnreadableCheckpoint(self.unreadable(step, e)) from e
        return restored["config"]

    def check_compatible(self, step: int, config: ml_collections.ConfigDict, *, allow_change: bool) -> None:
        """Refuse to resume a checkpoint written under a different experiment config."""
        diffs = config_differences(self.saved_config(step), config_to_json(config))
        if not diffs:
            return
        listing = "\n  ".join(diffs)
        if allow_change:
            logging.warning("Resuming step %d despite config changes:\n  %s", step, listing)
            return
        raise CheckpointError(
            f"the workdir {os.path.dirname(self.directory)} holds a checkpoint (step {step}) of a different "
            f"config:\n  {listing}\nUse a fresh --workdir, or pass --allow_config_change to resume anyway."
        )

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Restore onto the shardings carried by `abstract_state` (ShapeDtypeStruct leaves)."""
        try:
            restored = self.manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    data=ocp.args.JsonRestore(),
                ),
            )
        except Exception as e:
            raise UnreadableCheckpoint(self.unreadable(step, e)) from e
        return restored["state"], restored["data"]

    def unreadable(self, step: int, err: Exception) -> str:
        path = os.path.join(self.directory, str(step))
        return (
            f"checkpoint {path} cannot be read ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
            f"Move that directory away to resume from an earlier checkpoint, or use a fresh --workdir."
        )

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStruct leaves carrying the target shardings (restore onto any mesh)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
