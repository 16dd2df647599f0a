"""sCT on a 2-D toy distribution, initialized from configs/trigflow_toy2d.py.

  python -m fewstep_jax.main --config=configs/trigflow_toy2d.py --workdir=runs/trigflow_toy2d
  python -m fewstep_jax.main --config=configs/scm_sct_toy2d.py --workdir=runs/scm_sct_toy2d

Variants: `:smoke` (from scratch).
"""

import ml_collections

from fewstep_jax import config_lib


def get_config(arg: str | None = None):
    variant = config_lib.parse_variant(arg, ("smoke",))
    c = config_lib.load_sibling(__file__, "trigflow_toy2d", arg)
    c.method = ml_collections.ConfigDict(
        # sigma_d = 1: keep the paper's re-noising level sigma_mid = 0.5 tan(1.1) = 0.98, not t_mid.
        dict(name="scm_sct", sigma_d=1.0, p_mean=-0.4, p_std=1.4, tangent_warmup=300, sigma_mid=0.98)
    )
    c.optim.name = "radam"
    c.optim.lr = 2e-4
    c.optim.b2 = 0.99
    c.optim.schedule = "constant"
    c.train.init_from = "runs/trigflow_toy2d"
    c.eval.nfes = (1, 2, 4)
    if variant == "smoke":
        c.train.init_from = ""
        c.method.tangent_warmup = 10
        c.eval.nfes = (1, 2)
    return c
