"""Paper recipes: network presets, dataset presets and one method section per paper.

A config file (`configs/<method>_<dataset>.py`) is one dataset preset or tuning recipe from here
plus a method section from here plus its own few lines; it never loads another config file.
Defaults live in `config_lib.base_config()` only; each paper's values live here only, in a
function whose docstring cites the section, table or appendix they come from.

  networks   toy_mlp, digits_unet, ddpmpp_unet, edm2, dit
  datasets   toy2d, digits, cifar10, imagenet64, latents: whole configs (data, network and the
             teacher's optimizer and budget; the method section is the config's to set)
  methods    trigflow, edm, flow, shortcut, meanflow, meanflow_imagenet256, scm, ect, sct
  tuning     scm_*, ect_* and shortcut_latents: a method's recipe on one dataset (its pretrained
             model, optimizer and budget), shared by the configs that differ only in a few keys
"""

from __future__ import annotations

from typing import Any

import ml_collections

from fewstep_jax import config_lib

ConfigDict = ml_collections.ConfigDict

# ---------------------------------------------------------------------------
# Networks


def toy_mlp(**overrides: Any) -> ConfigDict:
    """The MLP of every toy2d experiment (4 x 256, a 128-wide time embedding)."""
    return ConfigDict(dict(dict(name="mlp", hidden=256, depth=4, emb_dim=128, time_scale=1.0), **overrides))


def digits_unet(**overrides: Any) -> ConfigDict:
    """The small DDPM++-style UNet of every digits experiment (32 channels, 756k parameters)."""
    cfg = dict(
        name="unet",
        channels=32,
        channel_mult=(1, 2),
        num_blocks=1,
        attn_resolutions=(4,),
        dropout=0.0,
        time_scale=1.0,
        # 'adaptive_double' is sCM's adaptive double normalization (sec. 4.1); the digits
        # results in docs/RESULTS.md use the DDPM++ default.
        emb_norm="adaptive_scale",
    )
    return ConfigDict(dict(cfg, **overrides))


def ddpmpp_unet(**overrides: Any) -> ConfigDict:
    """EDM's DDPM++ for CIFAR-10 (Karras et al. 2022, App. F.2: SongUNet with
    model_channels 128, channel_mult [2, 2, 2], channel_mult_emb 4, num_blocks 4, attention at
    16x16, dropout 0.13, resampling residual blocks with the filter [1, 1] and a 1x1 skip
    projection, attention only on the last decoder block of a level, the embedding added before
    the second GroupNorm, GroupNorm eps 1e-6 with >= 4 channels per group): ~55.7M parameters
    unconditional. `emb_norm='adaptive_double'` gives sCM's variant (sec. 4.1). label_embed,
    time_map, noise_dim, embedding_type, encoder_type and resample_filter are listed so that a
    command line can set them (models/pretrained: EDM's label input, the exact EDM -> TrigFlow
    conversion of an imported EDM model, EDM's NCSN++ ('-ve' files: embedding_type=fourier,
    noise_dim=256, encoder_type=residual, resample_filter=1,3,3,1, ~56.4M parameters);
    docs/PRETRAINED.md)."""
    cfg = dict(
        name="unet",
        channels=128,
        channel_mult=(2, 2, 2),
        num_blocks=4,
        attn_resolutions=(16,),
        dropout=0.13,
        time_scale=1.0,
        emb_norm="additive",
        resample="residual",
        resample_filter=(1, 1),
        decoder_attn="last",
        norm_eps=1e-6,
        min_group_size=4,
        label_embed="table",
        time_map="identity",
        noise_dim=0,
        embedding_type="positional",
        encoder_type="standard",
    )
    return ConfigDict(dict(cfg, **overrides))


def adm(**overrides: Any) -> ConfigDict:
    """ADM as EDM trains it on ImageNet-64 (Karras et al. 2022, train.py --arch=adm: EDM's
    DhariwalUNet, models/adm.py): 192 channels x [1, 2, 3, 4], 3 blocks per level, attention at
    32 / 16 / 8 with heads of 64 channels, dropout 0.1: ~296M parameters with 1000 classes, the
    network of edm-imagenet-64x64-cond-adm.pkl. time_map is listed so that a command line can set
    it (the exact EDM -> TrigFlow conversion; docs/PRETRAINED.md)."""
    cfg = dict(
        name="adm",
        channels=192,
        channel_mult=(1, 2, 3, 4),
        num_blocks=3,
        attn_resolutions=(32, 16, 8),
        dropout=0.1,
        channels_per_head=64,
        time_map="identity",
    )
    return ConfigDict(dict(cfg, **overrides))


