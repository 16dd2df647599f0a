"""Flow matching (t = 1 data) on a 2-D toy distribution, same network and
budget as configs/trigflow_toy2d.py.

  python -m fewstep_jax.main --config=configs/flow_toy2d.py --workdir=runs/flow_toy2d

Variants: `:smoke`.
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants()


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.toy2d("checkerboard")
    c.method = recipes.flow()
    if variant.smoke:
        config_lib.smoke(c)
    return c
