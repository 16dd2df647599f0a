"""TrigFlow diffusion teacher on sklearn digits (8x8, 10 classes, embedded).

The teacher / baseline every few-step method on digits is compared with
(sCM sec. 3: TrigFlow parameterization, EDM2 learned loss weighting).

  python -m fewstep_jax.main --config=configs/trigflow_digits.py --workdir=runs/trigflow_digits
  python -m fewstep_jax.main --config=configs/trigflow_digits.py --workdir=runs/trigflow_digits \
      --mode=eval --config.eval.sampler=heun --config.eval.nfes='(1,2,4,8,16)'

Variants: `:smoke` (seconds on a CPU, for tests).
Metric: Frechet distance in the features of the suite's digits classifier (fd),
reported next to the real-data floor (README, "Results").
"""

import ml_collections

from fewstep_jax import config_lib


def get_config(arg: str | None = None):
    variant = config_lib.parse_variant(arg, ("smoke",))
    c = config_lib.base_config()
    c.data = ml_collections.ConfigDict(dict(name="digits", conditional=True))
    c.model = config_lib.digits_unet()
    c.method = ml_collections.ConfigDict(
        dict(name="trigflow", sigma_d=0.5, p_mean=-1.0, p_std=1.4, learned_weighting=True, label_dropout=0.1)
    )
    c.optim.name = "adam"
    c.optim.lr = 2e-3
    c.optim.schedule = "cosine"
    c.optim.end_factor = 0.1
    c.optim.warmup_steps = 100
    c.train.num_steps = 1200
    c.train.batch_size = 128
    c.train.ema_decays = (0.995,)
    c.train.checkpoint_every = 400
    c.train.sample_every = 1200
    c.train.eval_every = 1200
    c.eval.nfes = (1, 2, 4, 8)
    c.eval.sampler = "euler"
    if variant == "smoke":
        config_lib.smoke(c)
    return c
