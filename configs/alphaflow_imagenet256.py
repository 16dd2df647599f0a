"""alpha-Flow on class-conditional ImageNet 256 (latent DiT), Zhang et al. 2025 (arXiv 2510.20771),
Tables 1-2 and the official code (snap-research/alphaflow, experiments-alphaflow.yaml).

FID-50k at 1 / 2 NFE (paper; MeanFlow's in the same setting in brackets):
  `:nocfg` B/2, 400k steps, alpha over [0, 400k], r = t share 0.5: 40.2 / 37.1 (43.1 / 38.5)
  `:b`     B/2, 1.2M steps, alpha over [0, 1.2M], share 0.25, CFG (omega, kappa, interval) =
           (1.0, 0.5, [0, 1]), scale 2: 5.40 / 5.01 (6.04 / 5.17)
  `:xl`    XL/2, 1.2M steps, alpha over [600k, 1M], share 0.5, CFG (0.2, 0.92, [0, 0.75]),
           scale 2.5: 2.95 / 2.34 (3.47 / 2.46)
  XL/2+ (60 more epochs at batch 1024): 2.58 / 2.15 (1.95 with balanced classes): not a variant.
Common: DiT with c = E_t(t) + E_h(t - r) + E_y(y) (MeanFlow's network, model.use_d), batch 256,
Adam (0.9, 0.95), constant lr 1e-4, no weight decay, EMA 0.9999, class dropout 0.1 inside the CFG
interval. XL/2 samples 2 NFE by consistency sampling on [1, 0.55, 0] (method.sample_gamma = 1,
sample_schedule); B/2 by the trajectory. Latents: the suite's 'sd' preset (x 0.18215); the code
normalizes latents to unit standard deviation instead (--config.data.latent_preset=imf gives a
per-channel standardization).

  python -m fewstep_jax.main --config=configs/alphaflow_imagenet256.py:xl --workdir=runs/alphaflow_imagenet256_xl \\
      --config.eval.vae_weights=PATH/sd-vae-ft-mse/diffusion_pytorch_model.safetensors

Data: configs/meanflow_imagenet256.py shows the prepare command (preset sd).
Variants: `:b` (default), `:xl`, `:nocfg`, `:smoke`.
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants(sizes=("b", "xl"), options=("nocfg",))


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    xl = variant.size == "xl"
    c = recipes.latents("imagenet256_latents", conditional=True, preset="sd")
    c.model = recipes.dit("XL" if xl else "B", 2, "float32")
    if variant.name == "nocfg":
        c.method = recipes.alphaflow(alpha_end=400_000)
        c.train.num_steps = 400_000
    elif xl:
        c.method = recipes.alphaflow(alpha_start=600_000, alpha_end=1_000_000, label_dropout=0.1, cfg_omega=0.2,
                                     cfg_kappa=0.92, cfg_t_max=0.75, sample_gamma=1.0,
                                     sample_schedule=(1.0, 0.55, 0.0))  # fmt: skip
        c.train.num_steps = 1_200_000
    else:
        c.method = recipes.alphaflow(alpha_end=1_200_000, ratio_r_eq_t=0.25, label_dropout=0.1, cfg_omega=1.0,
                                     cfg_kappa=0.5)  # fmt: skip
        c.train.num_steps = 1_200_000
    c.optim.update(dict(name="adam", lr=1e-4, b1=0.9, b2=0.95, weight_decay=0.0, schedule="constant"))
    c.train.update(dict(batch_size=256, ema_decays=(0.9999,)))
    c.eval.nfes = (1, 2)
    c.data.latent_flips = False
    if variant.smoke:
        recipes.latent_smoke(c)
        c.method.update(dict(alpha_start=0, alpha_end=c.train.num_steps))
    return c
