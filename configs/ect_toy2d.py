"""ECT on a 2-D toy distribution, tuned from configs/edm_toy2d.py (sigma_d = 1).

The CIFAR-10 recipe (sigmoid mapping, q = 2, 8 stages over the run, 1 / (t - r), c = 0) scaled
to the 3,000-step toy budget; every noise-level setting is scaled from sigma_d = 0.5 to 1 (x2):
P_mean -1.1 + ln 2, the mapping's b = 1 / 2, t_mid = 2 x 0.821.

  python -m fewstep_jax.main --config=configs/edm_toy2d.py --workdir=runs/edm_toy2d
  python -m fewstep_jax.main --config=configs/ect_toy2d.py --workdir=runs/ect_toy2d

Variants: `:smoke` (from scratch).
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants()


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.ect_toy2d()
    if variant.smoke:  # from scratch, with the tuning schedule
        config_lib.smoke(c)
        c.train.init_from = ""
        c.method.stage_length = 10
    return c
