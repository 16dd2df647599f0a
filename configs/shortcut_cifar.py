"""Shortcut model on CIFAR-10 (unconditional). The paper reports no CIFAR-10 result: this config
pairs the paper's training recipe (AdamW 1e-4, weight decay 0.1, EMA 0.999, bootstrap 1/4,
M = 128) with the suite's CIFAR network (DDPM++ as in configs/trigflow_cifar.py, taking the
step-size level as its second conditioning input).

  python -m fewstep_jax.main --config=configs/shortcut_cifar.py --workdir=runs/shortcut_cifar

Data: CIFAR-10, prepared once with `python -m fewstep_jax.data.prepare --dataset=cifar10 --download`.
Variants: `:smoke`.
"""

import ml_collections

from fewstep_jax import config_lib


def get_config(arg: str | None = None):
    config_lib.parse_variant(arg, ("smoke",))
    c = config_lib.load_sibling(__file__, "trigflow_cifar", arg)
    c.model.use_d = True
    c.model.dropout = 0.0
    c.method = ml_collections.ConfigDict(
        dict(name="shortcut", num_steps_max=128, bootstrap_every=4, label_dropout=0.0, cfg_scale=1.0)
    )
    c.optim.update(dict(name="adamw", lr=1e-4, b1=0.9, b2=0.999, weight_decay=0.1, schedule="constant"))
    c.train.update(dict(batch_size=128, ema_decays=(0.999,), ema_halflives=()))
    c.eval.update(dict(sampler="euler", nfes=(1, 2, 4, 8, 128)))
    return c
