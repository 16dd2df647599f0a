"""MeanFlow (Geng et al. 2025; t = 0 data, t = 1 noise) on a 2-D toy distribution, with the data,
network and budget of configs/flow_toy2d.py (the MLP also takes the interval h = t - r as `d`).

Method settings as configs/meanflow_digits.py (the CIFAR-10 PyTorch recipe: t ~ logit-normal
(-0.6, 1.6), r ~ logit-normal(-4.0, 1.6), r = min(t, r), 75% of rows with r != t, p = 0.75,
c = 1e-3); the toy data is unconditional, so no label dropout and no guidance.

  python -m fewstep_jax.main --config=configs/meanflow_toy2d.py --workdir=runs/meanflow_toy2d

Variants: `:smoke` (seconds on a CPU).
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants()


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.toy2d("checkerboard")
    c.model.use_d = True
    c.method = recipes.meanflow()  # the official CIFAR-10 recipe
    c.eval.nfes = (1, 2, 4, 8)
    if variant.smoke:
        config_lib.smoke(c)
    return c
