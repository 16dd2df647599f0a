"""Decoupled MeanFlow (Lee, Yu, Shin 2025; t = 1 noise) on sklearn digits: the flow-matching UNet
of configs/flow_digits.py turned into a flow map (its first 6 of 8 conditioned ResBlocks see t,
the last 2 decoder blocks see r, about the paper's 20 of 28), fine-tuned from that run's EMA
(train.init_from) for the same 1,200-step budget and batch.

Method: recipes.dmf (the official script's values, label dropout 0.1) without model guidance,
because the digits comparison samples every method unguided (--config.method.guidance_omega=0.6
--config.method.guidance_t_max=0.7 is the paper's ImageNet-256 guidance). Optimizer: constant
Adam 2e-4 with gradient clipping at 1 (recipes.flow_map_tuning).

  python -m fewstep_jax.main --config=configs/flow_digits.py --workdir=runs/flow_digits
  python -m fewstep_jax.main --config=configs/dmf_digits.py --workdir=runs/dmf_digits

Variants: `:meanflow` (the paper's ablation "MF": the same base network and losses with MeanFlow's
conditioning, every layer sees E(1 - t) + E_h(t - r), E_h a new zero-initialized embedder),
`:smoke` (seconds on a CPU; from scratch).
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants(options=("meanflow",))


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.digits()
    c.method = recipes.dmf(split=6)
    recipes.flow_map_tuning(c, lr=2e-4)
    c.train.init_from = "runs/flow_digits"
    c.eval.nfes = (1, 2, 4)
    if variant.name == "meanflow":
        c.method.conditioning = "interval"
    if variant.smoke:
        config_lib.smoke(c)
        c.train.init_from = ""
    return c
