"""Align Your Flow on class-conditional ImageNet 64x64 (pixels), Sabour, Fidler, Kreis 2025
(arXiv 2506.14603): Eulerian flow-map distillation of an EDM2 diffusion model.

Teacher: configs/edm_imagenet64.py of the same size (EDM preconditioning; method.teacher_kind
'edm'), its EMA in eval mode, converted to the flow-map convention (sigma = t / (1 - t),
v = (z - D) / t, t <= 80/81). Student: the EDM2 UNet of that size with the interval input
(model.use_d), trained from scratch with the teacher's optimizer at 1/100 of its learning rate
(as sCM tunes EDM2 models; AYF's optimizer and length are not confirmed here: unverified),
batch 2048, 200k iterations, tangent normalization c = 0.1, r_w warmed up to 0.99 over 10k.
The paper reports ImageNet-64 results for AYF (the figures are not confirmed here); its
autoguided variant needs a weaker teacher run: --config.method.weak_teacher=DIR
--config.method.autoguidance=LAMBDA. Not implemented: the adversarial fine-tune.

  python -m fewstep_jax.main --config=configs/edm_imagenet64.py:s --workdir=runs/edm_imagenet64_s
  python -m fewstep_jax.main --config=configs/ayf_imagenet64.py:s --workdir=runs/ayf_imagenet64_s

The teacher may instead be NVlabs' released EDM2 model of the size (method.teacher = the .pkl or
its import_weights folder; an EDM-preconditioned denoiser, teacher_kind 'edm' as set here), e.g.
EDM2's FID preset of S (https://nvlabs-fi-cdn.nvidia.com/edm2/posthoc-reconstructions/; M / L / XL:
edm2-img64-m-2147483-0.060.pkl, -l-1073741-0.040.pkl, -xl-0671088-0.040.pkl):

  python -m fewstep_jax.main --config=configs/ayf_imagenet64.py:s --workdir=runs/ayf_imagenet64_s_edm2 \
      --config.method.teacher=edm2-img64-s-1073741-0.075.pkl

or autoguided as EDM2's own autoguidance preset of S (edm2-img64-s-autog-fid: guiding model
edm2-img64-xs-0134217-0.110.pkl, weight 1.70; whether AYF used that pairing is unverified):

  python -m fewstep_jax.main --config=configs/ayf_imagenet64.py:s --workdir=runs/ayf_imagenet64_s_autog \
      --config.method.teacher=edm2-img64-s-1073741-0.045.pkl \
      --config.method.weak_teacher=edm2-img64-xs-0134217-0.110.pkl --config.method.autoguidance=1.7

The student starts from scratch either way (its flow-map network takes t in [0, 1] and the
interval, not EDM's c_noise). docs/PRETRAINED.md lists the command of every size.
ImageNet-64: `python -m fewstep_jax.data.prepare --dataset=imagenet64 --manual_dir=DIR` (docs/DATA.md).
Variants: `:s` (default), `:m`, `:l`, `:xl`, `:smoke`.
"""

from fewstep_jax import config_lib, recipes

VARIANTS = config_lib.Variants(sizes=("s", "m", "l", "xl"))


def get_config(arg: str | None = None):
    variant = VARIANTS.parse(arg)
    c = recipes.imagenet64(variant.size)
    c.model.update(dict(use_d=True, dropout=0.0))
    c.method = recipes.ayf(f"runs/edm_imagenet64_{variant.size}", teacher_kind="edm")
    c.optim.lr = c.optim.lr / 100
    c.train.num_steps = 200_000
    c.eval.update(dict(sampler="euler", nfes=(1, 2, 4)))
    if variant.smoke:
        config_lib.smoke(c)
        c.method.tangent_warmup = 10
    return c
