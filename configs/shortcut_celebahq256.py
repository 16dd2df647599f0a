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

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants()


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.shortcut_latents("celebahq256_latents", conditional=False)
    if variant.smoke:
        config_lib.smoke(c)
    return c
