"""Align Your Flow (Sabour, Fidler, Kreis 2025; t = 1 noise) on a 2-D toy distribution: Eulerian
flow-map distillation of configs/flow_toy2d.py's flow-matching model (method.teacher), with its
data, network (plus the interval input h = t - s) and budget.

Method: recipes.ayf (tangent normalization c = 0.1, r_w warmed up to 0.99) with the warmup over
the first 10% of the run (unverified in the paper; sCM's toy recipe uses 300 of 3,000 steps too);
no autoguidance (a weaker teacher run would be --config.method.weak_teacher=DIR
--config.method.autoguidance=LAMBDA).

  python -m fewstep_jax.main --config=configs/flow_toy2d.py --workdir=runs/flow_toy2d
  python -m fewstep_jax.main --config=configs/ayf_toy2d.py --workdir=runs/ayf_toy2d

Variants: `:smoke` (needs a teacher: --config.method.teacher=DIR).
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants()


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.toy2d("checkerboard")
    c.model.use_d = True
    c.method = recipes.ayf("runs/flow_toy2d", tangent_warmup=c.train.num_steps // 10)
    c.eval.nfes = (1, 2, 4, 8)
    if variant.smoke:
        config_lib.smoke(c)
        c.method.update(dict(tangent_warmup=10, teacher="runs/flow_toy2d_smoke"))
    return c
