"""The sample and eval modes on saved checkpoints."""

from __future__ import annotations

import os

import pytest
from conftest import load_config, quiet, run_cli

from fewstep_jax import checkpoint as ckpt_lib
from fewstep_jax import modes, train

pytestmark = pytest.mark.slow


def test_sample_and_eval_without_checkpoint_say_what_to_do(tmp_path):
    res = run_cli(["--config=configs/flow_toy2d.py:smoke", f"--workdir={tmp_path}", "--mode=eval"])
    assert res.returncode == 1
    assert "no checkpoint in" in res.stderr and "--mode=train" in res.stderr


def test_eval_of_an_earlier_checkpoint(tmp_path):
    config = quiet(load_config("flow_toy2d"), 10)
    config.train.checkpoint_every = 5
    workdir = str(tmp_path / "w")
    train.train_and_evaluate(config, workdir)
    config.eval.nfes = (1,)
    config.eval.num_samples = 100
    config.eval.checkpoint_step = 5
    modes.eval_mode(config, workdir)
    assert os.path.isdir(os.path.join(workdir, "eval", "step0000005_euler"))
    config.eval.checkpoint_step = 7
    with pytest.raises(ckpt_lib.CheckpointError, match=r"checkpoint_step=7 is not in .*saved steps: \[5, 10\]"):
        modes.eval_mode(config, workdir)
