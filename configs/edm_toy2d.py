"""EDM diffusion (Karras et al. 2022) on a 2-D toy distribution: the model ECT / SCT tune from.

Same data, network and budget as configs/trigflow_toy2d.py; sigma_d = 1 (toy coordinates have
std ~1), EDM's proposal ln sigma ~ N(-1.2, 1.2^2).

  python -m fewstep_jax.main --config=configs/edm_toy2d.py --workdir=runs/edm_toy2d

Variants: `:smoke`.
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants()


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.toy2d("checkerboard")
    c.method = recipes.edm(sigma_d=1.0)
    if variant.smoke:
        config_lib.smoke(c)
    return c
