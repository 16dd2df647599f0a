"""sCD on CIFAR-10 (unconditional), sCM (Lu & Song 2024) App. G.

Target: FID 3.66 (1 step) / 2.52 (2 steps), sCM Table 1.
As configs/scm_sct_cifar.py with dropout 0 and dx_t/dt from the TrigFlow teacher
(its EMA in eval mode); the student starts from the teacher's weights.

  python -m fewstep_jax.main --config=configs/scm_scd_cifar.py --workdir=runs/scm_scd_cifar

The paper trains this teacher (configs/trigflow_cifar.py). NVlabs' released EDM model can stand in
for it: https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-cifar10-32x32-uncond-vp.pkl,
an EDM-preconditioned denoiser the teacher (method.teacher) uses through the exact TrigFlow
conversion; the student starts from it too (train.init_from), with EDM's embedding (emb_norm
additive) and the conversion (time_map) in its network. Not the paper's setting: its c_noise =
ln(sigma_d tan t) / 4 is the time embedding sCM sec. 4.1 finds unstable near t = 0 and pi / 2.

  python -m fewstep_jax.main --config=configs/scm_scd_cifar.py --workdir=runs/scm_scd_cifar_edm \
      --config.method.teacher=edm-cifar10-32x32-uncond-vp.pkl --config.train.init_from=edm-cifar10-32x32-uncond-vp.pkl \
      --config.model.emb_norm=additive --config.model.time_map=edm_as_trigflow

Data: CIFAR-10, prepared once with `python -m fewstep_jax.data.prepare --dataset=cifar10 --download`.
Variants: `:smoke`.
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants()


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.scm_cifar10()
    c.model.dropout = 0.0
    c.method.update(dict(name="scm_scd", teacher="runs/trigflow_cifar"))
    if variant.smoke:
        config_lib.smoke(c)
    return c
