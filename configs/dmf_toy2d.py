"""Decoupled MeanFlow (Lee, Yu, Shin 2025; t = 1 noise) on a 2-D toy distribution: the
flow-matching MLP of configs/flow_toy2d.py turned into a flow map by decoupling its time
conditioning (the first 3 of its 4 conditioned layers see t, the last sees r), fine-tuned from
that run's EMA (train.init_from) for the same 3,000-step budget.

Method: the official training script's values (recipes.dmf: FM + MF branches, learned
log-variance, logit-normal times (0, 1) / (0.4, 1) / (-1.2, 1)); unconditional, so no model
guidance. Optimizer: constant Adam 2e-4 with DMF's gradient clipping at 1 (recipes.flow_map_tuning).

  python -m fewstep_jax.main --config=configs/flow_toy2d.py --workdir=runs/flow_toy2d
  python -m fewstep_jax.main --config=configs/dmf_toy2d.py --workdir=runs/dmf_toy2d

Variants: `:meanflow` (the paper's ablation "MF": the same base network and losses with MeanFlow's
conditioning, every layer sees E(1 - t) + E_h(t - r), E_h a new zero-initialized embedder),
`:smoke` (seconds on a CPU; from scratch).
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants(options=("meanflow",))


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.toy2d("checkerboard")
    c.method = recipes.dmf(split=3, label_dropout=0.0)
    recipes.flow_map_tuning(c, lr=2e-4)
    c.train.init_from = "runs/flow_toy2d"
    c.eval.nfes = (1, 2, 4, 8)
    if variant.name == "meanflow":
        c.method.conditioning = "interval"
    if variant.smoke:
        config_lib.smoke(c)
        c.method.split = 1  # the smoke MLP has 2 conditioned layers
        c.train.init_from = ""
    return c
