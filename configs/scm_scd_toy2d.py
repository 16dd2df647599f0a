"""sCD on a 2-D toy distribution, distilled from configs/trigflow_toy2d.py.

  python -m fewstep_jax.main --config=configs/trigflow_toy2d.py --workdir=runs/trigflow_toy2d
  python -m fewstep_jax.main --config=configs/scm_scd_toy2d.py --workdir=runs/scm_scd_toy2d

Variants: `:smoke` (needs a teacher: --config.method.teacher=DIR).
"""

from fewstep_jax import config_lib


def get_config(arg: str | None = None):
    variant = config_lib.parse_variant(arg, ("smoke",))
    c = config_lib.load_sibling(__file__, "scm_sct_toy2d", arg)
    c.method.name = "scm_scd"
    c.method.teacher = "runs/trigflow_toy2d"
    if variant == "smoke":
        c.method.teacher = "runs/trigflow_toy2d_smoke"
    return c
