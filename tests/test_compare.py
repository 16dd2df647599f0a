"""The NFE-sweep comparison tool on synthetic results files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO


def write(path, rows, floor):
    with open(path, "w") as f:
        json.dump({"rows": rows, "floor": floor, "primary": "fd"}, f)


@pytest.mark.slow
def test_compare_writes_table_and_plot(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    write(a, [{"steps": 1, "nfe": 1, "fd": 30.0}, {"steps": 2, "nfe": 2, "fd": 8.0}], {"fd": 2.4})
    write(b, [{"steps": 1, "nfe": 1, "fd": 5.5}, {"steps": 4, "nfe": 4, "fd": 3.0}], {"fd": 2.4})
    out = str(tmp_path / "cmp")
    res = subprocess.run(
        [sys.executable, "-m", "fewstep_jax.compare", f"--run=flow={a}", f"--run=shortcut={b}", f"--out={out}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 0, res.stderr
    text = open(out + ".md").read()
    assert "| method | NFE 1 | NFE 2 | NFE 4 | floor |" in text
    assert "| flow | 30 | 8 | - | 2.4 |" in text and "| shortcut | 5.5 | - | 3 | 2.4 |" in text
    assert os.path.getsize(out + ".png") > 1000
