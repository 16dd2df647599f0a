"""EDM2 diffusion on class-conditional ImageNet 64x64 (Karras et al. 2024): the pretrained
models of ECT / SCT on ImageNet-64.

Target: FID 1.58 (S) / 1.43 (M) (EDM2 Table 3, ImageNet-64, deterministic sampler). EDM2's
recipe as in configs/trigflow_imagenet64.py (the same EDM2 network, optimizer and batch) with
EDM preconditioning, EDM2's learned log-variance head and proposal P(-0.8, 1.6). EMA: the
power-function EMAs EDM2's training tracks, sigma_rel 0.05 (sampled) and 0.10; EDM2 reports
post-hoc reconstructions at other sigma_rel, which the suite does not compute.

  python -m fewstep_jax.main --config=configs/edm_imagenet64.py:s --workdir=runs/edm_imagenet64_s

ImageNet-64: prepare it once with
`python -m fewstep_jax.data.prepare --dataset=imagenet64 --manual_dir=DIR` (docs/DATA.md).
Variants: `:s` (default), `:m`, `:l`, `:xl`, `:smoke`.
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants(sizes=("s", "m", "l", "xl"))


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.imagenet64(variant.size)
    c.method = recipes.edm(p_mean=-0.8, p_std=1.6, learned_weighting=True, logvar_form="mp_fourier")
    c.train.ema_sigma_rels = (0.05, 0.10)
    if variant.smoke:
        config_lib.smoke(c)
    return c
