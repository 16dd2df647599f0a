"""Shortcut model (Frans et al. 2024) on a 2-D toy distribution, with the data, network and
budget of configs/flow_toy2d.py (the MLP also takes the step-size level).

  python -m fewstep_jax.main --config=configs/shortcut_toy2d.py --workdir=runs/shortcut_toy2d

Variants: `:smoke` (seconds on a CPU).
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants()


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.toy2d("checkerboard")
    c.model.use_d = True
    c.method = recipes.shortcut()
    c.eval.nfes = (1, 2, 4, 8, 16, 128)
    if variant.smoke:
        config_lib.smoke(c)
    return c
