"""sCT on CIFAR-10 (unconditional), sCM (Lu & Song 2024) App. G.

Target: FID 2.85 (1 step) / 2.06 (2 steps), sCM Table 1.
Initialized from the TrigFlow teacher's EMA (configs/trigflow_cifar.py);
batch 512, RAdam 1e-4 (0.9, 0.99) without a schedule, proposal P(-1.0, 1.4),
dropout 0.20, tangent normalization c = 0.1, tangent warmup H = 10k, adaptive
weighting, t_mid = 1.1, EMA half-life 0.5 Mimg. The iteration count is not stated
in App. G; 400k follows the ECT-matched ablation (App. E.3).

  python -m fewstep_jax.main --config=configs/scm_sct_cifar.py --workdir=runs/scm_sct_cifar

Data: CIFAR-10, prepared once with `python -m fewstep_jax.data.prepare --dataset=cifar10 --download`.
Variants: `:smoke`.
"""

from fewstep_jax import config_lib


def get_config(arg: str | None = None):
    config_lib.parse_variant(arg, ("smoke",))
    c = config_lib.load_sibling(__file__, "trigflow_cifar", arg)
    c.model.dropout = 0.2
    c.method = config_lib.scm_method("scm_sct")
    c.optim.update(dict(name="radam", lr=1e-4, b1=0.9, b2=0.99, schedule="constant"))
    c.train.init_from = "runs/trigflow_cifar"
    c.eval.update(dict(sampler="euler", nfes=(1, 2)))
    return c
