"""sCD (sCM continuous-time consistency distillation, Lu & Song 2024, Alg. 1) on digits.

The teacher is the TrigFlow run of configs/trigflow_digits.py (its EMA, in eval
mode); the student starts from the same weights (the paper's recipe) and trains
with dropout 0. Everything else as configs/scm_sct_digits.py.

  python -m fewstep_jax.main --config=configs/trigflow_digits.py --workdir=runs/trigflow_digits
  python -m fewstep_jax.main --config=configs/scm_scd_digits.py --workdir=runs/scm_scd_digits

Variants: `:smoke` (needs a teacher: --config.method.teacher=DIR).
"""

from fewstep_jax import config_lib


def get_config(arg: str | None = None):
    variant = config_lib.parse_variant(arg, ("smoke",))
    c = config_lib.load_sibling(__file__, "scm_sct_digits", arg)
    c.method.name = "scm_scd"
    c.method.teacher = "runs/trigflow_digits"
    c.model.dropout = 0.0
    if variant == "smoke":
        c.method.teacher = "runs/trigflow_digits_smoke"
    return c
