"""Shortcut model on CelebA-HQ 256 (unconditional), Frans et al. 2024, Table 1/2 and the official code.

Target FID-50k (128 / 4 / 1 steps): 6.9 / 13.8 / 20.5 with DiT-B/2.
DiT-B/2 on 32x32x4 latents of the Stable Diffusion VAE (sd-vae-ft-mse, scaled by 0.18215);
AdamW 1e-4 (0.9, 0.999), weight decay 0.1, constant lr, no clipping; EMA 0.999 every step;
batch 64; 410k iterations; bf16 compute; bootstrap fraction 1/4 (the paper; the code's default
is 1/8: --config.method.bootstrap_every=8); M = 128.

  python -m fewstep_jax.main --config=configs/shortcut_celebahq256.py --workdir=runs/shortcut_celebahq256

Data: VAE latents of CelebA-HQ 256 (sd-vae-ft-mse), prepared once from latent shards with
`python -m fewstep_jax.data.prepare --dataset=celebahq256_latents --manual_dir=DIR --latent_scale=0.18215`.
Training writes sample grids of the latents (channels 0-2); FID needs the images decoded by
the VAE, which is not part of the suite, so train.eval_every = 0.
Variants: `:smoke`.
"""

import ml_collections

from fewstep_jax import config_lib


def get_config(arg: str | None = None):
    variant = config_lib.parse_variant(arg, ("smoke",))
    c = config_lib.base_config()
    c.data = ml_collections.ConfigDict(
        dict(name="celebahq256_latents", conditional=False, latent_scale=0.18215, data_dir="")
    )
    c.model = ml_collections.ConfigDict(dict(name="dit", size="B", patch=2, use_d=True, dtype="bfloat16"))
    c.method = ml_collections.ConfigDict(
        dict(name="shortcut", num_steps_max=128, bootstrap_every=4, label_dropout=0.0, cfg_scale=1.0)
    )
    c.optim.update(dict(name="adamw", lr=1e-4, b1=0.9, b2=0.999, weight_decay=0.1, schedule="constant"))
    c.train.update(
        dict(
            num_steps=410_000,
            batch_size=64,
            ema_decays=(0.999,),
            log_every=100,
            checkpoint_every=10_000,
            sample_every=10_000,
            eval_every=0,  # FID needs decoded images; the VAE decoder is not in the suite
        )
    )
    c.eval.update(dict(sampler="euler", nfes=(1, 4, 128), num_samples=50_000))
    if variant == "smoke":
        config_lib.smoke(c)
        c.model.update(dict(hidden=64, depth=2, num_heads=4))
        c.train.eval_every = 0
    return c