def edm2(size: str, dropout: float) -> ConfigDict:
    """EDM2's magnitude-preserving UNet (Karras et al. 2024); `size` S/M/L/XL picks 192 / 256 /
    320 / 384 channels (models.EDM2_SIZES; channels=None lets the size decide). fourier_params
    and time_map are listed so that a command line can set them for NVlabs' released EDM2 models
    (their stored Fourier features; the exact EDM -> TrigFlow conversion; docs/PRETRAINED.md)."""
    return ConfigDict(
        dict(name="edm2", size=size, channels=None, dropout=dropout, dropout_res=0, fourier_params=False,
             time_map="identity")
    )


def dit(size: str, patch: int, dtype: str) -> ConfigDict:
    """DiT-`size`/`patch` (Peebles & Xie 2023, Table 1) conditioned on t and a second scalar (`d`:
    the shortcut step size, MeanFlow's interval h)."""
    return ConfigDict(dict(name="dit", size=size, patch=patch, use_d=True, dtype=dtype))


# ---------------------------------------------------------------------------
# Datasets: whole configs with the teacher's network, optimizer and budget


def toy2d(distribution: str = "checkerboard") -> ConfigDict:
    """2-D toy data (std ~1 per coordinate), the MLP, Adam 1e-3 with a cosine decay to 0.1x,
    3,000 steps at batch 512, EMA 0.995; metric: sliced Wasserstein distance."""
    c = config_lib.base_config()
    c.data = ConfigDict(dict(name="toy2d", distribution=distribution))
    c.model = toy_mlp()
    c.optim.update(dict(lr=1e-3, schedule="cosine", end_factor=0.1))
    c.train.update(
        dict(num_steps=3000, batch_size=512, ema_decays=(0.995,), checkpoint_every=1000, sample_every=3000,
             eval_every=3000)
    )
    c.eval.nfes = (1, 2, 4, 8, 16)
    return c


def digits(conditional: bool = True) -> ConfigDict:
    """sklearn digits (8x8, 10 classes, embedded), the digits UNet, Adam 2e-3 with 100 warmup
    steps and a cosine decay to 0.1x, 1,200 steps at batch 128, EMA 0.995; metric: Frechet
    distance in the features of the suite's digits classifier."""
    c = config_lib.base_config()
    c.data = ConfigDict(dict(name="digits", conditional=conditional))
    c.model = digits_unet()
    c.optim.update(dict(name="adam", lr=2e-3, schedule="cosine", end_factor=0.1, warmup_steps=100))
    c.train.update(
        dict(num_steps=1200, batch_size=128, ema_decays=(0.995,), checkpoint_every=400, sample_every=1200,
             eval_every=1200)
    )
    c.eval.update(dict(nfes=(1, 2, 4, 8), sampler="euler"))
    return c


def cifar10(conditional: bool = False) -> ConfigDict:
    """CIFAR-10 with sCM's TrigFlow teacher recipe (Lu & Song 2024, App. G): EDM's DDPM++ with
    adaptive double normalization (sec. 4.1), dropout 0.13, Adam 1e-3 (0.9, 0.999), batch 512,
    400k iterations, EMA half-life 0.5 Mimg; FID-50k with Heun at 18 steps (NFE 35, Table 1)."""
    c = config_lib.base_config()
    c.data = ConfigDict(dict(name="cifar10", conditional=conditional, data_dir=""))
    c.model = ddpmpp_unet(dropout=0.13, emb_norm="adaptive_double")
    c.optim.update(dict(name="adam", lr=1e-3, b1=0.9, b2=0.999, schedule="constant"))
    c.train.update(
        dict(num_steps=400_000, batch_size=512, ema_decays=(), ema_halflives=(500_000.0,), log_every=100,
             checkpoint_every=10_000, sample_every=10_000, eval_every=50_000)
    )
    c.eval.update(dict(sampler="heun", nfes=(18,), num_samples=50_000))
    return c


#: size -> (learning rate, dropout) of EDM2's ImageNet-64 presets (EDM2 Table 3 / config G; sCM
#: App. G trains its teachers with them).
IMAGENET64_SIZES = {"s": (1e-2, 0.0), "m": (9e-3, 0.1), "l": (8e-3, 0.1), "xl": (7e-3, 0.1)}


