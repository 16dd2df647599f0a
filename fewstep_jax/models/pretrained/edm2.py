"""NVlabs/edm2 network pickles -> the suite's `edm2` network (models/edm2.py).

The released EDM2 models (Karras et al. 2024; https://nvlabs-fi-cdn.nvidia.com/edm2/posthoc-reconstructions/,
e.g. edm2-img512-xs-2147483-0.135.pkl, edm2-img64-s-1073741-0.075.pkl) are post-hoc EMA
reconstructions (reconstruct_phema.py) of Precond networks (NVlabs/edm2
training/networks_edm2.py): EDM preconditioning around the magnitude-preserving UNet, plus the
log-variance head of EDM2's loss weighting; stored in float16, in an EasyDict with the encoder
(StandardRGBEncoder for ImageNet-64 pixels, StabilityVAEEncoder for ImageNet-512's 64x64x4
latents), the dataset's arguments and the loss. The latent encoder's stored scale and bias tell
the latent preset (data/latents.py): EDM2's own statistics are the 'edm2' preset, so the
ImageNet-512 files are models of the suite's imagenet512_latents prepared with
--latent_preset=edm2. The file name carries the training length (kimg)
and the EMA's sigma_rel; the pickle does not.

The suite's network is EDM2's UNet with fourier_params=True: the time embedding's MPFourier
frequencies and phases are the file's buffers (params emb_fourier/freqs, emb_fourier/phases),
not the suite's seeded constants. Weights are copied as stored: every MPConv normalizes its
weight per output channel in the forward pass (EDM2 eq. 47) exactly as EDM2's does (the
released weights are force-normalized already, up to float16 rounding; the training loop's
projection, models.param_projection, renormalizes them at the first update). Correspondence
(under `unet.`; MPConv [O, I, k, k] -> [k, k, I, O], [O, I] -> [I, O]): emb_fourier, emb_noise,
emb_label, enc.RxR_conv -> enc_conv, enc.RxR_down / _blockI -> enc_R_down / enc_R_blockI,
dec.RxR_in0 / _in1 / _up / _blockI -> dec_R_*, out_conv, out_gain; inside a Block the same names
(conv_res0, emb_linear, emb_gain, conv_res1, conv_skip, attn_qkv, attn_proj), qkv's channel
layout (head, channel, q/k/v) being the suite's. The log-variance head (logvar_fourier,
logvar_linear) is kept in `Imported.extra['logvar']` (`logvar` evaluates it): the suite's own
head draws its Fourier features from a seed, so training re-initializes the weighting.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from fewstep_jax.models.pretrained import (
    LATENT_UNKNOWN,
    Imported,
    PretrainedError,
    TensorMap,
    check_classes,
    ema_from_file_name,
    expected_shapes,
    imported,
    latent_dataset,
    latent_preset_of,
    suite_dataset,
)
from fewstep_jax.models.pretrained.network_pickle import Module

NETWORK_CLASSES = ("Precond",)
KNOWN_CLASSES = {"Precond", "UNet", "Block", "MPConv", "MPFourier"}

#: UNet's and Block's constructor defaults (NVlabs/edm2 training/networks_edm2.py).
UNET_DEFAULTS = dict(
    model_channels=192,
    channel_mult=[1, 2, 3, 4],
    channel_mult_noise=None,
    channel_mult_emb=None,
    num_blocks=3,
    attn_resolutions=[16, 8],
    label_balance=0.5,
    concat_balance=0.5,
    resample_filter=[1, 1],
    channels_per_head=64,
    dropout=0,
    res_balance=0.3,
    attn_balance=0.3,
    clip_act=256,
)

#: EDM2's deterministic sampler (generate_images.py: 2nd-order Heun, 32 steps, NFE 63).
SAMPLING = dict(sampler="heun", num_steps=32)

#: model_channels -> EDM2 size name (Table 2), for the summary and model.size.
SIZE_NAMES = {64: "XXS", 128: "XS", 192: "S", 256: "M", 320: "L", 384: "XL", 448: "XXL"}


def _network(data: Mapping[str, Any], path: str) -> tuple[Module, Module]:
    ema = data["ema"]
    unet = ema.children.get("unet")
    if unet is None or unet.class_name != "UNet":
        found = "none" if unet is None else repr(unet.class_name)
        raise PretrainedError(f"{path}: its Precond has no EDM2 'unet' (UNet) sub-network (found {found})")
    check_classes(ema, KNOWN_CLASSES, path, "EDM2 (Precond + UNet)")
    return ema, unet


def model_section(kwargs: Mapping[str, Any], path: str) -> dict[str, Any]:
    """The suite's model section of an EDM2 UNet with these constructor arguments."""
    if kwargs["channel_mult_noise"] is not None or kwargs["channel_mult_emb"] is not None:
        raise PretrainedError(
            f"{path}: channel_mult_noise={kwargs['channel_mult_noise']}, "
            f"channel_mult_emb={kwargs['channel_mult_emb']}; the suite's EDM2 has EDM2's default embedding widths only"
        )
    if list(kwargs["resample_filter"]) != [1, 1]:
        raise PretrainedError(
            f"{path}: resample_filter {kwargs['resample_filter']}; the suite's EDM2 resamples with [1, 1]"
        )
    from fewstep_jax import models

    channels = int(kwargs["model_channels"])
    clip = kwargs["clip_act"]
    size = SIZE_NAMES.get(channels)
    return dict(
        name="edm2",
        size=size if size in models.EDM2_SIZES else None,
        channels=channels,
        channel_mult=tuple(int(m) for m in kwargs["channel_mult"]),
        num_blocks=int(kwargs["num_blocks"]),
        attn_resolutions=tuple(int(r) for r in kwargs["attn_resolutions"]),
        dropout=float(kwargs["dropout"]),
        channels_per_head=int(kwargs["channels_per_head"]),
        res_balance=float(kwargs["res_balance"]),
        attn_balance=float(kwargs["attn_balance"]),
        clip_act=0.0 if clip is None else float(clip),
        label_balance=float(kwargs["label_balance"]),
        concat_balance=float(kwargs["concat_balance"]),
        time_scale=1.0,
        fourier_params=True,
    )


