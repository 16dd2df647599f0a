"""sCT (sCM continuous-time consistency training, Lu & Song 2024, Alg. 1) on digits.

Recipe of the paper (App. G), scaled to digits: initialize from the EMA of the
TrigFlow teacher (configs/trigflow_digits.py), RAdam (0.9, 0.99), proposal
P(-1.0, 1.4), tangent normalization c = 0.1, adaptive weighting, 2-step
sampling with t_mid = 1.1. Same network and step budget as the teacher; the
tangent warmup H is scaled from 10k of 400k steps to the shorter run.

  python -m fewstep_jax.main --config=configs/trigflow_digits.py --workdir=runs/trigflow_digits
  python -m fewstep_jax.main --config=configs/scm_sct_digits.py --workdir=runs/scm_sct_digits

Variants: `:smoke` (from scratch, seconds on a CPU).
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants()


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.scm_digits()
    if variant.smoke:
        config_lib.smoke(c)
        c.train.init_from = ""
        c.method.tangent_warmup = 10
    return c
