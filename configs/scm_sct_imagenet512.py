"""sCT on class-conditional ImageNet 512x512 in latent space, sCM (Lu & Song 2024) App. G.

Targets (FID-50k, 1 step / 2 steps), sCM Table 3: sCT-XXL 4.29 / 3.76 (sCD-XXL 2.28 / 1.88,
teacher 1.73 at NFE 126).
From the TrigFlow teacher's EMA of the same size (configs/trigflow_imagenet512.py); Adam with
lr = teacher lr / 100 and the teacher's decay, proposal P(-0.8, 1.6), dropout 0.25-0.35 by size,
tangent normalization c = 0.1, H = 10k, t_mid = 1.1, 100k iterations, batch 2048; sCM's latent
preset (data.latent_preset='scm'), decoded with sd-vae-ft-mse for FID and FD-DINOv2.

  python -m fewstep_jax.main --config=configs/scm_sct_imagenet512.py:xxl --workdir=runs/scm_sct_imagenet512_xxl \\
      --config.train.init_from=runs/trigflow_imagenet512_xxl \\
      --config.eval.vae_weights=PATH/sd-vae-ft-mse/diffusion_pytorch_model.safetensors

Data: configs/trigflow_imagenet512.py shows the prepare command.
Variants: `:s` (default), `:m`, `:l`, `:xl`, `:xxl`, `:smoke`.
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants(sizes=("s", "m", "l", "xl", "xxl"))


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.scm_imagenet512(variant.size, distill=False)
    if variant.smoke:
        recipes.latent_smoke(c)
    return c
