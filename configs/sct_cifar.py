"""SCT (Stable Consistency Tuning, Wang, Geng, Li 2024) on CIFAR-10: the suite's headline.

Target (FID-50k, 1-step / 2-step, SCT's CIFAR-10 table): SCT 3.11 / 2.05, with guidance
2.92 / 2.02; class-conditional (`:cond`) 3.03 / 1.88, with guidance 2.88 / 1.87; ECT in the
same table 3.78 / 2.13. Phased SCT: 4-step 1.95, 8-step 1.86.

ECT's CIFAR-10 recipe (configs/ect_cifar.py) plus SCT's changes (methods/sct.py): the
variance-reduced target from the mini-batch (class-masked for `:cond`), the smooth schedule,
and guidance from an EMA snapshot taken at 50% of training (sample with
--config.eval.guidance=1+w). SCT publishes no code: the reference-bank size, the snapshot
step and the phase edges of `:phased` are this suite's choices (docs/METHODS.md).

  python -m fewstep_jax.main --config=configs/edm_cifar.py --workdir=runs/edm_cifar
  python -m fewstep_jax.main --config=configs/sct_cifar.py --workdir=runs/sct_cifar

or, as the paper, from NVlabs' released EDM model (train.init_from takes the file, or the folder
`python -m fewstep_jax.models.import_weights` writes; docs/PRETRAINED.md):
https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-cifar10-32x32-uncond-vp.pkl
(`:cond`: edm-cifar10-32x32-cond-vp.pkl)

  python -m fewstep_jax.main --config=configs/sct_cifar.py --workdir=runs/sct_cifar \
      --config.train.init_from=edm-cifar10-32x32-uncond-vp.pkl

Data: CIFAR-10, prepared once with `python -m fewstep_jax.data.prepare --dataset=cifar10 --download`.
`make demo` trains the embedded counterpart, configs/sct_digits.py.
Variants: `:cond`, `:phased` (4 phases), `:smoke`.
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants(options=("cond", "phased"))


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.ect_cifar10(conditional=variant.name == "cond")
    c.method = recipes.sct(c.method, reference_bank=0)
    if variant.name == "phased":
        # Edges on EDM's rho = 7 grid of 5 levels in [0.002, 80] (our choice).
        c.method.update(dict(phase_edges=(0.17, 2.52, 17.5), edge_skip_eta=0.0))
        c.eval.nfes = (4,)
    if variant.smoke:
        config_lib.smoke(c)
        c.train.init_from = ""
    c.method.guide_snapshot_step = c.train.num_steps // 2
    return c
