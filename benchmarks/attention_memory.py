"""XLA's compiled temporary memory of attention under jvp, per model.attention kind and token count.

  python benchmarks/attention_memory.py                       # 1,024 / 4,096 / 16,384 tokens
  python benchmarks/attention_memory.py --tokens=256,1024 --head_dim=8

jvp-based methods (sCM, MeanFlow, iMF, AYF, DMF) push a tangent through every attention layer and
MeanFlow-style methods then differentiate the result. For one attention call (batch 1, one head of
--head_dim channels, float32, the default blocks of fewstep_jax/models/attention.py) this compiles,
without allocating anything, two functions per kind:
  jvp          (q, k, v), (dq, dk, dv) -> (output, tangent)            [jax.jvp]
  grad of jvp  the gradient in all six inputs of sum(output^2) + sum(tangent^2)
and reads XLA's plan of their temporaries (compiled.memory_analysis().temp_size_in_bytes). Einsum
attention holds [tokens, tokens] weights for the primal and again for the tangent; the blockwise
custom_jvp rule holds one block. 'auto' runs the fused kernel for the primal: on a CPU that is the
einsum, so its primal still holds the matrix there.

Writes --out_dir/attention_memory_<machine>.json and .md and prints the table.
"""

from __future__ import annotations

import os
import sys
import time
from functools import partial

import harness
import jax
import jax.numpy as jnp
from absl import app, flags

from fewstep_jax.models import attention as attention_lib

flags.DEFINE_list("tokens", ["1024", "4096", "16384"], "Sequence lengths (queries = keys).")
flags.DEFINE_list("kinds", ["einsum", "auto", "blockwise"], "model.attention kinds.")
flags.DEFINE_integer("head_dim", 64, "Channels of the one head.")
flags.DEFINE_string(
    "out_dir", os.path.join(harness.REPO, "benchmarks", "results"), "Where attention_memory_<tag>.json / .md go."
)
FLAGS = flags.FLAGS

MIB = 2**20
FUNCTIONS = ("jvp", "grad of jvp")


def function(name: str, kind: str):
    attend = partial(attention_lib.attention, kind=kind)

    def jvp(q, k, v, dq, dk, dv):
        return jax.jvp(attend, (q, k, v), (dq, dk, dv))

    def score(*args):
        out, tangent = jvp(*args)
        return jnp.sum(out**2) + jnp.sum(tangent**2)

    return jvp if name == "jvp" else jax.grad(score, argnums=tuple(range(6)))


def temp_mib(name: str, kind: str, tokens: int, head_dim: int) -> float:
    spec = jax.ShapeDtypeStruct((1, tokens, 1, head_dim), jnp.float32)
    compiled = jax.jit(function(name, kind)).lower(*[spec] * 6).compile()
    return compiled.memory_analysis().temp_size_in_bytes / MIB


def markdown(report: dict) -> str:
    tokens = report["settings"]["tokens"]
    lines = [
        f"Machine: {report['machine']['description']}. Command: `{report['command']}`. XLA's compiled temporary "
        f"memory, MiB (float32, batch 1, one head of {report['settings']['head_dim']}, blocks of "
        f"{attention_lib.DEFAULT_BLOCK}):",
        "",
        "| function: kind | " + " | ".join(f"{n:,} tokens" for n in tokens) + " |",
        "|---|" + "---|" * len(tokens),
    ]
    for row in report["rows"]:
        cells = " | ".join(f"{row['temp_mib'][str(n)]:,.0f}" for n in tokens)
        lines.append(f"| {row['function']}: `{row['kind']}` | {cells} |")
    return "\n".join(lines) + "\n"


def main(argv):
    harness.check_command_line(argv, kinds=(FLAGS.kinds, attention_lib.ATTENTION_KINDS))
    tokens = [int(n) for n in FLAGS.tokens]
    rows, t0 = [], time.perf_counter()
    for name in FUNCTIONS:
        for kind in FLAGS.kinds:
            row = {"function": name, "kind": kind, "temp_mib": {}}
            for n in tokens:
                row["temp_mib"][str(n)] = temp_mib(name, kind, n, FLAGS.head_dim)
                harness.progress(f"{name}, {kind}, {n} tokens: {row['temp_mib'][str(n)]:,.1f} MiB")
            rows.append(row)
    machine = harness.describe_machine()
    report = {
        "schema": 1,
        "command": "python benchmarks/attention_memory.py" + "".join(f" {a}" for a in sys.argv[1:]),
        "wall_s": time.perf_counter() - t0,
        "machine": machine,
        "settings": {"tokens": tokens, "head_dim": FLAGS.head_dim, "block": attention_lib.DEFAULT_BLOCK},
        "rows": rows,
    }
    harness.publish_report(FLAGS.out_dir, f"attention_memory_{harness.machine_tag(machine)}", report, markdown(report))


if __name__ == "__main__":
    app.run(main)
