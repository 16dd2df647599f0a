"""SCT on a 2-D toy distribution: configs/ect_toy2d.py plus the batch score-identity target and
the smooth schedule (methods/sct.py). Toy batches are fresh exact samples, so the 512-sample
batch is a large reference set.

  python -m fewstep_jax.main --config=configs/edm_toy2d.py --workdir=runs/edm_toy2d
  python -m fewstep_jax.main --config=configs/sct_toy2d.py --workdir=runs/sct_toy2d

Variants: `:smoke` (from scratch).
"""

from fewstep_jax import config_lib


def get_config(arg: str | None = None):
    config_lib.parse_variant(arg, ("smoke",))
    c = config_lib.load_sibling(__file__, "ect_toy2d", arg)
    c.method.update(dict(name="sct", mapping="smooth", reference_set="batch"))
    return c
