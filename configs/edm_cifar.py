"""EDM diffusion on CIFAR-10 (Karras et al. 2022): the pretrained model of ECT / SCT on CIFAR-10.

Target: FID 1.97 unconditional / 1.79 class-conditional (VP, DDPM++, Heun 18 steps = NFE 35,
EDM Table 2). EDM's CIFAR-10 recipe: DDPM++ exactly as EDM's SongUNet (recipes.ddpmpp_unet:
128 channels, multipliers [2, 2, 2], 4 blocks per resolution, attention at 16x16, resampling
residual blocks, positional noise embedding; 55.7M parameters), dropout 0.13, Adam lr 1e-3, batch
512, 200 Mimg (390k iterations), lr warmup over 10 Mimg, EMA half-life 0.5 Mimg, proposal
ln sigma ~ N(-1.2, 1.2^2). EDM's geometric augmentation (a non-leaking augment pipeline) is not
in the suite: without it EDM reports FID about 2.0-2.1 instead (EDM Table 2, config E vs F).

  python -m fewstep_jax.main --config=configs/edm_cifar.py --workdir=runs/edm_cifar
  python -m fewstep_jax.main --config=configs/edm_cifar.py:cond --workdir=runs/edm_cifar_cond

Data: CIFAR-10, prepared once with `python -m fewstep_jax.data.prepare --dataset=cifar10 --download`.
Variants: `:cond`, `:smoke`.
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants(options=("cond",))


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.cifar10(conditional=variant.name == "cond")
    c.model.emb_norm = "additive"  # DDPM++ as in EDM (adaptive_scale=False; no sCM changes)
    c.model.label_embed = "onehot_linear"  # EDM's label input (SongUNet map_label)
    c.method = recipes.edm(sigma_min=0.002, sigma_max=80.0)
    c.optim.warmup_steps = 19_531  # 10 Mimg at batch 512
    c.train.num_steps = 390_625  # 200 Mimg
    if variant.smoke:
        config_lib.smoke(c)
    return c
