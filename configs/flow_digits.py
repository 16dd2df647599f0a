"""Flow matching (rectified flow; t = 0 noise, t = 1 data) on sklearn digits.

The plain flow-matching baseline of the shortcut and MeanFlow papers, with the
same data, network, optimizer and budget as configs/trigflow_digits.py.

  python -m fewstep_jax.main --config=configs/flow_digits.py --workdir=runs/flow_digits

Variants: `:smoke` (seconds on a CPU, for tests).
"""

import ml_collections

from fewstep_jax import config_lib


def get_config(arg: str | None = None):
    config_lib.parse_variant(arg, ("smoke",))
    c = config_lib.load_sibling(__file__, "trigflow_digits", arg)
    c.method = ml_collections.ConfigDict(dict(name="flow", noise_std=1.0, t_sampling="uniform", label_dropout=0.1))
    return c
