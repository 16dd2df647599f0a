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
