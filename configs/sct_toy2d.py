"""SCT on a 2-D toy distribution: configs/ect_toy2d.py plus the batch score-identity target and
the smooth schedule (methods/sct.py). Toy batches are fresh exact samples, so the 512-sample
batch is a large reference set.

  python -m fewstep_jax.main --config=configs/edm_toy2d.py --workdir=runs/edm_toy2d
  python -m fewstep_jax.main --config=configs/sct_toy2d.py --workdir=runs/sct_toy2d

Variants: `:phased` (4 phases with the digits edges scaled to sigma_d = 1: 0.4, 1.6, 6.4, and
4-step edge walking); `:smoke` (from scratch).
"""

from fewstep_jax import config_lib


def get_config(arg: str | None = None):
    variant = config_lib.parse_variant(arg, ("phased", "smoke"))
    c = config_lib.load_sibling(__file__, "ect_toy2d", arg if variant == "smoke" else None)
    c.method.update(dict(name="sct", mapping="smooth", reference_set="batch"))
    if variant == "phased":
        c.method.phase_edges = (0.4, 1.6, 6.4)
        c.method.edge_skip_eta = 0.0
        c.eval.nfes = (4,)
    return c
