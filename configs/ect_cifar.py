"""ECT (Geng et al. 2024) on CIFAR-10, unconditional: the official code's CIFAR-10 recipe.

Target (FID-50k, 1-step / 2-step, ECT Table 1 and sec. 5): 100k iterations 4.54 / 2.20,
200k 3.86 / 2.15, 400k 3.60 / 2.11. Tuned from the EMA of the EDM model
(configs/edm_cifar.py); batch 128, RAdam lr 1e-4 (0.9, 0.999), dropout 0.2, EMA 0.9999,
proposal P(-1.1, 2.0), sigmoid mapping q = 2, k = 8, b = 1, d = 25k iterations per stage with
the code's q^(stage + 1), weighting 1 / (t - r), pseudo-Huber c = 0 (the L2 norm), eval-mode
sigma_min shift 0.003, 2-step intermediate t = 0.821.

  python -m fewstep_jax.main --config=configs/edm_cifar.py --workdir=runs/edm_cifar
  python -m fewstep_jax.main --config=configs/ect_cifar.py --workdir=runs/ect_cifar

Data: CIFAR-10, prepared once with `python -m fewstep_jax.data.prepare --dataset=cifar10 --download`.
Variants: `:cond`, `:smoke`.
"""

import ml_collections

from fewstep_jax import config_lib

ECT_CIFAR = dict(
    sigma_d=0.5,
    p_mean=-1.1,
    p_std=2.0,
    mapping="stages",
    q=2.0,
    stage_length=25_000,
    k=8.0,
    b=1.0,
    stage_offset=1,
    huber_c=0.0,
    weighting="inv_dt",
    sigma_min_shift=0.003,
    t_mid=0.821,
    label_dropout=0.0,
)


def get_config(arg: str | None = None):
    variant = config_lib.parse_variant(arg, ("cond", "smoke"))
    c = config_lib.load_sibling(__file__, "edm_cifar", arg)
    c.model.dropout = 0.2
    c.method = ml_collections.ConfigDict(dict(name="ect", **ECT_CIFAR))
    c.optim.update(dict(name="radam", lr=1e-4, b1=0.9, b2=0.999, schedule="constant", warmup_steps=0))
    c.train.update(dict(num_steps=400_000, batch_size=128, ema_decays=(0.9999,), ema_halflives=()))
    c.train.init_from = "runs/edm_cifar" + ("_cond" if variant == "cond" else "")
    c.eval.update(dict(sampler="euler", nfes=(1, 2)))
    if variant == "smoke":
        config_lib.smoke(c)
        c.train.init_from = ""
    return c
