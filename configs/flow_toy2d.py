"""Flow matching (t = 1 data) on a 2-D toy distribution, same network and
budget as configs/trigflow_toy2d.py.

  python -m fewstep_jax.main --config=configs/flow_toy2d.py --workdir=runs/flow_toy2d

Variants: `:smoke`.
"""

import ml_collections

from fewstep_jax import config_lib


def get_config(arg: str | None = None):
    config_lib.parse_variant(arg, ("smoke",))
    c = config_lib.load_sibling(__file__, "trigflow_toy2d", arg)
    c.method = ml_collections.ConfigDict(dict(name="flow", noise_std=1.0, t_sampling="uniform", label_dropout=0.0))
    return c
