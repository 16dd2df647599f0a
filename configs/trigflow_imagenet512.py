"""TrigFlow teacher on class-conditional ImageNet 512x512 in latent space, sCM (Lu & Song 2024) App. G.

Target: FID-50k 1.73 (XXL, 2nd-order sampler, NFE 126), sCM Table 3.
Network: EDM2 (Karras et al. 2024) sizes S/M/L/XL/XXL = 192/256/320/384/448 channels on the
64x64x4 latents of the Stable Diffusion VAE under sCM's preset (data.latent_preset='scm':
per-channel statistics of App. G.1, data std 0.5), c_noise = t and EDM2's log-variance head.
Training: Adam (0.9, 0.99), eps 1e-11, lr 1e-2 / 9e-3 / 8e-3 / 7e-3 / 6.5e-3 with inverse-square-root
decay from t_ref = 70k iterations, proposal P(-0.4, 1.0), label dropout 0.1, batch 2048, EDM2's
power EMA sigma_rel 0.05. FID and FD-DINOv2 decode with sd-vae-ft-mse.

  python -m fewstep_jax.data.prepare --dataset=imagenet512_latents --manual_dir=IMAGENET \\
      --vae_weights=PATH/sd-vae-ft-mse/diffusion_pytorch_model.safetensors --latent_preset=scm
  python -m fewstep_jax.main --config=configs/trigflow_imagenet512.py:xxl --workdir=runs/trigflow_imagenet512_xxl \\
      --config.eval.vae_weights=PATH/sd-vae-ft-mse/diffusion_pytorch_model.safetensors

Variants: `:s` (default), `:m`, `:l`, `:xl`, `:xxl`, `:smoke`.
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants(sizes=("s", "m", "l", "xl", "xxl"))


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.imagenet512(variant.size)
    c.method = recipes.trigflow(p_mean=-0.4, p_std=1.0, label_dropout=0.1, logvar_form="mp_fourier")
    c.train.num_steps = 400_000
    if variant.smoke:
        recipes.latent_smoke(c)
    return c
