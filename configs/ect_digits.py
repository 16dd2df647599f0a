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

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants(options=("uncond", "scratch"))


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.ect_digits(conditional=variant.name != "uncond", scratch=variant.name == "scratch")
    if variant.smoke:  # from scratch, with the tuning schedule
        config_lib.smoke(c)
        c.train.init_from = ""
        c.method.stage_length = 10
    return c
