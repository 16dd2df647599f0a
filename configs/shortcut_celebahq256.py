"""Shortcut model on CelebA-HQ 256 (unconditional), Frans et al. 2024, Table 1/2 and the official code.

Target FID-50k (128 / 4 / 1 steps): 6.9 / 13.8 / 20.5 with DiT-B/2.
DiT-B/2 on 32x32x4 latents of the Stable Diffusion VAE (sd-vae-ft-mse, scaled by 0.18215);
AdamW 1e-4 (0.9, 0.999), weight decay 0.1, constant lr, no clipping; EMA 0.999 every step;
batch 64; 410k iterations; bf16 compute; bootstrap fraction 1/4 (the paper; the code's default
is 1/8: --config.method.bootstrap_every=8); M = 128.

  python -m fewstep_jax.main --config=configs/shortcut_celebahq256.py --workdir=runs/shortcut_celebahq256

Data: CelebA-HQ 256 as sd-vae-ft-mse latents (preset sd: x 0.18215) with the moments of mirrored
images too (the code flips pixels at random), prepared once with

    python -m fewstep_jax.data.prepare --dataset=celebahq256_latents --manual_dir=IMAGES \\
        --vae_weights=VAE --latent_preset=sd --flip

Grids and FID / FD-DINOv2 decode with the ft-MSE decoder:
--config.eval.vae_weights=PATH/sd-vae-ft-mse/diffusion_pytorch_model.safetensors (docs/LATENTS.md).
Variants: `:smoke`.
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants()


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.shortcut_latents("celebahq256_latents", conditional=False)
    c.data.latent_flips = True
    if variant.smoke:
        recipes.latent_smoke(c)
    return c
