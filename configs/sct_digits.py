"""SCT (Stable Consistency Tuning, Wang, Geng, Li 2024) on sklearn digits: the embedded
counterpart of the headline configs/sct_cifar.py; `make demo` trains its `:scratch` variant.

ECT's digits recipe (configs/ect_digits.py: same EDM model to tune from, network, optimizer and
1,200-step budget) plus SCT's changes (methods/sct.py): the variance-reduced target from the
mini-batch (class-conditional references), the smooth mapping schedule, and an EMA snapshot at
50% of training for guidance (sample with --config.eval.guidance=1.5, i.e. w = 0.5).

  python -m fewstep_jax.main --config=configs/edm_digits.py --workdir=runs/edm_digits
  python -m fewstep_jax.main --config=configs/sct_digits.py --workdir=runs/sct_digits
  python -m fewstep_jax.main --config=configs/sct_digits.py --workdir=runs/sct_digits \
      --mode=eval --config.eval.guidance=1.5

Variants:
  `:uncond`  no labels (tunes runs/edm_digits_uncond);
  `:phased`  4 phases with edges (0, 0.2, 0.8, 3.2, 80) and 4-step edge walking (our choice of
             edges: the paper does not publish its own);
  `:scratch` no pretrained model: the paper's q^stage mapping, whose stage 0 is diffusion
             (one self-contained run: `make demo`);
  `:smoke`   from scratch, seconds on a CPU.
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants(options=("uncond", "phased", "scratch"))


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.ect_digits(conditional=variant.name != "uncond", scratch=variant.name == "scratch")
    c.method = recipes.sct(c.method, guide_snapshot_step=c.train.num_steps // 2)
    if variant.name == "phased":
        # the edge-skipping sampler: --config.method.edge_skip_eta=0.25
        c.method.update(dict(phase_edges=(0.2, 0.8, 3.2), edge_skip_eta=0.0))
        c.eval.nfes = (4,)
    if variant.smoke:  # from scratch, with the tuning schedule
        config_lib.smoke(c)
        c.train.init_from = ""
        c.method.update(dict(stage_length=10, guide_snapshot_step=20))
    return c
