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
`python -m fewstep_jax.data.prepare --dataset=imagenet64 --manual_dir=DIR` (README, Datasets).
Variants: `:s` (default), `:m`, `:l`, `:xl`, `:smoke`.
"""

import ml_collections

from fewstep_jax import config_lib

#: size -> (teacher learning rate, dropout), sCM App. G / EDM2's ImageNet-64 presets; the
#: channels (192 / 256 / 320 / 384) follow from model.size (models.EDM2_SIZES).
SIZES = {"s": (1e-2, 0.0), "m": (9e-3, 0.1), "l": (8e-3, 0.1), "xl": (7e-3, 0.1)}


def get_config(arg: str | None = None):
    variant = config_lib.parse_variant(arg, (*SIZES, "smoke"))
    size = variant if variant in SIZES else "s"
    lr, dropout = SIZES[size]
    c = config_lib.base_config()
    c.data = ml_collections.ConfigDict(dict(name="imagenet64", conditional=True, data_dir=""))
    # channels=None: model.size decides (an explicit channels value would win over it).
    c.model = ml_collections.ConfigDict(dict(name="edm2", size=size, channels=None, dropout=dropout, dropout_res=0))
    c.method = ml_collections.ConfigDict(
        dict(
            name="trigflow", sigma_d=0.5, p_mean=-0.8, p_std=1.6, learned_weighting=True,
            logvar_form="mp_fourier", label_dropout=0.0,
        )
    )
    c.optim.update(dict(name="adam", lr=lr, b1=0.9, b2=0.99, eps=1e-11, schedule="inverse_sqrt", decay_steps=35_000))
    c.train.update(
        dict(
            num_steps=400_000,
            batch_size=2048,
            ema_decays=(),
            ema_halflives=(),
            ema_sigma_rels=(0.05,),
            log_every=100,
            checkpoint_every=10_000,
            sample_every=10_000,
            eval_every=50_000,
        )
    )
    c.eval.update(dict(sampler="heun", nfes=(32,), num_samples=50_000))
    if variant == "smoke":
        config_lib.smoke(c)
        c.model.update(
            dict(channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(32,), channels_per_head=16)
        )
    return c
