"""Shortcut model (Frans et al. 2024) on a 2-D toy distribution, with the data, network and
budget of configs/flow_toy2d.py (the MLP also takes the step-size level).

  python -m fewstep_jax.main --config=configs/shortcut_toy2d.py --workdir=runs/shortcut_toy2d

Variants: `:smoke` (seconds on a CPU).
"""

import ml_collections

from fewstep_jax import config_lib


def get_config(arg: str | None = None):
    variant = config_lib.parse_variant(arg, ("smoke",))
    c = config_lib.load_sibling(__file__, "flow_toy2d", arg)
    c.model.use_d = True
    c.method = ml_collections.ConfigDict(
        dict(name="shortcut", num_steps_max=128, bootstrap_every=4, label_dropout=0.0, cfg_scale=1.0)
    )
    c.eval.nfes = (1, 2, 4, 8, 16, 128)
    if variant == "smoke":
        c.eval.nfes = (1, 2)
    return c