def imagenet64(size: str) -> ConfigDict:
    """Class-conditional ImageNet 64x64 with EDM2's training recipe as sCM App. G uses it: the
    EDM2 UNet of `size`, Adam (0.9, 0.99) with eps 1e-11 and the size's lr decayed as
    lr / sqrt(max(it / 35k, 1)), batch 2048, 400k iterations, EDM2's power EMA sigma_rel 0.05
    (EDM2 sec. 3.1); FID-50k with Heun at 32 steps (NFE 63, sCM Table 2)."""
    lr, dropout = IMAGENET64_SIZES[size]
    c = config_lib.base_config()
    c.data = ConfigDict(dict(name="imagenet64", conditional=True, data_dir=""))
    c.model = edm2(size, dropout)
    c.optim.update(dict(name="adam", lr=lr, b1=0.9, b2=0.99, eps=1e-11, schedule="inverse_sqrt", decay_steps=35_000))
    c.train.update(
        dict(num_steps=400_000, batch_size=2048, ema_decays=(), ema_halflives=(), ema_sigma_rels=(0.05,),
             log_every=100, checkpoint_every=10_000, sample_every=10_000, eval_every=50_000)
    )
    c.eval.update(dict(sampler="heun", nfes=(32,), num_samples=50_000))
    return c


def latents(dataset: str, conditional: bool, preset: str = "sd", decoder: str = "ft-mse") -> ConfigDict:
    """VAE latents of the Stable Diffusion VAE (32x32x4 at 256 px, 64x64x4 at 512 px) under the
    latent `preset` (data/latents.py), decoded with `decoder` for sample grids and metrics
    (eval.vae_weights: that VAE's file); FID and FD-DINOv2 every 50k steps. The network and
    budget are the method's (shortcut_latents, configs/meanflow_imagenet256.py, scm_imagenet512)."""
    c = config_lib.base_config()
    c.data = ConfigDict(dict(name=dataset, conditional=conditional, latent_preset=preset, data_dir=""))
    c.train.update(dict(log_every=100, checkpoint_every=10_000, sample_every=10_000, eval_every=50_000))
    c.eval.update(dict(sampler="euler", num_samples=50_000, vae_decoder=decoder, batch_size=250))
    return c


def latent_smoke(c: ConfigDict) -> ConfigDict:
    """`:smoke` of a latent config: the shared smoke settings, and grids without metrics, since
    decoding and scoring 256 px images takes minutes on a CPU."""
    config_lib.smoke(c)
    c.train.eval_every = 0
    return c


#: size -> (teacher lr, sCT dropout, sCD dropout) of sCM's ImageNet-512 models (App. G: EDM2's
#: ImageNet-512 learning rates; sCT dropout 0.25-0.35 and sCD 0-0.10 by size, as we read them).
IMAGENET512_SIZES = {
    "s": (1e-2, 0.25, 0.0), "m": (9e-3, 0.25, 0.0), "l": (8e-3, 0.30, 0.05), "xl": (7e-3, 0.30, 0.10),
    "xxl": (6.5e-3, 0.35, 0.10),
}


def imagenet512(size: str) -> ConfigDict:
    """Class-conditional ImageNet 512x512 in the SD-VAE latent space (64x64x4) with the sCM
    preset (App. G.1: per-channel statistics, data std 0.5, decoded with ft-mse), the TrigFlow
    teacher's recipe: EDM2 UNet of `size` at 64x64, Adam (0.9, 0.99) eps 1e-11 with the size's
    lr and inverse-sqrt decay from t_ref 70k, label dropout 0.1, P(-0.4, 1.0), batch 2048, power
    EMA sigma_rel 0.05."""
    lr, _, _ = IMAGENET512_SIZES[size]
    c = latents("imagenet512_latents", conditional=True, preset="scm", decoder="ft-mse")
    c.model = edm2(size, 0.0)
    c.optim.update(dict(name="adam", lr=lr, b1=0.9, b2=0.99, eps=1e-11, schedule="inverse_sqrt", decay_steps=70_000))
    c.train.update(dict(batch_size=2048, ema_decays=(), ema_halflives=(), ema_sigma_rels=(0.05,)))
    c.eval.update(dict(sampler="heun", nfes=(63,)))
    return c


# ---------------------------------------------------------------------------
# Method sections


def trigflow(sigma_d: float = 0.5, p_mean: float = -1.0, p_std: float = 1.4, label_dropout: float = 0.0,
             **extra: Any) -> ConfigDict:
    """TrigFlow diffusion (sCM sec. 3) with EDM2's learned loss weighting; the time proposal
    P(-1.0, 1.4) is sCM's CM proposal (App. G lists none for the teacher)."""
    return ConfigDict(dict(name="trigflow", sigma_d=sigma_d, p_mean=p_mean, p_std=p_std, learned_weighting=True,
                           **extra, label_dropout=label_dropout))


