"""sCT on CIFAR-10 (unconditional), sCM (Lu & Song 2024) App. G.

Target: FID 2.85 (1 step) / 2.06 (2 steps), sCM Table 1.
Initialized from the TrigFlow teacher's EMA (configs/trigflow_cifar.py);
batch 512, RAdam 1e-4 (0.9, 0.99) without a schedule, proposal P(-1.0, 1.4),
dropout 0.20, tangent normalization c = 0.1, tangent warmup H = 10k, adaptive
weighting, t_mid = 1.1, EMA half-life 0.5 Mimg. The iteration count is not stated
in App. G; 400k follows the ECT-matched ablation (App. E.3).

  python -m fewstep_jax.main --config=configs/scm_sct_cifar.py --workdir=runs/scm_sct_cifar

Data: CIFAR-10, prepared once with `python -m fewstep_jax.data.prepare --dataset=cifar10 --download`.
Variants: `:smoke`.
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants()


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.scm_cifar10()
    if variant.smoke:
        config_lib.smoke(c)
    return c
