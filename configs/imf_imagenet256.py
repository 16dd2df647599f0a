"""improved MeanFlow on class-conditional ImageNet 256 (latent), Geng et al. 2025 (arXiv 2512.02012),
sec. 5 and the official JAX code (Lyy-iiis/imeanflow: imf.py, models/imfDiT.py, train_config.yml).

1-NFE FID-50k (paper, from scratch, 640 epochs; omega and the interval are network inputs, tuned
at sampling time): B/2 3.39, M/2 2.27, L/2 1.86, XL/2 1.72; XL/2 2-NFE 1.54 (omega 4.0 on
[0.36, 0.64]: --config.eval.guidance=4.0 --config.method.sample_t_min=0.36 --config.method.sample_t_max=0.64).
MeanFlow's figures in the same table: B/2 6.17, XL/2 3.43.
Ablation (B/2, 240 epochs, FID with CFG): MeanFlow 6.17 -> v-loss with boundary v 5.97 -> aux
v-head 5.68 -> omega-conditioning 5.52 -> interval conditioning 4.57 -> in-context tokens 4.09
-> block changes 3.82 -> 640 epochs 3.39 (method.tangent='boundary' / v_head=False and the
omega_max=1 setting reproduce the early rows).
Network: the iMF DiT (models/imf_dit.py): B/2 12 blocks 768 wide (12 heads), M/2 24 x 768,
L/2 32 x 1024 (16 heads), XL/2 48 x 1024; the last 8 blocks are duplicated as the auxiliary v-head
(89M / 174M / 409M / 610M parameters at inference; 146M / 231M / 510M / 711M in training with
the v-head). Sampling: eval.guidance is omega (B/2 8.0 on [0.4, 0.65], M/2 and L/2 10.5 on
[0.4, 0.6], XL/2 8.0 on [0.42, 0.62]). The tuned 10.5 lies beyond the code's training range
[1, 8] (method.omega_max); the paper may train M/2 and L/2 with a larger range or another
omega_beta (unverified), so those two sizes extrapolate in omega here.
Training: latents under the 'imf' preset (per-channel standardization, as the code), batch 1024,
640 epochs, AdamW (0.9, 0.95), no weight decay, lr 1e-4 after a 10-epoch warmup, EMA 0.9999,
float32 (recipes.imf_imagenet256).

  python -m fewstep_jax.data.prepare --dataset=imagenet256_latents --manual_dir=IMAGENET \\
      --vae_weights=PATH/sd-vae-ft-mse/diffusion_pytorch_model.safetensors --latent_preset=imf
  python -m fewstep_jax.main --config=configs/imf_imagenet256.py:b --workdir=runs/imf_imagenet256_b \\
      --config.eval.vae_weights=PATH/sd-vae-ft-mse/diffusion_pytorch_model.safetensors

Variants: `:b` (default), `:m`, `:l`, `:xl`, `:smoke`.
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants(sizes=("b", "m", "l", "xl"))


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.imf_imagenet256(variant.size)
    if variant.smoke:
        recipes.latent_smoke(c)
        c.model.update(dict(hidden=64, depth=2, num_heads=4, aux_depth=1))
        c.optim.warmup_steps = 0
    return c