def edm(sigma_d: float = 0.5, p_mean: float = -1.2, p_std: float = 1.2, label_dropout: float = 0.0,
        **extra: Any) -> ConfigDict:
    """EDM diffusion (Karras et al. 2022, Table 1): preconditioning, ln sigma ~ N(-1.2, 1.2^2),
    the EDM loss weighting."""
    return ConfigDict(dict(name="edm", sigma_d=sigma_d, p_mean=p_mean, p_std=p_std, **extra,
                           label_dropout=label_dropout))


def flow(label_dropout: float = 0.0) -> ConfigDict:
    """Flow matching (rectified flow; t = 0 noise, t = 1 data), uniform t: the baseline of the
    shortcut (Frans et al. 2024) and MeanFlow (Geng et al. 2025) papers."""
    return ConfigDict(dict(name="flow", noise_std=1.0, t_sampling="uniform", label_dropout=label_dropout))


def shortcut(label_dropout: float = 0.0, cfg_scale: float = 1.0) -> ConfigDict:
    """Shortcut model (Frans et al. 2024, sec. 3 and the official code): 1/4 of each batch
    bootstraps, M = 128 smallest steps, guidance `cfg_scale` baked into the finest level."""
    return ConfigDict(dict(name="shortcut", num_steps_max=128, bootstrap_every=4, label_dropout=label_dropout,
                           cfg_scale=cfg_scale))


def shortcut_training(c: ConfigDict) -> ConfigDict:
    """The shortcut paper's optimizer (Frans et al. 2024, App. / official code): AdamW 1e-4
    (0.9, 0.999), weight decay 0.1, constant lr, no clipping; EMA 0.999 every step."""
    c.optim.update(dict(name="adamw", lr=1e-4, b1=0.9, b2=0.999, weight_decay=0.1, schedule="constant"))
    c.train.update(dict(ema_decays=(0.999,), ema_halflives=()))
    return c


def meanflow(label_dropout: float = 0.0) -> ConfigDict:
    """MeanFlow (Geng et al. 2025) with the official PyTorch code's CIFAR-10 recipe
    (scripts/cifar10_v1.sh): t ~ logit-normal(-0.6, 1.6), r ~ logit-normal(-4.0, 1.6),
    r = min(t, r) (tr_sampler v1), 75% of rows with r != t, adaptive weight p = 0.75, c = 1e-3,
    no guidance folded into training; dropped labels are the first rows (r = t)."""
    return ConfigDict(
        dict(name="meanflow", t_sampling="logit_normal", t_logit_mean=-0.6, t_logit_std=1.6, r_logit_mean=-4.0,
             r_logit_std=1.6, tr_order="clamp_r", ratio_r_neq_t=0.75, label_dropout=label_dropout,
             label_dropout_policy="first_rows", cfg_omega=1.0, cfg_kappa=0.0, adaptive_p=0.75, adaptive_c=1e-3)
    )


def meanflow_imagenet256() -> ConfigDict:
    """MeanFlow's ImageNet-256 recipe (Geng et al. 2025, Tables 1-2; official JAX code,
    configs/default.py, run_b4.yml): t, r ~ logit-normal(-0.4, 1.0) sorted, 25% of rows with
    r != t, class dropout 0.1 on the first rows (cond_drop), guidance omega 1.0, kappa 0.5 folded
    into training on [0, 1], adaptive weight p = 1.0, c = 0.01."""
    return ConfigDict(
        dict(name="meanflow", t_sampling="logit_normal", t_logit_mean=-0.4, t_logit_std=1.0, r_logit_mean=-0.4,
             r_logit_std=1.0, tr_order="sort", ratio_r_neq_t=0.25, label_dropout=0.1,
             label_dropout_policy="first_rows", cfg_omega=1.0, cfg_kappa=0.5, cfg_t_start=0.0, cfg_t_end=1.0,
             adaptive_p=1.0, adaptive_c=0.01)
    )


def scm(name: str = "scm_sct", **overrides: Any) -> ConfigDict:
    """sCM consistency tuning (sCT) / distillation (sCD), Lu & Song 2024, App. G (CIFAR-10):
    sigma_d 0.5, P(-1.0, 1.4), tangent warmup H = 10k, tangent normalization c = 0.1, adaptive
    weighting, 2-step t_mid = 1.1."""
    cfg = dict(name=name, sigma_d=0.5, p_mean=-1.0, p_std=1.4, tangent_warmup=10_000, tangent_norm=True,
               tangent_norm_c=0.1, adaptive_weighting=True, t_mid=1.1)
    return ConfigDict(dict(cfg, **overrides))


