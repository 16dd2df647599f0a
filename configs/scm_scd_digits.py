"""sCD (sCM continuous-time consistency distillation, Lu & Song 2024, Alg. 1) on digits.

The teacher is the TrigFlow run of configs/trigflow_digits.py (its EMA, in eval
mode); the student starts from the same weights (the paper's recipe) and trains
with dropout 0. Everything else as configs/scm_sct_digits.py.

  python -m fewstep_jax.main --config=configs/trigflow_digits.py --workdir=runs/trigflow_digits
  python -m fewstep_jax.main --config=configs/scm_scd_digits.py --workdir=runs/scm_scd_digits

Variants: `:smoke` (needs a teacher: --config.method.teacher=DIR).
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants()


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.scm_digits()
    c.method.update(dict(name="scm_scd", teacher="runs/trigflow_digits"))
    c.model.dropout = 0.0
    if variant.smoke:
        config_lib.smoke(c)
        c.train.init_from = ""
        c.method.update(dict(tangent_warmup=10, teacher="runs/trigflow_digits_smoke"))
    return c
