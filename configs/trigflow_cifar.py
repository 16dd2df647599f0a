"""TrigFlow teacher on CIFAR-10 (unconditional), sCM (Lu & Song 2024) App. G.

Target: FID 2.15 with the 2nd-order sampler at 18 steps (NFE 35), sCM Table 1.
Network: EDM's DDPM++ exactly (recipes.ddpmpp_unet: 128 channels, multipliers
[2, 2, 2], 4 blocks per resolution, attention at 16x16, resampling residual blocks;
55.7M parameters) with the sCM changes (c_noise = t with a positional embedding,
adaptive double normalization, sec. 4.1: 60.1M); dropout 0.13; Adam 1e-3
(0.9, 0.999); batch 512; 400k iterations; EMA half-life 0.5 Mimg.
The teacher's time proposal is not listed in App. G: the CM proposal P(-1.0, 1.4) is used.

  python -m fewstep_jax.main --config=configs/trigflow_cifar.py --workdir=runs/trigflow_cifar

Data: CIFAR-10, prepared once with `python -m fewstep_jax.data.prepare --dataset=cifar10 --download`.
Variants: `:smoke`.
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants()


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.cifar10()
    c.method = recipes.trigflow()
    if variant.smoke:
        config_lib.smoke(c)
    return c