def ect(**overrides: Any) -> ConfigDict:
    """ECT (Geng et al. 2024) with the official code's CIFAR-10 recipe (sec. 5): P(-1.1, 2.0),
    the sigmoid mapping q = 2, k = 8, b = 1 with stages of d = 25k iterations and the code's
    q^(stage + 1) (stage_offset 1), weighting 1 / (t - r), pseudo-Huber c = 0 (the L2 norm),
    eval-mode sigma_min shift 0.003, 2-step t_mid = 0.821."""
    cfg = dict(name="ect", sigma_d=0.5, p_mean=-1.1, p_std=2.0, mapping="stages", q=2.0, stage_length=25_000, k=8.0,
               b=1.0, stage_offset=1, huber_c=0.0, weighting="inv_dt", sigma_min_shift=0.003, t_mid=0.821,
               label_dropout=0.0)
    return ConfigDict(dict(cfg, **overrides))


def sct(ect_section: ConfigDict, **extra: Any) -> ConfigDict:
    """SCT (Wang, Geng, Li 2024) on an ECT section: the variance-reduced score-identity target
    from the mini-batch (sec. 3.2) and the smooth schedule q^(1 + it / d) (methods/sct.py)."""
    ect_section.update(dict(name="sct", mapping="smooth", reference_set="batch", **extra))
    return ect_section


# ---------------------------------------------------------------------------
# Tuning recipes: a method on one dataset, shared by more than one config


def scm_cifar10() -> ConfigDict:
    """sCT on CIFAR-10, sCM App. G: from the TrigFlow teacher's EMA, dropout 0.20, RAdam 1e-4
    (0.9, 0.99) without a schedule, batch 512; 400k iterations as the ECT-matched ablation
    (App. E.3); 1- and 2-step Euler evaluation."""
    c = cifar10()
    c.model.dropout = 0.2
    c.method = scm("scm_sct")
    c.optim.update(dict(name="radam", lr=1e-4, b1=0.9, b2=0.99, schedule="constant"))
    c.train.init_from = "runs/trigflow_cifar"
    c.eval.update(dict(sampler="euler", nfes=(1, 2)))
    return c


def scm_imagenet64(size: str) -> ConfigDict:
    """sCT on ImageNet-64, sCM App. G: from the TrigFlow teacher of the same size, Adam with
    lr = teacher lr / 100 and the same decay, P(-1.0, 1.6), dropout 0.45 at resolutions <= 16,
    c = 0.1, H = 10k, t_mid = 1.1, 400k iterations, batch 2048."""
    c = imagenet64(size)
    c.model.update(dict(dropout=0.45, dropout_res=16))
    c.method = ConfigDict(
        dict(name="scm_sct", sigma_d=0.5, p_mean=-1.0, p_std=1.6, tangent_warmup=10_000, tangent_norm_c=0.1, t_mid=1.1)
    )
    c.optim.lr = c.optim.lr / 100
    c.train.init_from = f"runs/trigflow_imagenet64_{size}"
    c.eval.update(dict(sampler="euler", nfes=(1, 2)))
    return c


def scm_imagenet512(size: str, distill: bool) -> ConfigDict:
    """sCT / sCD on ImageNet-512 latents, sCM App. G: from the TrigFlow teacher of the same size,
    Adam with lr = teacher lr / 100 and the teacher's decay, P(-0.8, 1.6), c = 0.1, H = 10k,
    t_mid = 1.1, batch 2048; sCT 100k iterations with dropout 0.25-0.35, sCD 200k with dropout
    0-0.10 and the teacher's classifier-free guidance s ~ U[1, 2] fed to the student (model.use_d)."""
    _, sct_dropout, scd_dropout = IMAGENET512_SIZES[size]
    c = imagenet512(size)
    c.model.update(dict(dropout=scd_dropout if distill else sct_dropout, dropout_res=0))
    c.method = scm("scm_scd" if distill else "scm_sct", p_mean=-0.8, p_std=1.6)
    c.optim.lr = c.optim.lr / 100
    c.train.update(dict(num_steps=200_000 if distill else 100_000))
    c.train.init_from = f"runs/trigflow_imagenet512_{size}"
    if distill:
        c.method.update(dict(teacher=c.train.init_from, teacher_guidance_min=1.0, teacher_guidance_max=2.0))
        c.model.use_d = True
    c.eval.update(dict(sampler="euler", nfes=(1, 2)))
    return c


def scm_digits() -> ConfigDict:
    """sCT on digits: App. G scaled to the 1,200-step budget (H = 200 of 1,200 as 10k of 400k),
    RAdam 2e-4 (0.9, 0.99), from runs/trigflow_digits."""
    c = digits()
    c.method = scm("scm_sct", tangent_warmup=200)
    c.optim.update(dict(name="radam", lr=2e-4, b2=0.99, schedule="constant", warmup_steps=0))
    c.train.init_from = "runs/trigflow_digits"
    c.eval.nfes = (1, 2, 4)
    return c


