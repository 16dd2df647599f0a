"""Shortcut model on class-conditional ImageNet 256, Frans et al. 2024, Table 2 and the official code.

Targets FID-50k (128 / 4 / 1 steps): DiT-B/2 15.5 / 28.3 / 40.3; DiT-XL/2 3.8 / 7.8 / 10.6.
Latents 32x32x4 (sd-vae-ft-mse, scaled by 0.18215); AdamW 1e-4, weight decay 0.1, constant lr;
EMA 0.999; batch 256; 810k iterations; bf16; label dropout 0.1 on flow rows; guidance
w = 1.5 baked into the finest bootstrap level (and applied at sampling only at 128 steps).
Evaluation and sample grids at 1, 4 and 128 steps with eval.guidance = 1.5: the 128-step (flow
level) samples use 1.5, the 1- and 4-step samples 1 (their guidance comes from training); the
results table records the scale of each row (methods/shortcut.py, sampling_guidance).

  python -m fewstep_jax.main --config=configs/shortcut_imagenet256.py:xl --workdir=runs/shortcut_imagenet256_xl

Data: ImageNet 256 as sd-vae-ft-mse latents (preset sd: x 0.18215) with the moments of mirrored
images too (the code flips the pixels of each example at random), prepared once with

    python -m fewstep_jax.data.prepare --dataset=imagenet256_latents --manual_dir=IMAGENET \\
        --vae_weights=VAE --latent_preset=sd --flip

The paper's crop is a central square resized with antialiasing; the suite prepares ADM's center
crop (as DiT and MeanFlow). Grids and FID / FD-DINOv2 decode with the ft-MSE decoder (the code's
default): --config.eval.vae_weights=PATH/sd-vae-ft-mse/diffusion_pytorch_model.safetensors
(docs/LATENTS.md). The paper's FID used its own reference statistics and bilinear resizing to
299 of float images, so compare its figures with care.
Variants: `:b` (DiT-B/2, default), `:xl` (DiT-XL/2), `:smoke`.
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants(sizes=("b", "xl"))


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.shortcut_latents("imagenet256_latents", conditional=True, size=variant.size.upper())
    c.method.update(dict(label_dropout=0.1, cfg_scale=1.5))
    c.eval.guidance = 1.5  # at 128 steps only (Shortcut.sampling_guidance)
    c.train.update(dict(num_steps=810_000, batch_size=256))
    c.data.latent_flips = True
    if variant.smoke:
        recipes.latent_smoke(c)
    return c
