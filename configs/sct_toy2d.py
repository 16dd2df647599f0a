"""SCT on a 2-D toy distribution: configs/ect_toy2d.py plus the batch score-identity target and
the smooth schedule (methods/sct.py). Toy batches are fresh exact samples, so the 512-sample
batch is a large reference set.

  python -m fewstep_jax.main --config=configs/edm_toy2d.py --workdir=runs/edm_toy2d
  python -m fewstep_jax.main --config=configs/sct_toy2d.py --workdir=runs/sct_toy2d

Variants: `:phased` (4 phases with the digits edges scaled to sigma_d = 1: 0.4, 1.6, 6.4, and
4-step edge walking); `:smoke` (from scratch).
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants(options=("phased",))


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.ect_toy2d()
    c.method = recipes.sct(c.method)
    if variant.name == "phased":
        c.method.update(dict(phase_edges=(0.4, 1.6, 6.4), edge_skip_eta=0.0))
        c.eval.nfes = (4,)
    if variant.smoke:  # from scratch, with the tuning schedule
        config_lib.smoke(c)
        c.train.init_from = ""
        c.method.stage_length = 10
    return c