def scm_toy2d() -> ConfigDict:
    """sCT on toy2d: sigma_d = 1, the teacher's P(-0.4, 1.4), H = 300, and the paper's
    re-noising level sigma_mid = 0.5 tan(1.1) = 0.98 kept (not t_mid); from runs/trigflow_toy2d."""
    c = toy2d()
    c.method = ConfigDict(dict(name="scm_sct", sigma_d=1.0, p_mean=-0.4, p_std=1.4, tangent_warmup=300, sigma_mid=0.98))
    c.optim.update(dict(name="radam", lr=2e-4, b2=0.99, schedule="constant"))
    c.train.init_from = "runs/trigflow_toy2d"
    c.eval.nfes = (1, 2, 4)
    return c


def ect_cifar10(conditional: bool = False) -> ConfigDict:
    """ECT on CIFAR-10 (Geng et al. 2024, official code): from the EMA of EDM's DDPM++ (additive
    embedding and EDM's label input, as configs/edm_cifar.py and the released EDM files), dropout
    0.2, RAdam 1e-4 (0.9, 0.999), batch 128, 400k iterations, EMA 0.9999; 1- and 2-step Euler
    evaluation."""
    c = cifar10(conditional)
    c.model.update(dict(emb_norm="additive", label_embed="onehot_linear", dropout=0.2))
    c.method = ect()
    c.optim.update(dict(name="radam", lr=1e-4, b1=0.9, b2=0.999, schedule="constant", warmup_steps=0))
    c.train.update(dict(num_steps=400_000, batch_size=128, ema_decays=(0.9999,), ema_halflives=()))
    c.train.init_from = "runs/edm_cifar" + ("_cond" if conditional else "")
    c.eval.update(dict(sampler="euler", nfes=(1, 2)))
    return c


#: size -> (learning rate, dropout) of ECT's ImageNet-64 code (`imgnet` branch).
ECT_IMAGENET64_SIZES = {"s": (1e-3, 0.4), "m": (9e-4, 0.5)}


def ect_imagenet64(size: str) -> ConfigDict:
    """ECT on ImageNet-64 (Geng et al. 2024, Table 2 and the `imgnet` branch): from the EDM2
    model of `size`, Adam (0.9, 0.99) with lr / sqrt(max(it / 2000, 1)), batch 128, 100k
    iterations, dropout at resolutions <= 16, P(-0.8, 1.6), q = 4, d = 25k, pseudo-Huber c = 0.06,
    weighting 1 / t^2 + 1 / sigma_d^2, 2-step t = 1.526; EMA 0.9999 plus EDM2's power EMAs
    sigma_rel 0.01 / 0.05 / 0.10."""
    lr, dropout = ECT_IMAGENET64_SIZES[size]
    c = imagenet64(size)
    c.model.update(dict(dropout=dropout, dropout_res=16))
    c.method = ConfigDict(
        dict(name="ect", sigma_d=0.5, p_mean=-0.8, p_std=1.6, mapping="stages", q=4.0, stage_length=25_000,
             stage_offset=1, huber_c=0.06, weighting="edm", t_mid=1.526)
    )
    c.optim.update(
        dict(name="adam", lr=lr, b1=0.9, b2=0.99, eps=1e-8, schedule="inverse_sqrt", decay_steps=2000, warmup_steps=0)
    )
    c.train.update(dict(num_steps=100_000, batch_size=128, ema_decays=(0.9999,), ema_halflives=()))
    c.train.ema_sigma_rels = (0.01, 0.05, 0.10)
    c.train.init_from = f"runs/edm_imagenet64_{size}"
    c.eval.update(dict(sampler="euler", nfes=(1, 2)))
    return c


def ect_imagenet64_adm() -> ConfigDict:
    """ECT's ImageNet-64 recipe (ect_imagenet64) from EDM's own ImageNet-64 model, the ADM of
    edm-imagenet-64x64-cond-adm.pkl (adm()), instead of an EDM2 model. No paper tunes this model
    with ECT: the network keeps the file's settings (dropout 0.1 in every block; ADM has no
    dropout_res), and the optimizer is our choice for a network without EDM2's weight
    normalization: Adam (0.9, 0.999) at a constant lr 1e-5, a tenth of the lr EDM trained it with
    (1e-4; EDM's README), as ECT's CIFAR-10 recipe (1e-4) is of EDM's CIFAR-10 training (1e-3).
    The rest (batch 128, 100k iterations, P(-0.8, 1.6), q = 4, d = 25k, c = 0.06, weighting,
    EMAs, 2-step t = 1.526) is ECT's ImageNet-64 recipe."""
    c = ect_imagenet64("s")
    c.model = adm()
    c.optim.update(dict(lr=1e-5, b2=0.999, schedule="constant"))
    c.train.init_from = "edm-imagenet-64x64-cond-adm.pkl"
    return c


