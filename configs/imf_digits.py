"""improved MeanFlow (Geng et al. 2025; t = 1 noise) on sklearn digits, with the data, network,
optimizer and 1,200-step budget of configs/flow_digits.py. The UNet is wrapped with iMF's guidance
inputs; its auxiliary velocity head is a second copy of the UNet (models/flowmap_nets.GuidanceInputs)
and its time input receives h = t - r.

Method: the official code's recipe (recipes.imf: v-loss, v-head tangent, half the rows r = t,
class dropout 0.1 on the first rows, p = 1, c = 0.01) without guidance in training (omega_max = 1),
as configs/meanflow_digits.py, because the digits comparison samples every method unguided. The
paper's guided training is --config.method.omega_max=8 with --config.eval.guidance=W at sampling
(omega is a network input; one network call per step).

  python -m fewstep_jax.main --config=configs/imf_digits.py --workdir=runs/imf_digits

Variants: `:smoke` (seconds on a CPU).
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants()


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.digits()
    c.method = recipes.imf(omega_max=1.0)
    c.eval.nfes = (1, 2, 4)
    if variant.smoke:
        config_lib.smoke(c)
    return c
