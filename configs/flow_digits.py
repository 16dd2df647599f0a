"""Flow matching (rectified flow; t = 0 noise, t = 1 data) on sklearn digits.

The plain flow-matching baseline of the shortcut and MeanFlow papers, with the
same data, network, optimizer and budget as configs/trigflow_digits.py.

  python -m fewstep_jax.main --config=configs/flow_digits.py --workdir=runs/flow_digits

Variants: `:smoke` (seconds on a CPU, for tests).
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants()


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.digits()
    c.method = recipes.flow(label_dropout=0.1)
    if variant.smoke:
        config_lib.smoke(c)
    return c
