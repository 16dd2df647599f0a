"""Shortcut model (Frans et al. 2024) on digits, with the data, network and budget of
configs/flow_digits.py: the network also takes the step-size level (model.use_d).

Paper settings kept: 1/4 of each batch bootstraps, M = 128 smallest steps, targets from
the EMA network, label dropout 0.1 on flow rows, no baked-in guidance (cfg_scale = 1).
The EMA decay is 0.99 instead of the paper's 0.999 (at 400k+ steps). Each step-size level
learns from EMA targets of the next finer one, so the lag compounds over the 7 levels; at
0.995 (the flow baseline's EMA) the coarse levels had not caught up after 1,200 steps
(1-step fd 589 while 128 steps reached 2.35).

  python -m fewstep_jax.main --config=configs/shortcut_digits.py --workdir=runs/shortcut_digits
  python -m fewstep_jax.main --config=configs/shortcut_digits.py --workdir=runs/shortcut_digits \
      --mode=eval --config.eval.nfes='(1,2,4,8,16,32,64,128)'

Variants: `:smoke` (seconds on a CPU).
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants()


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.digits()
    c.model.use_d = True
    c.method = recipes.shortcut(label_dropout=0.1)
    c.train.ema_decays = (0.99,)
    c.eval.nfes = (1, 2, 4, 8, 128)
    if variant.smoke:
        config_lib.smoke(c)
    return c
