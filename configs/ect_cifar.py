"""ECT (Geng et al. 2024) on CIFAR-10, unconditional: the official code's CIFAR-10 recipe.

Target (FID-50k, 1-step / 2-step, ECT Table 1 and sec. 5): 100k iterations 4.54 / 2.20,
200k 3.86 / 2.15, 400k 3.60 / 2.11. Tuned from the EMA of the EDM model
(configs/edm_cifar.py); batch 128, RAdam lr 1e-4 (0.9, 0.999), dropout 0.2, EMA 0.9999,
proposal P(-1.1, 2.0), sigmoid mapping q = 2, k = 8, b = 1, d = 25k iterations per stage with
the code's q^(stage + 1), weighting 1 / (t - r), pseudo-Huber c = 0 (the L2 norm), eval-mode
sigma_min shift 0.003, 2-step intermediate t = 0.821.

  python -m fewstep_jax.main --config=configs/edm_cifar.py --workdir=runs/edm_cifar
  python -m fewstep_jax.main --config=configs/ect_cifar.py --workdir=runs/ect_cifar

or, as the paper, from NVlabs' released EDM model instead of training it (train.init_from takes
the file, or the folder `python -m fewstep_jax.models.import_weights` writes; docs/PRETRAINED.md):
https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-cifar10-32x32-uncond-vp.pkl
(`:cond`: edm-cifar10-32x32-cond-vp.pkl)

  python -m fewstep_jax.main --config=configs/ect_cifar.py --workdir=runs/ect_cifar \
      --config.train.init_from=edm-cifar10-32x32-uncond-vp.pkl

Data: CIFAR-10, prepared once with `python -m fewstep_jax.data.prepare --dataset=cifar10 --download`.
Variants: `:cond`, `:smoke`.
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants(options=("cond",))


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.ect_cifar10(conditional=variant.name == "cond")
    if variant.smoke:
        config_lib.smoke(c)
        c.train.init_from = ""
    return c
