"""TrigFlow diffusion on a 2-D toy distribution (checkerboard by default).

  python -m fewstep_jax.main --config=configs/trigflow_toy2d.py --workdir=runs/trigflow_toy2d
  python -m fewstep_jax.main --config=configs/trigflow_toy2d.py --workdir=runs/x \
      --config.data.distribution=moons

Variants: `:smoke`. Metric: sliced Wasserstein distance (swd) to fresh exact
samples of the distribution, next to its floor (fresh vs fresh).
"""

import ml_collections

from fewstep_jax import config_lib


def get_config(arg: str | None = None):
    variant = config_lib.parse_variant(arg, ("smoke",))
    c = config_lib.base_config()
    c.data = config_lib.toy_data("checkerboard")
    c.model = config_lib.toy_mlp()
    # Toy data has std ~1 per coordinate: sigma_d = 1.
    c.method = ml_collections.ConfigDict(
        dict(name="trigflow", sigma_d=1.0, p_mean=-0.4, p_std=1.4, learned_weighting=True, label_dropout=0.0)
    )
    c.optim.lr = 1e-3
    c.optim.schedule = "cosine"
    c.optim.end_factor = 0.1
    c.train.num_steps = 3000
    c.train.batch_size = 512
    c.train.ema_decays = (0.995,)
    c.train.checkpoint_every = 1000
    c.train.sample_every = 3000
    c.train.eval_every = 3000
    c.eval.nfes = (1, 2, 4, 8, 16)
    if variant == "smoke":
        config_lib.smoke(c)
    return c
