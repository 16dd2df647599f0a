"""TrigFlow teacher on CIFAR-10 (unconditional), sCM (Lu & Song 2024) App. G.

Target: FID 2.15 with the 2nd-order sampler at 18 steps (NFE 35), sCM Table 1.
Network: EDM's DDPM++ exactly (config_lib.ddpmpp_unet: 128 channels, multipliers
[2, 2, 2], 4 blocks per resolution, attention at 16x16, resampling residual blocks;
55.7M parameters) with the sCM changes (c_noise = t with a positional embedding,
adaptive double normalization, sec. 4.1: 60.1M); dropout 0.13; Adam 1e-3
(0.9, 0.999); batch 512; 400k iterations; EMA half-life 0.5 Mimg.
The teacher's time proposal is not listed in App. G: the CM proposal P(-1.0, 1.4) is used.

  python -m fewstep_jax.main --config=configs/trigflow_cifar.py --workdir=runs/trigflow_cifar

Data: CIFAR-10, prepared once with `python -m fewstep_jax.data.prepare --dataset=cifar10 --download`.
Variants: `:smoke`.
"""

import ml_collections

from fewstep_jax import config_lib


def get_config(arg: str | None = None):
    variant = config_lib.parse_variant(arg, ("smoke",))
    c = config_lib.base_config()
    c.data = ml_collections.ConfigDict(dict(name="cifar10", conditional=False, data_dir=""))
    c.model = config_lib.ddpmpp_unet(dropout=0.13, emb_norm="adaptive_double")
    c.method = ml_collections.ConfigDict(
        dict(name="trigflow", sigma_d=0.5, p_mean=-1.0, p_std=1.4, learned_weighting=True, label_dropout=0.0)
    )
    c.optim.update(dict(name="adam", lr=1e-3, b1=0.9, b2=0.999, schedule="constant"))
    c.train.update(
        dict(
            num_steps=400_000,
            batch_size=512,
            ema_decays=(),
            ema_halflives=(500_000.0,),
            log_every=100,
            checkpoint_every=10_000,
            sample_every=10_000,
            eval_every=50_000,
        )
    )
    c.eval.update(dict(sampler="heun", nfes=(18,), num_samples=50_000))
    if variant == "smoke":
        config_lib.smoke(c)
    return c
