"""ECT (Easy Consistency Tuning, Geng et al. 2024) on sklearn digits, tuned from the EDM model.

The CIFAR-10 recipe scaled to the digits budget: initialize from the EMA of
configs/edm_digits.py, RAdam, batch 128, proposal P(-1.1, 2.0), the sigmoid mapping with
q = 2 and stages of d iterations (8 stages, as 200k / 25k on CIFAR-10), the official code's
q^(stage + 1), weighting 1 / (t - r), pseudo-Huber c = 0, 2-step t_mid = 0.821. Same network
and 1,200-step budget as the teacher.

  python -m fewstep_jax.main --config=configs/edm_digits.py --workdir=runs/edm_digits
  python -m fewstep_jax.main --config=configs/ect_digits.py --workdir=runs/ect_digits

Variants: `:uncond` (tunes runs/edm_digits_uncond); `:scratch` (no pretrained model: the
paper's q^stage mapping, whose stage 0 is diffusion training, with the teacher's optimizer);
`:smoke` (from scratch, seconds on a CPU).
"""

from fewstep_jax import config_lib

TEACHER = "runs/edm_digits"


def get_config(arg: str | None = None):
    variant = config_lib.parse_variant(arg, ("uncond", "scratch", "smoke"))
    c = config_lib.load_sibling(__file__, "edm_digits", arg if variant != "scratch" else None)
    # ECT's CIFAR-10 method settings, with 8 stages over 1,200 steps and no eval shift.
    c.method = config_lib.load_sibling(__file__, "ect_cifar").method
    c.method.update(dict(stage_length=150, sigma_min_shift=0.0))
    c.optim.update(dict(name="radam", lr=2e-4, b1=0.9, b2=0.999, schedule="constant", warmup_steps=0))
    c.train.init_from = TEACHER + ("_uncond" if variant == "uncond" else "")
    c.eval.nfes = (1, 2, 4)
    if variant == "scratch":
        c.train.init_from = ""
        c.method.stage_offset = 0
        c.optim.update(dict(name="adam", lr=2e-3, schedule="cosine", end_factor=0.1, warmup_steps=100))
    if variant == "smoke":
        c.train.init_from = ""
        c.method.stage_length = 10
        c.eval.nfes = (1, 2)
    return c
