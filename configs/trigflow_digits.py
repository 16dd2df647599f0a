"""TrigFlow diffusion teacher on sklearn digits (8x8, 10 classes, embedded).

The teacher / baseline every few-step method on digits is compared with
(sCM sec. 3: TrigFlow parameterization, EDM2 learned loss weighting).

  python -m fewstep_jax.main --config=configs/trigflow_digits.py --workdir=runs/trigflow_digits
  python -m fewstep_jax.main --config=configs/trigflow_digits.py --workdir=runs/trigflow_digits \
      --mode=eval --config.eval.sampler=heun --config.eval.nfes='(1,2,4,8,16)'

Variants: `:smoke` (seconds on a CPU, for tests).
Metric: Frechet distance in the features of the suite's digits classifier (fd),
reported next to the real-data floor (docs/RESULTS.md).
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants()


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.digits()
    c.method = recipes.trigflow(label_dropout=0.1)
    if variant.smoke:
        config_lib.smoke(c)
    return c
