"""TrigFlow diffusion on a 2-D toy distribution (checkerboard by default).

  python -m fewstep_jax.main --config=configs/trigflow_toy2d.py --workdir=runs/trigflow_toy2d
  python -m fewstep_jax.main --config=configs/trigflow_toy2d.py --workdir=runs/x \
      --config.data.distribution=moons

Variants: `:smoke`. Metric: sliced Wasserstein distance (swd) to fresh exact
samples of the distribution, next to its floor (fresh vs fresh).
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants()


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.toy2d("checkerboard")
    c.method = recipes.trigflow(sigma_d=1.0, p_mean=-0.4)  # toy data has std ~1 per coordinate
    if variant.smoke:
        config_lib.smoke(c)
    return c
