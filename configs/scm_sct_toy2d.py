"""sCT on a 2-D toy distribution, initialized from configs/trigflow_toy2d.py.

  python -m fewstep_jax.main --config=configs/trigflow_toy2d.py --workdir=runs/trigflow_toy2d
  python -m fewstep_jax.main --config=configs/scm_sct_toy2d.py --workdir=runs/scm_sct_toy2d

Variants: `:smoke` (from scratch).
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants()


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.scm_toy2d()
    if variant.smoke:
        config_lib.smoke(c)
        c.train.init_from = ""
        c.method.tangent_warmup = 10
    return c
