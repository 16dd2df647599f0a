"""sCD on class-conditional ImageNet 64x64, sCM (Lu & Song 2024) App. G.

Targets (FID, 1 step / 2 steps), sCM Table 2: XL 2.44 / 1.66; 2-step by size
S/M/L/XL 2.07 / 1.89 / 1.70 / 1.66.
As configs/scm_sct_imagenet64.py with dropout 0 and the TrigFlow teacher
(its EMA, eval mode) for dx_t/dt; 400k iterations.

  python -m fewstep_jax.main --config=configs/scm_scd_imagenet64.py:xl --workdir=runs/scm_scd_imagenet64_xl

The teacher may instead be NVlabs' released EDM2 model of the size (their FID presets:
https://nvlabs-fi-cdn.nvidia.com/edm2/posthoc-reconstructions/edm2-img64-{s-1073741-0.075,
m-2147483-0.060, l-1073741-0.040, xl-0671088-0.040}.pkl), an EDM-preconditioned denoiser used
through the exact TrigFlow conversion (method.teacher = the file or its import_weights folder);
the student starts from it (train.init_from), with EDM2's stored Fourier features
(fourier_params) and the conversion (time_map) in its network; docs/PRETRAINED.md. The conversion
embeds c_noise = ln(sigma_d tan t) / 4, which sCM sec. 4.1 finds less stable than its c_noise = t.

  python -m fewstep_jax.main --config=configs/scm_scd_imagenet64.py:s --workdir=runs/scm_scd_imagenet64_s_edm2 \
      --config.method.teacher=edm2-img64-s-1073741-0.075.pkl --config.train.init_from=edm2-img64-s-1073741-0.075.pkl \
      --config.model.fourier_params=True --config.model.time_map=edm_as_trigflow

ImageNet-64: prepare it once with
`python -m fewstep_jax.data.prepare --dataset=imagenet64 --manual_dir=DIR` (docs/DATA.md).
Variants: `:s` (default), `:m`, `:l`, `:xl`, `:smoke`.
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants(sizes=("s", "m", "l", "xl"))


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.scm_imagenet64(variant.size)
    c.model.dropout = 0.0
    c.method.update(dict(name="scm_scd", teacher=c.train.init_from))
    if variant.smoke:
        config_lib.smoke(c)
    return c