def _weight(w: np.ndarray | None) -> np.ndarray | None:
    """MPConv weight [O, I, k, k] or [O, I] -> the suite's [k, k, I, O] or [I, O]."""
    if w is None:
        return None
    return w.T if w.ndim == 2 else w.transpose(2, 3, 1, 0)


def _block(m: TensorMap, src: str, ours: str) -> None:
    for name in ("conv_res0", "emb_linear", "conv_res1", "conv_skip", "attn_qkv", "attn_proj"):
        if m.has(f"{src}.{name}.weight") or name in ("conv_res0", "emb_linear", "conv_res1"):
            m.put(f"{ours}/{name}/weight", _weight(m.take(f"{src}.{name}.weight")))
    m.put(f"{ours}/emb_gain", m.take(f"{src}.emb_gain"))


def params(unet: Module, kwargs: Mapping[str, Any], expected, path: str) -> dict[str, Any]:
    m = TensorMap(unet.tensors(), path)
    m.put("emb_fourier/freqs", m.take("emb_fourier.freqs"))
    m.put("emb_fourier/phases", m.take("emb_fourier.phases"))
    m.put("emb_noise/weight", _weight(m.take("emb_noise.weight")))
    if int(kwargs["label_dim"]):
        m.put("emb_label/weight", _weight(m.take("emb_label.weight")))
    resolution, levels, blocks = int(kwargs["img_resolution"]), len(kwargs["channel_mult"]), int(kwargs["num_blocks"])
    for level in range(levels):
        res = resolution >> level
        key = f"{res}x{res}"
        if level == 0:
            m.put("enc_conv/weight", _weight(m.take(f"enc.{key}_conv.weight")))
        else:
            _block(m, f"enc.{key}_down", f"enc_{res}_down")
        for i in range(blocks):
            _block(m, f"enc.{key}_block{i}", f"enc_{res}_block{i}")
    for level in reversed(range(levels)):
        res = resolution >> level
        key = f"{res}x{res}"
        names = ("in0", "in1") if level == levels - 1 else ("up",)
        for name in (*names, *(f"block{i}" for i in range(blocks + 1))):
            _block(m, f"dec.{key}_{name}", f"dec_{res}_{name}")
    m.put("out_conv/weight", _weight(m.take("out_conv.weight")))
    m.put("out_gain", m.take("out_gain"))
    return m.finish(expected, "EDM2's UNet as the suite's edm2")


