"""TrigFlow teacher on class-conditional ImageNet 64x64, sCM (Lu & Song 2024) App. G.

Target: FID 1.38 (XL, 2nd-order sampler, 32 steps = NFE 63), sCM Table 2.
Network: EDM2 (Karras et al. 2024; `edm2`) sizes S/M/L/XL = 192/256/320/384 channels
(280M / 498M / 778M / 1.12B parameters at 64x64x3 with 1000 classes), dropout 0 (S) /
0.1 (M, L, XL) as EDM2's ImageNet-64 presets, with c_noise = t (sCM sec. 4.1) fed to
EDM2's MPFourier embedding and EDM2's log-variance head (logvar_form='mp_fourier').
sCM's adaptive double normalization is not applied inside EDM2's magnitude-preserving
blocks here. EDM2 config G training: Adam (0.9, 0.99), eps 1e-11, lr 1e-2 / 9e-3 /
8e-3 / 7e-3 (S/M/L/XL) with inverse-square-root decay from t_ref = 35k iterations;
proposal P(-0.8, 1.6); batch 2048; forced weight normalization after every step.
EMA: EDM2's power-function EMA with sigma_rel = 0.05 (sCM App. G; EDM2 sec. 3.1).

  python -m fewstep_jax.main --config=configs/trigflow_imagenet64.py:xl --workdir=runs/trigflow_imagenet64_xl

ImageNet-64: prepare it once with
`python -m fewstep_jax.data.prepare --dataset=imagenet64 --manual_dir=DIR` (docs/DATA.md).
Variants: `:s` (default), `:m`, `:l`, `:xl`, `:smoke`.
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants(sizes=("s", "m", "l", "xl"))


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.imagenet64(variant.size)  # lr and dropout of the size: recipes.IMAGENET64_SIZES
    c.method = recipes.trigflow(p_mean=-0.8, p_std=1.6, logvar_form="mp_fourier")
    if variant.smoke:
        config_lib.smoke(c)
    return c
