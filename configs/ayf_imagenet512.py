"""Align Your Flow on class-conditional ImageNet 512x512 in latent space, Sabour, Fidler, Kreis 2025
(arXiv 2506.14603): Eulerian flow-map distillation of an EDM2 latent diffusion model, autoguided.

Targets (FID-50k, AYF-S): 4 steps 1.70 with autoguidance (2.32 with CFG instead), 1 step 3.32;
after the adversarial fine-tune (not implemented here) 1.64 / 1.92. sCD-S reproduced by the
authors: 1.84 at 4 steps. LMD (method.objective='lagrangian') over-smooths: 4-step 6.70.
Data: the SD-VAE latents (64x64x4) under EDM2's preset (data.latent_preset='edm2'), decoded with
sd-vae-ft-mse. Teacher: an EDM2 model with EDM preconditioning on these latents (method.teacher,
teacher_kind 'edm'): NVlabs' released EDM2 ImageNet-512 files are exactly that (the .pkl or its
import_weights folder; their latents are the 'edm2' preset, checked), or a run of the suite
trained with configs/edm_imagenet64.py's method on this data (the suite has no ImageNet-512 EDM
config of its own); autoguided by a weaker model of the same kind (method.weak_teacher, lambda =
method.autoguidance = 2.0: unverified). Student: EDM2-`size` with the
interval input, trained from scratch at 1/100 of the EDM2 learning rate, batch 2048, 200k
iterations (unverified), tangent normalization c = 0.1, r_w warmed up to 0.99 over 10k.

  python -m fewstep_jax.data.prepare --dataset=imagenet512_latents --manual_dir=IMAGENET \\
      --vae_weights=PATH/sd-vae-ft-mse/diffusion_pytorch_model.safetensors --latent_preset=edm2
  python -m fewstep_jax.main --config=configs/ayf_imagenet512.py:s --workdir=runs/ayf_imagenet512_s \\
      --config.eval.vae_weights=PATH/sd-vae-ft-mse/diffusion_pytorch_model.safetensors
(teacher runs/edm_imagenet512_s, weaker teacher runs/edm_imagenet512_s_weak; override with
--config.method.teacher=DIR --config.method.weak_teacher=DIR).

From NVlabs' released files (https://nvlabs-fi-cdn.nvidia.com/edm2/posthoc-reconstructions/), S
autoguided as EDM2's autoguidance preset edm2-img512-s-autog-fid (teacher s-2147483-0.070, guiding
model xs-0134217-0.125, weight 2.10; whether AYF used that pairing is unverified):

  python -m fewstep_jax.main --config=configs/ayf_imagenet512.py:s --workdir=runs/ayf_imagenet512_s_edm2 \
      --config.method.teacher=edm2-img512-s-2147483-0.070.pkl \
      --config.method.weak_teacher=edm2-img512-xs-0134217-0.125.pkl --config.method.autoguidance=2.1 \
      --config.eval.vae_weights=PATH/sd-vae-ft-mse/diffusion_pytorch_model.safetensors

EDM2 released no guiding model for M, L and XL; their commands (docs/PRETRAINED.md) distill EDM2's
FID preset of the size unguided (--config.method.autoguidance=1.0), e.g. M:
--config.method.teacher=edm2-img512-m-2147483-0.100.pkl --config.method.autoguidance=1.0. The
student starts from scratch (its flow-map network takes t in [0, 1] and the interval, not EDM's
c_noise).

Variants: `:s` (default), `:m`, `:l`, `:xl`, `:smoke`.
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants(sizes=("s", "m", "l", "xl"))


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.latents("imagenet512_latents", conditional=True, preset="edm2", decoder="ft-mse")
    c.model = recipes.edm2(variant.size, 0.0)
    c.model.use_d = True
    lr, _, _ = recipes.IMAGENET512_SIZES[variant.size]
    c.method = recipes.ayf(f"runs/edm_imagenet512_{variant.size}", teacher_kind="edm",
                           weak_teacher=f"runs/edm_imagenet512_{variant.size}_weak", autoguidance=2.0)  # fmt: skip
    c.optim.update(dict(name="adam", lr=lr / 100, b1=0.9, b2=0.99, eps=1e-11, schedule="inverse_sqrt",
                        decay_steps=70_000))  # fmt: skip
    c.train.update(dict(num_steps=200_000, batch_size=2048, ema_decays=(), ema_halflives=(), ema_sigma_rels=(0.05,)))
    c.eval.update(dict(sampler="euler", nfes=(1, 2, 4)))
    if variant.smoke:
        recipes.latent_smoke(c)
        c.method.tangent_warmup = 10
    return c
