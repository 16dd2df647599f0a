"""sCT on class-conditional ImageNet 64x64, sCM (Lu & Song 2024) App. G.

Targets (FID, 1 step / 2 steps), sCM Table 2: XL 2.04 / 1.48; 2-step by size
S/M/L/XL 2.93 / 1.81 / 1.57 / 1.48.
From the TrigFlow teacher's EMA (configs/trigflow_imagenet64.py, same size);
Adam with lr = teacher lr / 100 and the same inverse-sqrt decay, proposal
P(-1.0, 1.6), dropout 0.45 at resolutions <= 16 only (model.dropout_res),
tangent normalization c = 0.1, H = 10k, t_mid = 1.1, 400k iterations, batch 2048;
the teacher's EDM2 network and power EMA (sigma_rel 0.05).

  python -m fewstep_jax.main --config=configs/scm_sct_imagenet64.py:xl --workdir=runs/scm_sct_imagenet64_xl

ImageNet-64: prepare it once with
`python -m fewstep_jax.data.prepare --dataset=imagenet64 --manual_dir=DIR` (docs/DATA.md).
Variants: `:s` (default), `:m`, `:l`, `:xl`, `:smoke`.
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants(sizes=("s", "m", "l", "xl"))


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.scm_imagenet64(variant.size)
    if variant.smoke:
        config_lib.smoke(c)
    return c
