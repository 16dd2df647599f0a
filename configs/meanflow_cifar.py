"""MeanFlow on CIFAR-10 (unconditional, pixel space), Geng et al. 2025, Table 3, with the improved
recipe of the official PyTorch code (Gsunshine/py-meanflow, scripts/cifar10_v1.sh).

Target: FID-50k 2.92 at 1 NFE (paper, Table 3; the v1 script is reported to reach ~2.9).
Network: the code's SongUNet DDPM++ (recipes.ddpmpp_unet: 128 channels, multipliers
[2, 2, 2], 4 blocks per resolution, attention at 16x16, resampling residual blocks), with the
code's resampling filter [1, 3, 3, 1], no EDM preconditioner, dropout 0.2, taking t and the
interval h = t - r (model.use_d): 56.1M parameters. The code concatenates 256-wide positional
embeddings of t and h before one shared MLP (55.9M parameters); here h has its own positional
embedding + MLP, summed with t's. Method: t ~ logit-normal(-0.6, 1.6), r ~ logit-normal
(-4.0, 1.6), r = min(t, r) ('clamp_r', the code's tr_sampler v1), 75% of rows with r != t (the
code's `ratio`), adaptive weight p = 0.75, c = 1e-3, no labels and no guidance.
Optimizer: Adam lr 6e-4, betas (0.9, 0.999) (the script leaves `optimizer_betas` at its default;
the (0.9, 0.95) of the ImageNet JAX code is not used for CIFAR), no weight decay, linear warmup over
200 epochs (~9.8k steps at batch 1024), then constant; batch 1024 (128 x 8 GPUs); 16,000 epochs
(~800k steps); EMA 0.9999 (plus 0.99995 and 0.9996, as the code keeps). Not reproduced: the
code's EDM augmentation with augmentation labels as extra conditioning (--use_edm_aug), which the
suite does not have. The paper's original recipe (cifar10_v0.sh) differs only in the proposal:
t and r both logit-normal(-2.0, 2.0), ordered by sorting ('sort').

  python -m fewstep_jax.main --config=configs/meanflow_cifar.py --workdir=runs/meanflow_cifar

Data: CIFAR-10, prepared once with `python -m fewstep_jax.data.prepare --dataset=cifar10 --download`.
Variants: `:smoke`.
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants()


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.cifar10()  # CIFAR-10 data, DDPM++ U-Net
    c.model.update(dict(dropout=0.2, use_d=True, emb_norm="additive", resample_filter=(1, 3, 3, 1)))
    c.method = recipes.meanflow()
    c.optim.update(dict(name="adam", lr=6e-4, b1=0.9, b2=0.999, weight_decay=0.0, schedule="constant"))
    c.optim.warmup_steps = 200 * 50_000 // 1024
    c.train.update(dict(num_steps=800_000, batch_size=1024, ema_decays=(0.9999, 0.99995, 0.9996), ema_halflives=()))
    c.eval.update(dict(sampler="euler", nfes=(1, 2), num_samples=50_000))
    if variant.smoke:
        config_lib.smoke(c)
        c.optim.warmup_steps = 0
    return c
