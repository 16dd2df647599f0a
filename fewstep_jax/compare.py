"""Compare NFE sweeps of several runs: one plot and one markdown table.

Reads the results.json files that `--mode=eval` writes (DIR/eval/stepN_SAMPLER/):

  python -m fewstep_jax.compare --out=docs/shortcut_vs_flow_digits \
      --run="flow matching=runs/flow_digits/eval/step0001200_euler/results.json" \
      --run="shortcut=runs/shortcut_digits/eval/step0001200_euler/results.json"

writes OUT.png (metric vs NFE, log-log, with the real-data floor) and OUT.md (a table).
"""

from __future__ import annotations

import json
import os

from absl import app, flags

from fewstep_jax import evaluate

flags.DEFINE_multi_string("run", [], "LABEL=PATH of a results.json written by --mode=eval.")
flags.DEFINE_string("metric", "", "Metric to compare (default: the runs' primary metric).")
flags.DEFINE_string("out", None, "Output path without extension (.png and .md are written).")
flags.DEFINE_string("title", "", "Plot title.")
flags.mark_flag_as_required("out")
FLAGS = flags.FLAGS


def load_runs(specs: list[str]) -> list[tuple[str, dict]]:
    runs = []
    for spec in specs:
        if "=" not in spec:
            raise ValueError(f"--run must be LABEL=PATH, got {spec!r}")
        label, path = spec.split("=", 1)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found: run --mode=eval for that workdir first")
        with open(path) as f:
            runs.append((label, json.load(f)))
    if not runs:
        raise ValueError("give at least one --run=LABEL=PATH")
    return runs


def table(runs: list[tuple[str, dict]], metric: str) -> str:
    nfes = sorted({r["nfe"] for _, res in runs for r in res["rows"]})
    lines = ["| method | " + " | ".join(f"NFE {n}" for n in nfes) + " | floor |", "|---" * (len(nfes) + 2) + "|"]
    for label, res in runs:
        by_nfe = {r["nfe"]: r[metric] for r in res["rows"]}
        cells = [f"{by_nfe[n]:.4g}" if n in by_nfe else "-" for n in nfes]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {res['floor'].get(metric, float('nan')):.4g} |")
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    runs = load_runs(FLAGS.run)
    metric = FLAGS.metric or runs[0][1]["primary"]
    os.makedirs(os.path.dirname(FLAGS.out) or ".", exist_ok=True)
    evaluate.plot_metric_vs_nfe(
        [(label, res["rows"]) for label, res in runs],
        metric,
        runs[0][1]["floor"].get(metric),
        FLAGS.out + ".png",
        FLAGS.title or f"{metric} vs NFE",
    )
    text = table(runs, metric)
    with open(FLAGS.out + ".md", "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    app.run(main)
