"""End to end at paper scale, on fixtures: `configs/sct_cifar.py:smoke` on a CIFAR-10 prepared from
a fixture tarball in the official format trains, samples, and computes FID (and IS) against
reference statistics that the suite computes from the fixture's training split; then
`--mode=eval` writes the FID table and plot.

The Inception weights are random (shared with tests/test_fid.py, which checks the network's
parity with an independent implementation), so the FID values themselves mean nothing here:
what is tested is that every stage runs on real formats and that the statistics and tables
are the ones the code claims to write.
"""

from __future__ import annotations

import json
import os

import inception_golden as golden
import numpy as np
import pytest
from conftest import load_config
from test_real_data import CIFAR_TRAIN_PER_BATCH, make_cifar_tarball

from fewstep_jax import modes, train
from fewstep_jax.data import prepare
from fewstep_jax.metrics import fid, inception


@pytest.fixture(scope="module")
def cifar_and_weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper_scale")
    manual, data_dir = root / "manual", root / "tensorflow_datasets"
    manual.mkdir()
    make_cifar_tarball(manual, np.random.default_rng(0))
    prepare.prepare("cifar10", manual_dir=str(manual), data_dir=str(data_dir), num_workers=1)
    weights = str(root / "inception_random.npz")
    inception.save_state_dict_npz(golden.random_state_dict(inception.state_dict_shapes()), weights)
    return {"root": root, "data_dir": str(data_dir), "weights": weights}


@pytest.mark.slow
def test_sct_cifar_smoke_trains_samples_and_scores_fid(cifar_and_weights, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("FEWSTEP_CACHE", str(cache))
    config = load_config("sct_cifar")
    config.data.data_dir = cifar_and_weights["data_dir"]
    config.eval.fid_weights = cifar_and_weights["weights"]
    config.eval.update(dict(num_samples=12, fid_batch_size=12, batch_size=12, grid_size=12, nfes=(1, 2)))
    config.train.update(dict(num_steps=4, log_every=2, checkpoint_every=4, sample_every=4, eval_every=0))
    # One resolution level: the smoke network's compile time dominates this test on CPU.
    config.model.update(dict(channel_mult=(1,), attn_resolutions=()))
    workdir = str(tmp_path / "run")

    summary = train.train_and_evaluate(config, workdir)
    assert summary["status"] == "finished"
    for nfe in (1, 2):
        assert os.path.isfile(os.path.join(workdir, "samples", f"step0000004_euler_nfe{nfe}.png"))

    # --mode=eval: FID-N at each NFE of the list, with a table and a plot.
    table = modes.eval_mode(config, workdir)
    out_dir = os.path.join(workdir, "eval", "step0000004_euler")
    with open(os.path.join(out_dir, "results.json")) as f:
        rows = json.load(f)["rows"]
    assert [r["nfe"] for r in rows] == [1, 2]
    for row in rows:
        assert np.isfinite(row["fid"]) and row["fid"] > 0 and row["is"] >= 1.0
    assert "| steps | NFE | fid | is | is_std |" in table
    assert os.path.isfile(os.path.join(out_dir, "metric_vs_nfe.png"))

    # The reference statistics: the fixture's whole training split, cached under a keyed name.
    (stats_file,) = [f for f in os.listdir(cache) if f.startswith("fid_stats_cifar10_train_")]
    with np.load(cache / stats_file) as f:
        meta = json.loads(str(f["meta"]))
    assert meta["images"] == 5 * CIFAR_TRAIN_PER_BATCH and meta["dataset"] == "cifar10"
    mu, sigma = fid.load_stats(str(cache / stats_file))
    assert mu.shape == (2048,) and sigma.shape == (2048, 2048)


def test_fid_config_without_weights_fails_before_training(cifar_and_weights, tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSTEP_CACHE", str(tmp_path / "empty_cache"))
    config = load_config("sct_cifar")
    config.data.data_dir = cifar_and_weights["data_dir"]
    with pytest.raises(FileNotFoundError, match="fid_weights"):
        train.train_and_evaluate(config, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run" / "checkpoints")