def logvar(head: Mapping[str, np.ndarray], sigma: np.ndarray) -> np.ndarray:
    """EDM2's u(sigma) (Precond(return_logvar=True), eq. 21) from `Imported.extra['logvar']`:
    MPConv(MPFourier(ln(sigma) / 4)) with the stored frequencies, phases and weight; float64."""
    c_noise = np.log(np.asarray(sigma, np.float64)) / 4.0
    features = math.sqrt(2.0) * np.cos(np.outer(c_noise, head["freqs"]) + head["phases"])
    w = np.asarray(head["weight"], np.float64)  # [in, 1]
    rms = np.sqrt(np.mean(w**2, axis=0, keepdims=True))
    w = w / (1e-4 + rms) / math.sqrt(w.shape[0])
    return (features @ w)[:, 0]


def _logvar_head(ema: Module, path: str) -> dict[str, np.ndarray]:
    tensors = {k: v for k, v in ema.tensors().items() if k.startswith("logvar_")}
    names = {"logvar_fourier.freqs": "freqs", "logvar_fourier.phases": "phases", "logvar_linear.weight": "weight"}
    if not tensors:
        return {}
    if set(tensors) != set(names):
        raise PretrainedError(f"{path}: an incomplete log-variance head: {sorted(tensors)}")
    head = {ours: np.asarray(tensors[theirs], np.float32) for theirs, ours in names.items()}
    head["weight"] = head["weight"].T
    return head


def convert(data: Mapping[str, Any], path: str) -> Imported:
    """An EDM2 network pickle (read by network_pickle.load) -> Imported."""
    from fewstep_jax import models

    ema, unet = _network(data, path)
    unknown = sorted(set(ema.children) - {"unet", "logvar_fourier", "logvar_linear"})
    if unknown:
        raise PretrainedError(f"{path}: unexpected sub-networks of Precond: {unknown}")
    kwargs = {**UNET_DEFAULTS, **unet.kwargs}
    cfg = model_section(kwargs, path)
    shape = (int(kwargs["img_resolution"]), int(kwargs["img_resolution"]), int(kwargs["img_channels"]))
    num_classes = int(kwargs["label_dim"])
    net = models.build(cfg, data_shape=shape, num_classes=num_classes)
    tree = params(unet, kwargs, expected_shapes(net, shape, num_classes), path)
    head = _logvar_head(ema, path)
    sigma_data = float(ema.state.get("sigma_data", 0.5))
    encoder = data.get("encoder")
    encoder_name = encoder.class_name if isinstance(encoder, Module) else None
    latent = encoder_name == "StabilityVAEEncoder"
    data_name = None if latent else suite_dataset(shape, num_classes)
    preset = None
    if latent:
        scale, bias = (np.asarray(encoder.state.get(k, np.nan), np.float64).ravel().tolist() for k in ("scale", "bias"))
        preset = latent_preset_of(scale, bias)
        data_name = latent_dataset(shape, num_classes, preset)
        held = (
            f"the suite's {data_name} prepared with --latent_preset={preset}"
            if data_name
            else (f"latent preset {preset!r}" if preset != LATENT_UNKNOWN else "none of the suite's latent presets")
        )
        described = (
            f"{shape} latents of {encoder.state.get('vae_name', 'a VAE')} normalized as EDM2 does "
            f"(latent * {scale} + {bias}): {held}"
        )
    else:
        described = data_name or f"{shape} images (no dataset of the suite has this shape)"
    size = SIZE_NAMES.get(cfg["channels"])
    summary = dict(
        architecture=(
            f"EDM2-{size or 'custom'} (magnitude-preserving UNet): {cfg['channels']} channels x "
            f"{list(cfg['channel_mult'])}, {cfg['num_blocks']} blocks per resolution, attention at "
            f"{list(cfg['attn_resolutions'])}"
        ),
        network_class=f"{ema.class_name} / {unet.class_name}",
        data=described,
        encoder=encoder_name,
        stored_dtype=str(next(iter(unet.tensors().values())).dtype),
        ema=ema_from_file_name(path) or "not recorded in the file (nor in its name)",
        logvar_head=f"{head['freqs'].shape[0]} Fourier channels, kept (not used by the suite)" if head else None,
    )
    return imported(
        "edm2",
        path,
        data,
        model=cfg,
        shape=shape,
        num_classes=num_classes,
        data_name=data_name,
        sigma_data=sigma_data,
        sampling=SAMPLING,
        params=tree,
        summary=summary,
        extra={"logvar": head} if head else {},
        latent_preset=preset,
    )
