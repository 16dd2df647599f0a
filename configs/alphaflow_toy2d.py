"""alpha-Flow (Zhang et al. 2025; t = 1 noise) on a 2-D toy distribution, with the data, network
and budget of configs/flow_toy2d.py (the MLP also takes the interval h = t - r as `d`).

Method: the official code's B/2 recipe without CFG (recipes.alphaflow), its alpha curriculum
(1 -> 0, sigmoid, gamma 25) spread over the whole 3,000-step run as the B/2 recipe spreads it
over its 400k steps; trajectory sampling.

  python -m fewstep_jax.main --config=configs/alphaflow_toy2d.py --workdir=runs/alphaflow_toy2d

Variants: `:smoke` (seconds on a CPU).
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants()


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.toy2d("checkerboard")
    c.model.use_d = True
    c.method = recipes.alphaflow(alpha_end=c.train.num_steps)
    c.eval.nfes = (1, 2, 4, 8)
    if variant.smoke:
        config_lib.smoke(c)
        c.method.alpha_end = c.train.num_steps
    return c
