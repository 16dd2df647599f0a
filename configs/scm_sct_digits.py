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

from fewstep_jax import config_lib

TEACHER = "runs/trigflow_digits"


def get_config(arg: str | None = None):
    variant = config_lib.parse_variant(arg, ("smoke",))
    c = config_lib.load_sibling(__file__, "trigflow_digits", arg)  # same data and network
    c.method = config_lib.scm_method("scm_sct", tangent_warmup=200)  # H scaled to the short run
    c.optim.name = "radam"
    c.optim.lr = 2e-4
    c.optim.b2 = 0.99
    c.optim.schedule = "constant"
    c.optim.warmup_steps = 0
    c.train.init_from = TEACHER
    c.eval.nfes = (1, 2, 4)
    if variant == "smoke":
        c.train.init_from = ""
        c.method.tangent_warmup = 10
        c.eval.nfes = (1, 2)
    return c
