"""notebooks/quickstart.ipynb runs end to end.

The notebook is executed from a copy in memory with a cell inserted after its `parameters` cell
(the papermill convention) that shrinks it: the smoke variants of its configs, a few training
steps, a few hundred samples, a temporary workdir. The committed file stays untouched and must
stay free of outputs. The kernel is the Python running the tests, so fewstep_jax is importable,
the install cell does nothing and nothing touches the network.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import nbclient
import nbformat
import pytest
from conftest import REPO

NOTEBOOK = os.path.join(REPO, "notebooks", "quickstart.ipynb")

TINY = """\
WORKDIR = {workdir!r}
TOY_CONFIG, TOY_STEPS, TOY_BATCH, TOY_SAMPLES = "meanflow_toy2d:smoke", 4, 64, 200
DIGITS_CONFIG, DIGITS_STEPS, DIGITS_BATCH, DIGITS_SAMPLES = "meanflow_digits:smoke", 3, 20, 100
DIGITS_GRID_ROWS = 2
DIGITS_OVERRIDES = {{"model.channel_mult": (1,), "model.attn_resolutions": ()}}  # one UNet level: faster to compile
"""


def tagged(nb, tag: str) -> list:
    return [cell for cell in nb.cells if tag in cell.get("metadata", {}).get("tags", [])]


def text_of(cell) -> str:
    return "".join(out.get("text", "") for out in cell.outputs if out.output_type == "stream")


def kernel_of_this_python(tmp_path, monkeypatch) -> str:
    """A kernel spec that runs this interpreter, found before any user or system `python3` spec."""
    spec_dir = tmp_path / "jupyter" / "kernels" / "fewstep-test"
    spec_dir.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec = {"argv": argv, "display_name": "fewstep_jax tests", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return "fewstep-test"


def test_committed_clean():
    """No outputs or execution counts (small, diff-able), one parameters cell near the top."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"cell {cell.id} has outputs"
    params = tagged(nb, "parameters")
    assert len(params) == 1
    assert nb.cells.index(params[0]) <= 3
    assert "REPO_URL" in params[0].source and "WORKDIR" in params[0].source


@pytest.mark.slow
def test_runs_end_to_end(tmp_path, monkeypatch):
    with open(NOTEBOOK, "rb") as f:
        committed = f.read()
    nb = nbformat.reads(committed.decode("utf-8"), as_version=4)
    after = nb.cells.index(tagged(nb, "parameters")[0]) + 1
    tiny = nbformat.v4.new_code_cell(TINY.format(workdir=str(tmp_path / "runs")))
    tiny.metadata["tags"] = ["injected-parameters"]  # papermill's name for such a cell
    nb.cells.insert(after, tiny)

    # Raises CellExecutionError on the first cell that fails; runs in the repository root, as a
    # user of a checkout would.
    kernel = kernel_of_this_python(tmp_path, monkeypatch)
    client = nbclient.NotebookClient(nb, timeout=240, kernel_name=kernel, resources={"metadata": {"path": REPO}})
    # Most XLA optimizations off: compiling is most of the run, and a few steps need no speed.
    client.execute(env=dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="1"))

    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.execution_count is not None, cell.source[:80]
            assert not [out for out in cell.outputs if out.output_type == "error"]

    install = next(cell for cell in nb.cells if cell.get("id") == "install")
    assert "fewstep_jax was installed" in text_of(install)  # nothing cloned or pip-installed

    plots = tagged(nb, "plot")
    assert len(plots) == 2  # toy2d scatter plots, digits grids
    for cell in plots:
        assert any("image/png" in out.get("data", {}) for out in cell.outputs), cell.source[:80]

    toy_metrics, digits_metrics = tagged(nb, "metrics")
    for cell, metric in ((toy_metrics, "swd"), (digits_metrics, "fd")):
        table = text_of(cell)
        assert f"| {metric} |" in table  # the header
        assert "real data (floor)" in table
        for steps in (1, 2, 4):
            assert f"\n| {steps} | {steps} |" in table  # steps, NFE: one row per step count

    progress = "".join(text_of(cell) for cell in nb.cells if cell.cell_type == "code")
    assert "steps/s" in progress and "ETA" in progress  # the training loop's progress lines
    assert os.path.isfile(tmp_path / "runs" / "digits" / "eval" / "results.json")
    with open(NOTEBOOK, "rb") as f:
        assert f.read() == committed


@pytest.mark.parametrize(
    "present, gpu, extra",
    [({"jax"}, True, []), ({"jax"}, False, []), (set(), True, ["jax[cuda12]"]), (set(), False, ["jax"])],
)
def test_install_cell_keeps_the_runtimes_jax(monkeypatch, present, gpu, extra):
    """On a runtime without fewstep_jax (a fresh Colab), the install cell pip-installs the checkout
    and adds JAX only when none is importable: Colab's own JAX build is never replaced."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    install = next(cell for cell in nb.cells if cell.get("id") == "install")
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):
        if name == "fewstep_jax":
            return None
        if name == "jax":
            return real_find_spec(name) if "jax" in present else None
        return real_find_spec(name, *args)

    commands = []
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: commands.append(cmd))
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/nvidia-smi" if gpu and name == "nvidia-smi" else None)
    monkeypatch.chdir(REPO)
    exec(compile(install.source, "install-cell", "exec"), {"REPO_URL": "", "REPO_BRANCH": ""})
    assert commands == [[sys.executable, "-m", "pip", "install", "--quiet", REPO, *extra]]
