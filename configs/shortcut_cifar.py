"""Shortcut model on CIFAR-10 (unconditional). The paper reports no CIFAR-10 result: this config
pairs the paper's training recipe (AdamW 1e-4, weight decay 0.1, EMA 0.999, bootstrap 1/4,
M = 128) with the suite's CIFAR network (DDPM++ as in configs/trigflow_cifar.py, taking the
step-size level as its second conditioning input).

  python -m fewstep_jax.main --config=configs/shortcut_cifar.py --workdir=runs/shortcut_cifar

Data: CIFAR-10, prepared once with `python -m fewstep_jax.data.prepare --dataset=cifar10 --download`.
Variants: `:smoke`.
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants()


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.cifar10()
    c.model.update(dict(use_d=True, dropout=0.0))
    c.method = recipes.shortcut()
    recipes.shortcut_training(c)
    c.train.batch_size = 128
    c.eval.update(dict(sampler="euler", nfes=(1, 2, 4, 8, 128)))
    if variant.smoke:
        config_lib.smoke(c)
    return c
