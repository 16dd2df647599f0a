"""sCD on a 2-D toy distribution, distilled from configs/trigflow_toy2d.py.

  python -m fewstep_jax.main --config=configs/trigflow_toy2d.py --workdir=runs/trigflow_toy2d
  python -m fewstep_jax.main --config=configs/scm_scd_toy2d.py --workdir=runs/scm_scd_toy2d

Variants: `:smoke` (needs a teacher: --config.method.teacher=DIR).
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants()


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.scm_toy2d()
    c.method.update(dict(name="scm_scd", teacher="runs/trigflow_toy2d"))
    if variant.smoke:
        config_lib.smoke(c)
        c.train.init_from = ""
        c.method.update(dict(tangent_warmup=10, teacher="runs/trigflow_toy2d_smoke"))
    return c
