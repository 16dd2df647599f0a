"""EDM diffusion (Karras et al. 2022) on sklearn digits: the pretrained model ECT and SCT tune from.

Same data, network, optimizer and budget as the TrigFlow teacher (configs/trigflow_digits.py);
EDM's preconditioning (c_noise = ln(sigma) / 4), proposal ln sigma ~ N(-1.2, 1.2^2) and loss
weighting (Karras et al. 2022, Table 1). ECT / SCT initialize from its EMA (train.init_from).

  python -m fewstep_jax.main --config=configs/edm_digits.py --workdir=runs/edm_digits
  python -m fewstep_jax.main --config=configs/edm_digits.py:uncond --workdir=runs/edm_digits_uncond
  python -m fewstep_jax.main --config=configs/edm_digits.py --workdir=runs/edm_digits \
      --mode=eval --config.eval.sampler=heun --config.eval.nfes='(4,8,16)'

Variants: `:uncond` (no labels, the teacher of the unconditional ECT / SCT runs), `:smoke`.
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants(options=("uncond",))


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.digits(conditional=variant.name != "uncond")
    c.method = recipes.edm(label_dropout=0.1)
    if variant.smoke:
        config_lib.smoke(c)
    return c
