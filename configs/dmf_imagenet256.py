"""Decoupled MeanFlow on class-conditional ImageNet 256 (latent DiT-XL/2), Lee, Yu, Shin 2025
(arXiv 2510.24474), Table 2 and the official code (kyungmnlee/dmf: train_dmf_xl_2_256.sh,
loss.py, samplers.py).

Target FID-50k at 1 / 2 / 4 NFE: 2.16 / 1.64 / 1.51 (Euler, shift 1, no CFG at sampling: model
guidance is folded into training). ImageNet-512 (same recipe with qk-norm, 800k steps, MG interval
[0, 0.8], shift 1.5): 2.12 / 1.75 / 1.68. L/2 ablation at 1 step: MeanFlow 20.6 vs DMF 19.3,
with MG 5.27 vs 4.53.
Initialization (train.init_from): the paper's start, REPA's SiT-XL/2 after 4M steps (sihyun-yu/REPA
`last.pt`), or SiT-XL/2 (willisma/SiT SiT-XL-2-256.pt), or a flow-matching DiT-XL/2 of the suite on
the same data. The same network, decoupled (models/flowmap_nets.py): blocks 0-19 see t, blocks
20-27 and the final layer r, both embedded by the network's own time embedder, so no second time
input (model.use_d) is needed and u(x, t, t) is the imported network. The imported files are
velocity fields in the suite's flow convention (SiT's as it is; REPA's t = 0 data convention turned
into it inside the weights, models/pretrained/dit.py), so u(x, t, t) = -v(x, 1 - t) is SiT's
velocity and REPA's own v(x, t). Their networks use the reference time frequencies
(--config.model.time_endpoint=False), and SiT's release keeps its unused learned-sigma head
(--config.model.learn_sigma=True); REPA's projector MLPs are dropped, so the fine-tune has no REPA
loss (the paper's L/2 ablation reports 1-step FID 4.53 for DMF with model guidance without REPA,
3.10 with it).
Fine-tune: 400k steps at batch 256, AdamW (0.9, 0.95), lr 1e-4, no weight decay, gradient clipping
at 1, EMA 0.9999, bfloat16; model guidance omega 0.6 on t in [0, 0.7] (learned CFG scale 2.5),
label dropout 0.1; FM + MF losses with the learned log-variance (recipes.dmf).

  python -m fewstep_jax.main --config=configs/dmf_imagenet256.py --workdir=runs/dmf_imagenet256_xl \\
      --config.train.init_from=runs/flow_imagenet256_xl \\
      --config.eval.vae_weights=PATH/sd-vae-ft-mse/diffusion_pytorch_model.safetensors

(runs/flow_imagenet256_xl: a `flow` run with this config's data and model sections.) From REPA's
and SiT's released files:

  python -m fewstep_jax.main --config=configs/dmf_imagenet256.py --workdir=runs/dmf_imagenet256_repa \
      --config.train.init_from=last.pt --config.model.time_endpoint=False \
      --config.eval.vae_weights=PATH/sd-vae-ft-mse/diffusion_pytorch_model.safetensors
  python -m fewstep_jax.main --config=configs/dmf_imagenet256.py --workdir=runs/dmf_imagenet256_sit \
      --config.train.init_from=SiT-XL-2-256.pt --config.model.time_endpoint=False --config.model.learn_sigma=True \
      --config.eval.vae_weights=PATH/sd-vae-ft-mse/diffusion_pytorch_model.safetensors

Data: configs/meanflow_imagenet256.py shows the prepare command (preset sd, the latents of SiT's and
REPA's training: 0.18215 z of [-1, 1] images; prepared without --flip).
Variants: `:smoke`.
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants()


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.latents("imagenet256_latents", conditional=True, preset="sd")
    c.model = recipes.dit("XL", 2, "bfloat16")
    c.model.use_d = False  # the flow network has one time input; the decoupling feeds r to its late blocks
    # Listed so that a command line can set them for SiT's and REPA's files (docs/PRETRAINED.md).
    c.model.update(dict(time_endpoint=True, learn_sigma=False))
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
