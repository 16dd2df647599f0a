"""Decoupled MeanFlow on class-conditional ImageNet 256 (latent DiT-XL/2), Lee, Yu, Shin 2025
(arXiv 2510.24474), Table 2 and the official code (kyungmnlee/dmf: train_dmf_xl_2_256.sh,
loss.py, samplers.py).

Target FID-50k at 1 / 2 / 4 NFE: 2.16 / 1.64 / 1.51 (Euler, shift 1, no CFG at sampling: model
guidance is folded into training). ImageNet-512 (same recipe with qk-norm, 800k steps, MG interval
[0, 0.8], shift 1.5): 2.12 / 1.75 / 1.68. L/2 ablation at 1 step: MeanFlow 20.6 vs DMF 19.3,
with MG 5.27 vs 4.53.
Initialization: a flow-matching DiT-XL/2 of the suite on the same data (train.init_from; the paper
starts from SiT-XL/2 + REPA after 4M steps, whose REPA loss the suite does not have): the same
network, decoupled (models/flowmap_nets.py): blocks 0-19 see t, blocks 20-27 and the final layer r.
Fine-tune: 400k steps at batch 256, AdamW (0.9, 0.95), lr 1e-4, no weight decay, gradient clipping
at 1, EMA 0.9999, bfloat16; model guidance omega 0.6 on t in [0, 0.7] (learned CFG scale 2.5),
label dropout 0.1; FM + MF losses with the learned log-variance (recipes.dmf).

  python -m fewstep_jax.main --config=configs/dmf_imagenet256.py --workdir=runs/dmf_imagenet256_xl \\
      --config.train.init_from=runs/flow_imagenet256_xl \\
      --config.eval.vae_weights=PATH/sd-vae-ft-mse/diffusion_pytorch_model.safetensors

(runs/flow_imagenet256_xl: a `flow` run with this config's data and model sections.)
Data: configs/meanflow_imagenet256.py shows the prepare command (preset sd).
Variants: `:smoke`.
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants()


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.latents("imagenet256_latents", conditional=True, preset="sd")
    c.model = recipes.dit("XL", 2, "bfloat16")
    c.model.use_d = False  # the flow network has one time input; the decoupling feeds r to its late blocks
    c.method = recipes.dmf(split=20, guidance_omega=0.6, guidance_t_min=0.0, guidance_t_max=0.7)
    c.optim.update(dict(name="adamw", lr=1e-4, b1=0.9, b2=0.95, weight_decay=0.0, schedule="constant", grad_clip=1.0))
    c.train.update(dict(num_steps=400_000, batch_size=256, ema_decays=(0.9999,)))
    c.train.init_from = "runs/flow_imagenet256_xl"
    c.eval.nfes = (1, 2, 4)
    c.data.latent_flips = False
    if variant.smoke:
        recipes.latent_smoke(c)
        c.method.split = 1
        c.train.init_from = ""
    return c
