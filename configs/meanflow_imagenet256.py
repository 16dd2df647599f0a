"""MeanFlow on class-conditional ImageNet 256 (latent DiT), Geng et al. 2025, Tables 1-2 and the
official JAX code (Gsunshine/meanflow, configs/default.py, run_b4.yml).

1-NFE FID-50k (paper, all from scratch, 240 epochs, CFG folded into training):
  | model   | 1-NFE | 2-NFE |
  | B/2     | 6.17  |       |
  | M/2     | 5.01  |       |
  | L/2     | 3.84  |       |
  | XL/2    | 3.43  | 2.93  |
  | XL/2+   |       | 2.20 (1000 epochs) |
  (same table: Shortcut-XL/2 10.60, iCT-XL/2 34.24, IMM-XL/2 7.77)
Ablations (DiT-B/4, 80 epochs = 400k steps, 1-NFE): no CFG 61.06; tangent (v, 0, 1) 61.06 vs wrong
tangents 137-329; share of r != t 0% 328.9, 25% 61.06, 100% 67.3; adaptive p = 0 79.75,
0.5 63.98, 1.0 61.06. With CFG omega = 1.0, kappa = 0.5 (effective scale 2.0): 19.15 at 80 epochs,
11.35 at 240 epochs (official repo README, B/4).

Shared recipe: latents 32x32x4 (sd-vae-ft-mse, scaled by 0.18215); t, r ~ logit-normal(-0.4, 1.0),
sorted (t = max, r = min); 25% of rows with r != t (the code's data_proportion = 0.75 is the
share with r = t); class dropout 0.1 on the first rows of the batch, which are r = t rows (the
code's cond_drop: a Binomial(batch, 0.1) count); adaptive weight p = 1.0, c = 0.01; Adam lr 1e-4 constant,
betas (0.9, 0.95), no weight decay; batch 256; EMA 0.9999; float32 (the code's default,
half_precision False); the DiT conditions on t and h = t - r (model.use_d).

Variants:
  `:b4` (default) DiT-B/4, omega 1.0, kappa 0.5, CFG interval [0, 1], 80 epochs (400k steps),
        target 1-NFE FID 19.15 (61.06 with --config.method.cfg_omega=1 --config.method.cfg_kappa=0).
  `:xl` DiT-XL/2, 240 epochs (1.2M steps), target 1-NFE 3.43, 2-NFE 2.93; omega 0.2, kappa 0.92
        (effective scale 2.5), CFG interval [0, 0.75]: the paper's appendix configuration table
        as we read it (a third-party reproduction uses the same omega, kappa with [0, 0.8] for L/2);
        check it against the paper before a long run.
  `:smoke` seconds on a CPU.

  python -m fewstep_jax.main --config=configs/meanflow_imagenet256.py:b4 --workdir=runs/meanflow_imagenet256_b4
  python -m fewstep_jax.main --config=configs/meanflow_imagenet256.py:xl --workdir=runs/meanflow_imagenet256_xl

Data: ImageNet 256 as sd-vae-ft-mse latents (preset sd: x 0.18215), ADM center crop, no flips
(the code's use_flip is unused), prepared once with

    python -m fewstep_jax.data.prepare --dataset=imagenet256_latents --manual_dir=IMAGENET \\
        --vae_weights=VAE --latent_preset=sd
or from the (mean, std) store of the official code or EDM2's dataset_tool (--manual_dir=STORE).
Grids and FID / FD-DINOv2 decode with the ft-MSE decoder (the code's default):
--config.eval.vae_weights=PATH/sd-vae-ft-mse/diffusion_pytorch_model.safetensors (docs/LATENTS.md).
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants(sizes=("b4", "xl"))

STEPS_PER_EPOCH = 1_281_167 // 256  # ImageNet-1k train images at batch 256


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    xl = variant.size == "xl"
    c = recipes.latents("imagenet256_latents", conditional=True)
    c.model = recipes.dit("XL", 2, "float32") if xl else recipes.dit("B", 4, "float32")
    c.method = recipes.meanflow_imagenet256()
    if xl:
        c.method.update(dict(cfg_omega=0.2, cfg_kappa=0.92, cfg_t_end=0.75))
    c.optim.update(dict(name="adam", lr=1e-4, b1=0.9, b2=0.95, weight_decay=0.0, schedule="constant"))
    epochs = 240 if xl else 80
    c.train.update(dict(num_steps=epochs * STEPS_PER_EPOCH, batch_size=256, ema_decays=(0.9999,)))
    c.eval.nfes = (1, 2)
    c.data.latent_flips = False
    if variant.smoke:
        recipes.latent_smoke(c)
    return c