def ect_digits(conditional: bool = True, scratch: bool = False) -> ConfigDict:
    """ECT on digits: the CIFAR-10 method with 8 stages over the 1,200 steps (as 200k / 25k) and
    no eval shift, RAdam 2e-4, from runs/edm_digits[_uncond]. `scratch`: no pretrained model,
    the paper's q^stage mapping (stage 0 is diffusion training) with the teacher's optimizer."""
    c = digits(conditional)
    c.method = ect(stage_length=150, sigma_min_shift=0.0)
    c.optim.update(dict(name="radam", lr=2e-4, b1=0.9, b2=0.999, schedule="constant", warmup_steps=0))
    c.train.init_from = "runs/edm_digits" + ("" if conditional else "_uncond")
    c.eval.nfes = (1, 2, 4)
    if scratch:
        c.train.init_from = ""
        c.method.stage_offset = 0
        c.optim.update(dict(name="adam", lr=2e-3, schedule="cosine", end_factor=0.1, warmup_steps=100))
    return c


def ect_toy2d() -> ConfigDict:
    """ECT on toy2d: the digits recipe (8 stages over the run) with every noise level scaled from
    sigma_d = 0.5 to 1 (x2): P_mean -1.1 + ln 2, the mapping's b = 1 / 2, t_mid = 2 x 0.821."""
    c = toy2d()
    c.method = ect(sigma_d=1.0, p_mean=-0.407, b=0.5, stage_length=c.train.num_steps // 8, sigma_min_shift=0.0,
                   t_mid=1.642)
    c.optim.update(dict(name="radam", lr=2e-4, b1=0.9, b2=0.999, schedule="constant", warmup_steps=0))
    c.train.init_from = "runs/edm_toy2d"
    c.eval.nfes = (1, 2, 4)
    return c


def shortcut_latents(dataset: str = "celebahq256_latents", conditional: bool = False, size: str = "B") -> ConfigDict:
    """The shortcut model on VAE latents (Frans et al. 2024, Tables 1-2, official code): DiT-`size`/2
    in bfloat16, the paper's optimizer and EMA, batch 64, 410k iterations (CelebA-HQ), sampled at
    1, 4 and 128 steps."""
    c = latents(dataset, conditional)
    c.model = dit(size, patch=2, dtype="bfloat16")
    c.method = shortcut()
    shortcut_training(c)
    c.train.update(dict(num_steps=410_000, batch_size=64))
    c.eval.nfes = (1, 4, 128)
    return c


# ---------------------------------------------------------------------------
# Flow maps (methods/flowmap.py): iMF, alpha-Flow, AYF, DMF


def imf(**overrides: Any) -> ConfigDict:
    """improved MeanFlow (Geng et al. 2025, arXiv 2512.02012) with the official code's training
    (Lyy-iiis/imeanflow, imf.py and configs/default.py): t, r ~ logit-normal(-0.4, 1.0) sorted, half
    the rows r = t (data_proportion 0.5), CFG scale omega ~ omega^-1 on [1, 8] (s_max 7, cfg_beta 1),
    interval t_min ~ U[0, 0.5], t_max ~ U[0.5, 1], class dropout 0.1 on the first rows, adaptive
    weight p = 1, c = 0.01 on the v-loss and on the auxiliary v-head, whose guided velocity is the
    jvp tangent."""
    cfg = dict(name="imf", t_logit_mean=-0.4, t_logit_std=1.0, ratio_r_eq_t=0.5, omega_max=8.0, omega_beta=1.0,
               t_min_high=0.5, t_max_low=0.5, label_dropout=0.1, adaptive_c=0.01, adaptive_p=1.0, tangent="v_head",
               v_head=True)  # fmt: skip
    return ConfigDict(dict(cfg, **overrides))


#: iMF size -> (tuned sampling omega, t_min, t_max) at 1 NFE (paper sec. 5; M/2 and L/2 share theirs).
IMF_SAMPLING = {"b": (8.0, 0.4, 0.65), "m": (10.5, 0.4, 0.6), "l": (10.5, 0.4, 0.6), "xl": (8.0, 0.42, 0.62)}


