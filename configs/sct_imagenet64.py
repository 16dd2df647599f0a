"""SCT on class-conditional ImageNet 64x64 (Wang, Geng, Li 2024).

Target (FID-50k, 1-step / 2-step): SCT-S 5.10 / 3.05 (4-step 2.51), SCT-M 3.30 / 2.13
(4-step 1.83); with guidance SCT-M 2.42 / 1.55 (the paper's headline). ECT's ImageNet-64
recipe (configs/ect_imagenet64.py) plus SCT's changes (methods/sct.py): the smooth schedule
with iCT's 1 / (t - r) weighting, class-masked references and a guidance snapshot at 50% of
training (our choice; the paper lists 25 / 50 / 75%). With 1,000 classes a batch of 128 holds
almost no same-class references (0.13 per row), so a bank of the 16,384 most recent images
(about 16 per class, 0.8 GB replicated) supplies them; the paper does not publish its choice.

  python -m fewstep_jax.main --config=configs/edm_imagenet64.py:m --workdir=runs/edm_imagenet64_m
  python -m fewstep_jax.main --config=configs/sct_imagenet64.py:m --workdir=runs/sct_imagenet64_m

or from NVlabs' released EDM2 model of the size (docs/PRETRAINED.md):
https://nvlabs-fi-cdn.nvidia.com/edm2/posthoc-reconstructions/edm2-img64-m-2147483-0.060.pkl
(`:s`: edm2-img64-s-1073741-0.075.pkl)

  python -m fewstep_jax.main --config=configs/sct_imagenet64.py:m --workdir=runs/sct_imagenet64_m \
      --config.train.init_from=edm2-img64-m-2147483-0.060.pkl --config.model.fourier_params=True

`:adm` tunes EDM's own ImageNet-64 model instead (the ADM network of
https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-imagenet-64x64-cond-adm.pkl), ECT's recipe for
it (recipes.ect_imagenet64_adm, our choice; no paper reports this run) plus SCT's changes:

  python -m fewstep_jax.main --config=configs/sct_imagenet64.py:adm --workdir=runs/sct_imagenet64_adm \
      --config.train.init_from=edm-imagenet-64x64-cond-adm.pkl

ImageNet-64: prepare it once with
`python -m fewstep_jax.data.prepare --dataset=imagenet64 --manual_dir=DIR` (docs/DATA.md).
Variants: `:s` (default), `:m`, `:adm`, `:smoke`.
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants(sizes=("s", "m"), options=("adm",))


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.ect_imagenet64_adm() if variant.name == "adm" else recipes.ect_imagenet64(variant.size)
    c.method = recipes.sct(c.method, weighting="inv_dt", class_masked=True, reference_bank=16_384)
    if variant.smoke:
        config_lib.smoke(c)
        c.train.init_from = ""
    c.method.guide_snapshot_step = c.train.num_steps // 2
    return c
