"""EDM diffusion (Karras et al. 2022) on a 2-D toy distribution: the model ECT / SCT tune from.

Same data, network and budget as configs/trigflow_toy2d.py; sigma_d = 1 (toy coordinates have
std ~1), EDM's proposal ln sigma ~ N(-1.2, 1.2^2).

  python -m fewstep_jax.main --config=configs/edm_toy2d.py --workdir=runs/edm_toy2d

Variants: `:smoke`.
"""

import ml_collections

from fewstep_jax import config_lib


def get_config(arg: str | None = None):
    config_lib.parse_variant(arg, ("smoke",))
    c = config_lib.load_sibling(__file__, "trigflow_toy2d", arg)
    c.method = ml_collections.ConfigDict(dict(name="edm", sigma_d=1.0, p_mean=-1.2, p_std=1.2, label_dropout=0.0))
    return c
