"""Align Your Flow (Sabour, Fidler, Kreis 2025; t = 1 noise) on sklearn digits: Eulerian flow-map
distillation of configs/flow_digits.py's flow-matching model (method.teacher, class-conditional,
sampled unguided), with its data, network (plus the interval input h = t - s), optimizer and
1,200-step budget; the r_w warmup over the first 10% of the run; no autoguidance.

  python -m fewstep_jax.main --config=configs/flow_digits.py --workdir=runs/flow_digits
  python -m fewstep_jax.main --config=configs/ayf_digits.py --workdir=runs/ayf_digits

Variants: `:smoke` (needs a teacher: --config.method.teacher=DIR).
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants()


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.digits()
    c.model.use_d = True
    c.method = recipes.ayf("runs/flow_digits", tangent_warmup=c.train.num_steps // 10)
    c.eval.nfes = (1, 2, 4)
    if variant.smoke:
        config_lib.smoke(c)
        c.method.update(dict(tangent_warmup=10, teacher="runs/flow_digits_smoke"))
    return c
