"""Command-line entry point.

  python -m fewstep_jax.main --config=configs/trigflow_digits.py[:smoke] --workdir=runs/x \
      [--mode=train|sample|eval] [--config.optim.lr=2e-4 ...]

Configs are locked (lock_config=True): an override naming a key that does not
exist fails at parse time. Every other user error (unknown names, an
indivisible batch, an incompatible or unreadable checkpoint) is reported in one
line before anything is compiled.
"""

from __future__ import annotations

import logging as pylogging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, optionally with a variant: configs/x.py:smoke", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, samples and evaluations.")
flags.DEFINE_enum("mode", "train", ["train", "sample", "eval"], "What to do with the config.")
flags.DEFINE_bool(
    "allow_config_change", False, "Resume a checkpoint even though its saved config differs from --config."
)
flags.DEFINE_bool(
    "distributed",
    False,
    "Join a multi-process job (jax.distributed.initialize). Also on when FEWSTEP_DISTRIBUTED=1. "
    "Without --coordinator_address JAX detects TPU pods and SLURM jobs itself.",
)
flags.DEFINE_string("coordinator_address", "", "host:port of process 0, for jobs JAX cannot detect.")
flags.DEFINE_integer("num_processes", 0, "Number of processes (with --coordinator_address).")
flags.DEFINE_integer("process_id", -1, "This process's id in 0..num_processes-1 (with --coordinator_address).")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


NOISY_MODULES = ("orbax", "xla_bridge")


class QuietLibraries:
    """absl log filter: drop library INFO chatter (orbax logs every array write)."""

    def filter(self, record) -> bool:
        return record.levelno >= pylogging.WARNING or not any(m in record.pathname for m in NOISY_MODULES)


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # Imported here so that `--help` and flag errors need no JAX start-up.
    from fewstep_jax import checkpoint, modes, sharding, train

    if FLAGS.distributed or os.environ.get("FEWSTEP_DISTRIBUTED") == "1":
        sharding.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)

    logging.set_verbosity(logging.INFO)
    logging.get_absl_logger().addFilter(QuietLibraries())  # libraries logging through absl (orbax)
    logging.get_absl_handler().python_handler.addFilter(QuietLibraries())  # and through std logging (jax)
    config = FLAGS.config
    try:
        if FLAGS.mode == "train":
            summary = train.train_and_evaluate(config, FLAGS.workdir, allow_config_change=FLAGS.allow_config_change)
            if "steps_per_sec" in summary:
                logging.info("throughput: %.2f steps/s", summary["steps_per_sec"])
        elif FLAGS.mode == "sample":
            modes.sample_mode(config, FLAGS.workdir, allow_config_change=FLAGS.allow_config_change)
        else:
            print(modes.eval_mode(config, FLAGS.workdir, allow_config_change=FLAGS.allow_config_change))
    except (ValueError, FileNotFoundError, checkpoint.CheckpointError, train.NonFiniteError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with one-line errors for bad config files and overrides.

    A misspelt override such as --config.optim.lrr=1 fails here, before JAX starts,
    with ml_collections' suggestion ("Did you mean 'lr'?").
    """
    try:
        return FLAGS(argv)
    except flags.Error as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        if "Traceback (most recent call last):" in lines:  # raised inside the config file
            lines = [lines[0], lines[-1]]
        print("error: " + " ".join(lines) + "\nPass --help to see the flags.", file=sys.stderr)
        sys.exit(2)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        inner = e.args[0] if e.args else e  # ml_collections wraps a KeyError in an AttributeError
        if isinstance(inner, BaseException) and inner.args:
            inner = inner.args[0]
        message = " ".join(str(inner).split())
        print(f"error: bad --config.* override: {message}", file=sys.stderr)
        sys.exit(2)


def run() -> None:
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
