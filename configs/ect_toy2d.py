"""ECT on a 2-D toy distribution, tuned from configs/edm_toy2d.py (sigma_d = 1).

The CIFAR-10 recipe (sigmoid mapping, q = 2, 8 stages over the run, 1 / (t - r), c = 0) scaled
to the 3,000-step toy budget; every noise-level setting is scaled from sigma_d = 0.5 to 1 (x2):
P_mean -1.1 + ln 2, the mapping's b = 1 / 2, t_mid = 2 x 0.821.

  python -m fewstep_jax.main --config=configs/edm_toy2d.py --workdir=runs/edm_toy2d
  python -m fewstep_jax.main --config=configs/ect_toy2d.py --workdir=runs/ect_toy2d

Variants: `:smoke` (from scratch).
"""

from fewstep_jax import config_lib


def get_config(arg: str | None = None):
    variant = config_lib.parse_variant(arg, ("smoke",))
    c = config_lib.load_sibling(__file__, "edm_toy2d", arg)
    c.method = config_lib.load_sibling(__file__, "ect_digits").method
    c.method.update(dict(sigma_d=1.0, p_mean=-0.407, b=0.5, stage_length=c.train.num_steps // 8, t_mid=1.642))
    c.optim.update(dict(name="radam", lr=2e-4, b1=0.9, b2=0.999, schedule="constant", warmup_steps=0))
    c.train.init_from = "runs/edm_toy2d"
    c.eval.nfes = (1, 2, 4)
    if variant == "smoke":
        c.train.init_from = ""
        c.method.stage_length = 10
        c.eval.nfes = (1, 2)
    return c
