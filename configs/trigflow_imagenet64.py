"""TrigFlow teacher on class-conditional ImageNet 64x64, sCM (Lu & Song 2024) App. G.

Target: FID 1.38 (XL, 2nd-order sampler, 32 steps = NFE 63), sCM Table 2.
Network: EDM2 (Karras et al. 2024) sizes S/M/L/XL = 192/256/320/384 channels,
with the sCM changes (sec. 4.1); EDM2 config G training: Adam (0.9, 0.99),
eps 1e-11, lr 1e-2 / 9e-3 / 8e-3 / 7e-3 (S/M/L/XL) with inverse-square-root decay
from t_ref = 35k iterations; proposal P(-0.8, 1.6); batch 2048.
EMA: the paper uses EDM2's power EMA (sigma_rel = 0.05), which arrives with the
EDM2 network; until then a standard half-life EMA stands in.

  python -m fewstep_jax.main --config=configs/trigflow_imagenet64.py:xl --workdir=runs/trigflow_imagenet64_xl

Needs the EDM2 network and the ImageNet-64 source (neither is in this version yet):
the config records the published values. Variants: `:s` (default), `:m`, `:l`, `:xl`, `:smoke`.
"""

import ml_collections

from fewstep_jax import config_lib

#: size -> (channels, teacher learning rate), sCM App. G / EDM2 Table 2.
SIZES = {"s": (192, 1e-2), "m": (256, 9e-3), "l": (320, 8e-3), "xl": (384, 7e-3)}


def get_config(arg: str | None = None):
    variant = config_lib.parse_variant(arg, (*SIZES, "smoke"))
    size = variant if variant in SIZES else "s"
    channels, lr = SIZES[size]
    c = config_lib.base_config()
    c.data = ml_collections.ConfigDict(dict(name="imagenet64", conditional=True))
    c.model = ml_collections.ConfigDict(dict(name="edm2", size=size, channels=channels, dropout=0.0))
    c.method = ml_collections.ConfigDict(
        dict(name="trigflow", sigma_d=0.5, p_mean=-0.8, p_std=1.6, learned_weighting=True, label_dropout=0.0)
    )
    c.optim.update(dict(name="adam", lr=lr, b1=0.9, b2=0.99, eps=1e-11, schedule="inverse_sqrt", decay_steps=35_000))
    c.train.update(
        dict(
            num_steps=400_000,
            batch_size=2048,
            ema_decays=(),
            ema_halflives=(10_000_000.0,),  # stand-in for the power EMA (sigma_rel = 0.05)
            log_every=100,
            checkpoint_every=10_000,
            sample_every=10_000,
            eval_every=50_000,
        )
    )
    c.eval.update(dict(sampler="heun", nfes=(32,), num_samples=50_000))
    if variant == "smoke":
        config_lib.smoke(c)
    return c
