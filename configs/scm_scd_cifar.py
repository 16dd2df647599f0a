"""sCD on CIFAR-10 (unconditional), sCM (Lu & Song 2024) App. G.

Target: FID 3.66 (1 step) / 2.52 (2 steps), sCM Table 1.
As configs/scm_sct_cifar.py with dropout 0 and dx_t/dt from the TrigFlow teacher
(its EMA in eval mode); the student starts from the teacher's weights.

  python -m fewstep_jax.main --config=configs/scm_scd_cifar.py --workdir=runs/scm_scd_cifar

Data: CIFAR-10, prepared once with `python -m fewstep_jax.data.prepare --dataset=cifar10 --download`.
Variants: `:smoke`.
"""

from fewstep_jax import config_lib


def get_config(arg: str | None = None):
    config_lib.parse_variant(arg, ("smoke",))
    c = config_lib.load_sibling(__file__, "scm_sct_cifar", arg)
    c.model.dropout = 0.0
    c.method.name = "scm_scd"
    c.method.teacher = "runs/trigflow_cifar"
    return c
