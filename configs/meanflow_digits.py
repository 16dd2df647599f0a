"""MeanFlow (Geng et al. 2025; t = 0 data, t = 1 noise) on sklearn digits, with the data, network,
optimizer and 1,200-step budget of configs/flow_digits.py; the UNet also takes the interval
h = t - r as its second scalar input (model.use_d).

Method settings (small-image recipe of the official CIFAR-10 PyTorch code, which is closer to 8x8
digits than the ImageNet latent recipe): t ~ logit-normal(-0.6, 1.6), r ~ logit-normal(-4.0, 1.6),
r = min(t, r) ('clamp_r'), 75% of each batch with r != t, adaptive weight p = 0.75, c = 1e-3.
Label dropout 0.1 as the flow baseline, on the first rows of each batch, which are r = t rows
(label_dropout_policy='first_rows', the default: the official JAX code's cond_drop; the PyTorch
CIFAR code is unconditional and has no label dropout to follow). No guidance folded into training
(omega = 1, kappa = 0), because the digits metric compares the sample distribution with the data
and the flow baseline is evaluated unguided too. Sampling: 1 step z_0 = z_1 - u(z_1, 0, 1), k steps on t_i = 1 - i/k.

  python -m fewstep_jax.main --config=configs/meanflow_digits.py --workdir=runs/meanflow_digits
  python -m fewstep_jax.main --config=configs/meanflow_digits.py --workdir=runs/meanflow_digits \
      --mode=eval --config.eval.nfes='(1,2,4)'

Result (1,200 steps, eval mode as above; classifier-feature fd / fd_heldout, floor 2.40 / 4.65;
measured with label_dropout_policy='independent', before 'first_rows' became the default):
1 NFE 3.43 / 4.88, 2 NFE 3.10 / 4.21, 4 NFE 2.32 / 4.42 (flow matching on the same budget:
28.73, 8.18, 3.32 fd; shortcut: 9.63, 7.16, 3.32; docs/RESULTS.md). At 500 samples two sample draws of the
same checkpoint differ by up to 0.55 fd: the end-of-training evaluation (another draw) gave
3.98 / 5.97, 2.89 / 3.93, 2.83 / 4.64.

Variants: `:smoke` (seconds on a CPU, for tests).
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants()


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.digits()
    c.model.use_d = True
    c.method = recipes.meanflow(label_dropout=0.1)  # the official CIFAR-10 recipe; dropout as the flow baseline
    c.eval.nfes = (1, 2, 4)
    if variant.smoke:
        config_lib.smoke(c)
    return c
