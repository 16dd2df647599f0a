"""improved MeanFlow (Geng et al. 2025; t = 1 noise) on a 2-D toy distribution, with the data,
network and budget of configs/flow_toy2d.py. The MLP is wrapped with iMF's guidance inputs and its
auxiliary velocity head is a second copy of the MLP (models/flowmap_nets.GuidanceInputs); the
network's time input receives the interval h = t - r (the code conditions on h only).

Method: the official code's recipe (recipes.imf): v-loss with the v-head's velocity as the jvp
tangent, half the rows r = t, adaptive weight p = 1, c = 0.01; the data is unconditional, so no
guidance (omega_max = 1) and no label dropout.

  python -m fewstep_jax.main --config=configs/imf_toy2d.py --workdir=runs/imf_toy2d

Variants: `:smoke` (seconds on a CPU).
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants()


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.toy2d("checkerboard")
    c.method = recipes.imf(omega_max=1.0, label_dropout=0.0)
    c.eval.nfes = (1, 2, 4, 8)
    if variant.smoke:
        config_lib.smoke(c)
    return c
