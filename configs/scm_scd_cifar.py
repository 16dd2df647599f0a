"""sCD on CIFAR-10 (unconditional), sCM (Lu & Song 2024) App. G.

Target: FID 3.66 (1 step) / 2.52 (2 steps), sCM Table 1.
As configs/scm_sct_cifar.py with dropout 0 and dx_t/dt from the TrigFlow teacher
(its EMA in eval mode); the student starts from the teacher's weights.

  python -m fewstep_jax.main --config=configs/scm_scd_cifar.py --workdir=runs/scm_scd_cifar

Data: CIFAR-10, prepared once with `python -m fewstep_jax.data.prepare --dataset=cifar10 --download`.
Variants: `:smoke`.
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants()


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.scm_cifar10()
    c.model.dropout = 0.0
    c.method.update(dict(name="scm_scd", teacher="runs/trigflow_cifar"))
    if variant.smoke:
        config_lib.smoke(c)
    return c
