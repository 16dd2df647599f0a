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

ImageNet-64: prepare it once with
`python -m fewstep_jax.data.prepare --dataset=imagenet64 --manual_dir=DIR` (README, Datasets).
Variants: `:s` (default), `:m`, `:smoke`.
"""

import ml_collections

from fewstep_jax import config_lib

#: size -> (learning rate, dropout), ECT's ImageNet-64 code.
SIZES = {"s": (1e-3, 0.4), "m": (9e-4, 0.5)}


def get_config(arg: str | None = None):
    variant = config_lib.parse_variant(arg, (*SIZES, "smoke"))
    size = variant if variant in SIZES else "s"
    lr, dropout = SIZES[size]
    c = config_lib.load_sibling(__file__, "edm_imagenet64", size if variant != "smoke" else "smoke")
    c.model.update(dict(dropout=dropout, dropout_res=16))
    c.method = ml_collections.ConfigDict(
        dict(
            name="ect",
            sigma_d=0.5,
            p_mean=-0.8,
            p_std=1.6,
            mapping="stages",
            q=4.0,
            stage_length=25_000,
            stage_offset=1,
            huber_c=0.06,
            weighting="edm",
            t_mid=1.526,
        )
    )
    c.optim.update(
        dict(name="adam", lr=lr, b1=0.9, b2=0.99, eps=1e-8, schedule="inverse_sqrt", decay_steps=2000, warmup_steps=0)
    )
    c.train.update(
        dict(
            num_steps=100_000, batch_size=128, ema_decays=(0.9999,), ema_halflives=(), ema_sigma_rels=(0.01, 0.05, 0.10)
        )
    )
    c.train.init_from = f"runs/edm_imagenet64_{size}"
    c.eval.update(dict(sampler="euler", nfes=(1, 2)))
    if variant == "smoke":
        config_lib.smoke(c)
        c.train.init_from = ""
    return c
