"""sCD on class-conditional ImageNet 512x512 in latent space, sCM (Lu & Song 2024) App. G: the
suite's headline.

Targets (FID-50k, 1 step / 2 steps), sCM Table 3: sCD-XXL 2.28 / 1.88 (teacher 1.73 at NFE 126).
As configs/scm_sct_imagenet512.py with dropout 0-0.10 by size, 200k iterations, and the TrigFlow
teacher (its EMA, eval mode) for dx_t/dt with classifier-free guidance s ~ U[1, 2] per example,
s fed to the student as its second input (model.use_d); sCM's latent preset, sd-vae-ft-mse decoder.

  python -m fewstep_jax.main --config=configs/scm_scd_imagenet512.py:xxl --workdir=runs/scm_scd_imagenet512_xxl \\
      --config.train.init_from=runs/trigflow_imagenet512_xxl --config.method.teacher=runs/trigflow_imagenet512_xxl \\
      --config.eval.vae_weights=PATH/sd-vae-ft-mse/diffusion_pytorch_model.safetensors

Data: configs/trigflow_imagenet512.py shows the prepare command.

The teacher may instead be NVlabs' released EDM2 ImageNet-512 model of the size (FID presets,
https://nvlabs-fi-cdn.nvidia.com/edm2/posthoc-reconstructions/edm2-img512-{s-2147483-0.130,
m-2147483-0.100, l-1879048-0.085, xl-1342177-0.085, xxl-0939524-0.070}.pkl), through the exact
EDM -> TrigFlow conversion as configs/scm_scd_imagenet64.py does, with the student starting from
it. Three departures from this recipe, each forced by the files: (1) the data must be the latents
EDM2 was trained on, imagenet512_latents prepared with --latent_preset=edm2 (EDM2's statistics
and [0, 1] VAE input; sCM's 'scm' preset normalizes differently), set by
--config.data.latent_preset=edm2; (2) no teacher guidance: the released conditional models were
trained without label dropout, so they have no unconditional output at the null label (EDM2 guides
with separate unconditional files), hence --config.method.teacher_guidance_max=1.0 and a student
without the guidance input (--config.model.use_d=False); (3) the conversion's c_noise =
ln(sigma_d tan t) / 4 instead of sCM's c_noise = t (sec. 4.1). No paper reports this run.

  python -m fewstep_jax.main --config=configs/scm_scd_imagenet512.py:s --workdir=runs/scm_scd_imagenet512_s_edm2 \
      --config.method.teacher=edm2-img512-s-2147483-0.130.pkl --config.train.init_from=edm2-img512-s-2147483-0.130.pkl \
      --config.model.fourier_params=True --config.model.time_map=edm_as_trigflow --config.model.use_d=False \
      --config.method.teacher_guidance_max=1.0 --config.data.latent_preset=edm2 \
      --config.eval.vae_weights=PATH/sd-vae-ft-mse/diffusion_pytorch_model.safetensors

(docs/PRETRAINED.md: every size.)
Variants: `:s` (default), `:m`, `:l`, `:xl`, `:xxl`, `:smoke`.
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants(sizes=("s", "m", "l", "xl", "xxl"))


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.scm_imagenet512(variant.size, distill=True)
    if variant.smoke:
        recipes.latent_smoke(c)
    return c