def imf_imagenet256(size: str) -> ConfigDict:
    """iMF on ImageNet-256 latents (paper sec. 5, the code's train_config.yml): the iMF DiT-`size`/2,
    latents under the 'imf' preset (per-channel standardization), batch 1024, 640 epochs, AdamW
    (0.9, 0.95) without weight decay, lr 1e-4 after a 10-epoch warmup, EMA 0.9999, float32; sampled
    at 1 and 2 steps with the paper's tuned CFG scale (eval.guidance, a network input) and interval."""
    c = latents("imagenet256_latents", conditional=True, preset="imf", decoder="ft-mse")
    c.model = ConfigDict(dict(name="imf_dit", size=size.upper(), patch=2, dtype="float32"))
    omega, lo, hi = IMF_SAMPLING[size]
    c.method = imf(sample_t_min=lo, sample_t_max=hi)
    steps_per_epoch = 1_281_167 // 1024
    c.optim.update(dict(name="adamw", lr=1e-4, b1=0.9, b2=0.95, weight_decay=0.0, schedule="constant",
                        warmup_steps=10 * steps_per_epoch))  # fmt: skip
    c.train.update(dict(num_steps=640 * steps_per_epoch, batch_size=1024, ema_decays=(0.9999,)))
    c.eval.update(dict(nfes=(1, 2), guidance=omega))
    return c


def alphaflow(**overrides: Any) -> ConfigDict:
    """alpha-Flow (Zhang et al. 2025, arXiv 2510.20771) with the official code's ImageNet B/2 recipe
    without CFG (experiments-alphaflow.yaml, AlphaFlowLoss): (t, r) = max, min of logit-normal
    (-0.4, 1.0), half the rows r = t, alpha from 1 to 0 by the sigmoid curriculum (gamma 25,
    snapped at 0.005) over [0, 400k], discrete targets clipped at 4, weight (alpha on discrete
    rows) / (sg(l) + 1e-3) with l a per-element mean; trajectory sampling."""
    cfg = dict(name="alphaflow", t_logit_mean=-0.4, t_logit_std=1.0, r_logit_mean=-0.4, r_logit_std=1.0,
               ratio_r_eq_t=0.5, alpha_schedule="sigmoid", alpha_start=0, alpha_end=400_000, alpha_gamma=25.0,
               alpha_snap=0.005, target_clip=4.0, adaptive_c=1e-3, alpha_weight=True, inverse_alpha=False,
               label_dropout=0.0, cfg_omega=1.0, cfg_kappa=0.0, sample_gamma=0.0)  # fmt: skip
    return ConfigDict(dict(cfg, **overrides))


def ayf(teacher: str, teacher_kind: str = "flow", **overrides: Any) -> ConfigDict:
    """Align Your Flow (Sabour, Fidler, Kreis 2025, arXiv 2506.14603): Eulerian map distillation from
    the frozen teacher run `teacher`, tangent normalization c = 0.1, r_w warmed up to 0.99 over 10k
    steps (length unverified), (t, s) = max, min of logit-normal(-0.4, 1.0) (unverified), no
    autoguidance unless a weaker teacher is given (weak_teacher and autoguidance, listed so that a
    command line can set them)."""
    cfg = dict(name="ayf", teacher=teacher, teacher_kind=teacher_kind, weak_teacher="", objective="eulerian",
               autoguidance=1.0, t_logit_mean=-0.4, t_logit_std=1.0, r_logit_mean=-0.4, r_logit_std=1.0,
               ratio_r_eq_t=0.0, tangent_warmup=10_000, r_max=0.99, tangent_norm=True, tangent_norm_c=0.1)  # fmt: skip
    return ConfigDict(dict(cfg, **overrides))


def dmf(**overrides: Any) -> ConfigDict:
    """Decoupled MeanFlow (Lee, Yu, Shin 2025, arXiv 2510.24474) with the official training script's
    values (train_dmf_xl_2_256.sh, loss.py): FM branch t ~ logit-normal(0, 1), MF branch t, r = max,
    min of logit-normal(0.4, 1) and logit-normal(-1.2, 1), label dropout 0.1, loss log(l e^-phi +
    0.01) + phi with the learned log-variance phi(t, r); no model guidance (omega = 0) by default."""
    cfg = dict(name="dmf", fm_logit_mean=0.0, fm_logit_std=1.0, t_logit_mean=0.4, t_logit_std=1.0,
               r_logit_mean=-1.2, r_logit_std=1.0, label_dropout=0.1, guidance_omega=0.0, loss_form="log",
               loss_c=0.01)  # fmt: skip
    return ConfigDict(dict(cfg, **overrides))


def flow_map_tuning(c: ConfigDict, lr: float) -> ConfigDict:
    """A flow map tuned from a flow model on the embedded data (DMF): constant Adam at `lr` without
    warmup and DMF's gradient clipping at 1, on the dataset's budget."""
    c.optim.update(dict(name="adam", lr=lr, schedule="constant", warmup_steps=0, grad_clip=1.0))
    return c
