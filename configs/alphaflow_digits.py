"""alpha-Flow (Zhang et al. 2025; t = 1 noise) on sklearn digits, with the data, network,
optimizer and 1,200-step budget of configs/flow_digits.py (the UNet also takes h = t - r as `d`).

Method: the official code's B/2 recipe without CFG (recipes.alphaflow: half the rows r = t,
logit-normal(-0.4, 1) times, targets clipped at 4, weight / (sg(l) + 1e-3)), the alpha curriculum
over the whole run; no guidance and no label dropout (the digits comparison samples unguided).

  python -m fewstep_jax.main --config=configs/alphaflow_digits.py --workdir=runs/alphaflow_digits

Variants: `:smoke` (seconds on a CPU).
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants()


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.digits()
    c.model.use_d = True
    c.method = recipes.alphaflow(alpha_end=c.train.num_steps)
    c.eval.nfes = (1, 2, 4)
    if variant.smoke:
        config_lib.smoke(c)
        c.method.alpha_end = c.train.num_steps
    return c
