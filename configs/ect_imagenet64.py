"""ECT on class-conditional ImageNet 64x64 (Geng et al. 2024, official `imgnet` branch).

Target (FID-50k, 1-step / 2-step, ECT Table 2): ECT-S 5.51 / 3.18, ECT-M 3.67 / 2.35
(ECT-XL 3.35 / 1.96). Tuned from EDM2 models of the same size (configs/edm_imagenet64.py);
Adam (0.9, 0.99), lr 1e-3 (S) / 9e-4 (M) decayed as ref_lr / sqrt(max(it / 2000, 1)), batch
128, 100k iterations, dropout 0.4 (S) / 0.5 (M) only at resolutions <= 16 (as the official
code: model.dropout_res), proposal P(-0.8, 1.6), q = 4, d = 25k, pseudo-Huber c = 0.06,
weighting 1 / t^2 + 1 / sigma_d^2, 2-step t = 1.526. EMA: the code's EMA 0.9999 (the first
EMA, used for sampling) plus EDM2's power EMAs sigma_rel 0.01 / 0.05 / 0.10
(`ema_sr0.01`, ...; with train.ema_decays = () the first of them is sampled).

  python -m fewstep_jax.main --config=configs/edm_imagenet64.py:s --workdir=runs/edm_imagenet64_s
  python -m fewstep_jax.main --config=configs/ect_imagenet64.py:s --workdir=runs/ect_imagenet64_s

or, as the paper, from NVlabs' released EDM2 model of the size (train.init_from = the file or its
import_weights folder; fourier_params keeps EDM2's stored Fourier features; docs/PRETRAINED.md):
https://nvlabs-fi-cdn.nvidia.com/edm2/posthoc-reconstructions/edm2-img64-s-1073741-0.075.pkl
(`:m`: edm2-img64-m-2147483-0.060.pkl)

  python -m fewstep_jax.main --config=configs/ect_imagenet64.py:s --workdir=runs/ect_imagenet64_s \
      --config.train.init_from=edm2-img64-s-1073741-0.075.pkl --config.model.fourier_params=True

`:adm` tunes EDM's own ImageNet-64 model instead, the ADM network of
https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-imagenet-64x64-cond-adm.pkl (~296M parameters),
with the same recipe and an optimizer of our choice (recipes.ect_imagenet64_adm; no paper reports
this run):

  python -m fewstep_jax.main --config=configs/ect_imagenet64.py:adm --workdir=runs/ect_imagenet64_adm \
      --config.train.init_from=edm-imagenet-64x64-cond-adm.pkl

ImageNet-64: prepare it once with
`python -m fewstep_jax.data.prepare --dataset=imagenet64 --manual_dir=DIR` (docs/DATA.md).
Variants: `:s` (default), `:m`, `:adm`, `:smoke`.
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants(sizes=("s", "m"), options=("adm",))


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    if variant.name == "adm":
        c = recipes.ect_imagenet64_adm()
    else:
        c = recipes.ect_imagenet64(variant.size)  # lr and dropout of the size: recipes.ECT_IMAGENET64_SIZES
    if variant.smoke:
        config_lib.smoke(c)
        c.train.init_from = ""
    return c
