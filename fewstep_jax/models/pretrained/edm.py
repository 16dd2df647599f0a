"""NVlabs/edm network pickles -> the suite's `unet` (EDM's DDPM++, recipes.ddpmpp_unet).

The released EDM models (Karras et al. 2022; https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/,
e.g. edm-cifar10-32x32-uncond-vp.pkl, edm-cifar10-32x32-cond-vp.pkl) are EDMPrecond networks
(NVlabs/edm training/networks.py) around a SongUNet. "vp" files use EDM's DDPM++ settings
(train.py --arch=ddpmpp: positional noise embedding, standard encoder / decoder, resampling
filter [1, 1]): that is the suite's UNet with emb_norm='additive', resample='residual',
decoder_attn='last', GroupNorm eps 1e-6 with >= 4 channels per group; conditional files feed
the labels as EDM does (label_embed='onehot_linear'). Refused by name, since the suite has no
such network: "ve" files (NCSN++: Fourier embedding, residual encoder, filter [1, 3, 3, 1]),
edm-imagenet-64x64-cond-adm.pkl (ADM, DhariwalUNet), and the VP / VE / iDDPM-preconditioned
baselines (baseline-*.pkl).

Weight correspondence (torch names under `model.` -> suite names; Conv2d [O, I, k, k] -> flax
[k, k, I, O], Linear [O, I] -> [I, O]):
  map_layer0 / map_layer1        cond/time/dense_0 / dense_1; EDM swaps the positional
                                 embedding's halves to [sin, cos] (SongUNet.forward) where the
                                 suite's is [cos, sin]: map_layer0's input columns are permuted
  map_label                      cond/label (its output rows permuted alike)
  map_augment                    not imported: EDM adds it only with augmentation labels, which
                                 sampling never passes (EDMPrecond without augment_labels)
  enc.RxR_conv                   conv_in
  enc.RxR_down, enc.RxR_blockI   enc_{level-1}_down, enc_{level}_res_I (+ enc_{level}_attn_I)
  dec.RxR_in0 / in1              mid_res_0 + mid_attn / mid_res_1
  dec.RxR_up, dec.RxR_blockI     dec_{level+1}_up, dec_{level}_res_I (+ dec_{level}_attn_I)
  dec.RxR_aux_norm / aux_conv    norm_out / conv_out
  UNetBlock                      norm0 -> norm_0, conv0 -> conv_0, affine -> emb_proj,
                                 norm1 -> norm_1, conv1 -> conv_1, skip -> skip; its attention
                                 norm2 / qkv / proj -> the AttentionBlock's norm / qkv / proj,
                                 qkv's output channels reordered from EDM's (head, channel,
                                 q/k/v) to the suite's (q/k/v, head, channel)
The resampling filters (buffers) are checked against the configured [1, 1] and not imported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fewstep_jax.models.pretrained import (
    Imported,
    PretrainedError,
    TensorMap,
    check_classes,
    expected_shapes,
    imported,
    suite_dataset,
)
from fewstep_jax.models.pretrained.network_pickle import Module

#: Preconditionings of NVlabs/edm training/networks.py; only EDMPrecond is imported.
NETWORK_CLASSES = ("EDMPrecond", "VPPrecond", "VEPrecond", "iDDPMPrecond")

#: Every class an EDMPrecond + SongUNet file holds.
KNOWN_CLASSES = {"EDMPrecond", "SongUNet", "UNetBlock", "Conv2d", "Linear", "GroupNorm", "PositionalEmbedding"}

#: SongUNet's constructor defaults (NVlabs/edm training/networks.py).
SONGUNET_DEFAULTS = dict(
    label_dim=0,
    augment_dim=0,
    model_channels=128,
    channel_mult=[1, 2, 2, 2],
    channel_mult_emb=4,
    num_blocks=4,
    attn_resolutions=[16],
    dropout=0.10,
    label_dropout=0,
    embedding_type="positional",
    channel_mult_noise=1,
    encoder_type="standard",
    decoder_type="standard",
    resample_filter=[1, 1],
)

#: SongUNet settings of EDM's DDPM++ (train.py --arch=ddpmpp): what the suite's UNet implements.
DDPMPP = dict(embedding_type="positional", encoder_type="standard", decoder_type="standard", resample_filter=[1, 1])

#: The EDM paper's deterministic sampler for CIFAR-10 (Table 2: Heun, 18 steps, NFE 35).
SAMPLING = dict(sampler="heun", num_steps=18)


def _network(data: Mapping[str, Any], path: str) -> tuple[Module, Module]:
    ema = data["ema"]
    if ema.class_name in ("VPPrecond", "VEPrecond", "iDDPMPrecond"):
        raise PretrainedError(
            f"{path} is a {ema.class_name}-preconditioned EDM baseline; the suite imports EDMPrecond networks "
            "(edm-*.pkl, e.g. edm-cifar10-32x32-uncond-vp.pkl), whose output is EDM's denoiser"
        )
    model = ema.children.get("model")
    if model is None:
        raise PretrainedError(f"{path}: its {ema.class_name} has no 'model' sub-network (not an EDM network pickle)")
    if model.class_name == "DhariwalUNet":
        raise PretrainedError(
            f"{path} is an ADM network (DhariwalUNet, EDM's ImageNet-64 model); the suite has no ADM network, "
            "only EDM's DDPM++ (SongUNet, the CIFAR-10 '-vp' files)"
        )
    if model.class_name != "SongUNet":
        raise PretrainedError(
            f"{path}: unknown network class {model.class_name!r} under EDMPrecond (expected SongUNet)"
        )
    check_classes(ema, KNOWN_CLASSES, path, "DDPM++ (EDMPrecond + SongUNet)")
    return ema, model


def model_section(kwargs: Mapping[str, Any], path: str) -> dict[str, Any]:
    """The suite's model section of a SongUNet with these constructor arguments; refuses
    anything but EDM's DDPM++ settings, naming what differs."""
    differ = {
        k: kwargs[k] for k, v in DDPMPP.items() if (list(kwargs[k]) if k == "resample_filter" else kwargs[k]) != v
    }
    if differ:
        kind = "NCSN++ ('-ve' files)" if kwargs["embedding_type"] == "fourier" else "a SongUNet variant"
        raise PretrainedError(
            f"{path} is {kind}: {differ}; the suite has EDM's DDPM++ only ({DDPMPP}, the '-vp' files)"
        )
    channels = int(kwargs["model_channels"])
    freq_dim = max(32, 2 * ((channels + 1) // 2))  # the suite UNet's positional width (models/unet.py)
    noise_channels = channels * int(kwargs["channel_mult_noise"])
    if noise_channels != freq_dim:
        raise PretrainedError(
            f"{path}: its noise embedding has model_channels * channel_mult_noise = {noise_channels} frequencies; "
            f"the suite's DDPM++ embeds time with max(32, model_channels) = {freq_dim}"
        )
    from fewstep_jax import recipes

    resolution = int(kwargs["img_resolution"])
    channel_mult = tuple(int(m) for m in kwargs["channel_mult"])
    visited = [resolution >> level for level in range(len(channel_mult))]
    section = recipes.ddpmpp_unet(
        channels=channels,
        channel_mult=channel_mult,
        num_blocks=int(kwargs["num_blocks"]),
        attn_resolutions=tuple(int(r) for r in kwargs["attn_resolutions"] if int(r) in visited),
        dropout=float(kwargs["dropout"]),
        emb_dim=channels * int(kwargs["channel_mult_emb"]),
        label_embed="onehot_linear",  # EDM's label input (no labels: no label weights either way)
    )
    return section.to_dict()


def _conv(w: np.ndarray | None) -> np.ndarray | None:
    return None if w is None else w.transpose(2, 3, 1, 0)


def _linear(w: np.ndarray | None) -> np.ndarray | None:
    return None if w is None else w.T


def _qkv_order(channels: int, heads: int) -> np.ndarray:
    """Index into EDM's qkv output channels, (head, channel, q/k/v), for each of the suite's,
    (q/k/v, head, channel)."""
    head_dim = channels // heads
    j, h, c = np.meshgrid(np.arange(3), np.arange(heads), np.arange(head_dim), indexing="ij")
    return (h * 3 * head_dim + c * 3 + j).reshape(-1)


def _block(m: TensorMap, src: str, res: str, attn: str | None, heads: int) -> None:
    """One EDM UNetBlock (`src`) -> the suite's ResBlock `res` (+ AttentionBlock `attn`)."""
    for edm, ours in (("norm0", "norm_0"), ("norm1", "norm_1")):
        m.put(f"{res}/{ours}/scale", m.take(f"{src}.{edm}.weight"))
        m.put(f"{res}/{ours}/bias", m.take(f"{src}.{edm}.bias"))
    for edm, ours in (("conv0", "conv_0"), ("conv1", "conv_1")):
        m.put(f"{res}/{ours}/kernel", _conv(m.take(f"{src}.{edm}.weight")))
        m.put(f"{res}/{ours}/bias", m.take(f"{src}.{edm}.bias"))
    m.put(f"{res}/emb_proj/kernel", _linear(m.take(f"{src}.affine.weight")))
    m.put(f"{res}/emb_proj/bias", m.take(f"{src}.affine.bias"))
    if m.has(f"{src}.skip.weight"):
        m.put(f"{res}/skip/kernel", _conv(m.take(f"{src}.skip.weight")))
        m.put(f"{res}/skip/bias", m.take(f"{src}.skip.bias"))
    if attn is None:
        return
    m.put(f"{attn}/norm/scale", m.take(f"{src}.norm2.weight"))
    m.put(f"{attn}/norm/bias", m.take(f"{src}.norm2.bias"))
    qkv, qkv_bias = m.take(f"{src}.qkv.weight"), m.take(f"{src}.qkv.bias")
    if qkv is not None and qkv_bias is not None:
        order = _qkv_order(qkv.shape[1], heads)
        m.put(f"{attn}/qkv/kernel", qkv[order, :, 0, 0].T)
        m.put(f"{attn}/qkv/bias", qkv_bias[order])
    proj = m.take(f"{src}.proj.weight")
    m.put(f"{attn}/proj/kernel", None if proj is None else proj[:, :, 0, 0].T)
    m.put(f"{attn}/proj/bias", m.take(f"{src}.proj.bias"))


def _check_filters(model: Module, path: str) -> None:
    expected = np.full((1, 1, 2, 2), 0.25)  # outer([1, 1], [1, 1]) / 4, EDM's Conv2d buffer
    for name, value in model.tensors().items():
        if name.endswith(".resample_filter") and not np.array_equal(np.asarray(value, np.float64), expected):
            raise PretrainedError(f"{path}: {name} is {np.asarray(value).ravel().tolist()}, not DDPM++'s [1, 1] filter")


def params(model: Module, cfg: Mapping[str, Any], kwargs: Mapping[str, Any], expected, path: str) -> dict[str, Any]:
    """The suite UNet's params from SongUNet's tensors (see the module docstring)."""
    m = TensorMap(model.tensors(), path)
    _check_filters(model, path)
    for name in list(m.tensors):
        if name.endswith(".resample_filter"):
            m.drop(name)
    m.drop("map_augment")
    noise = int(kwargs["model_channels"]) * int(kwargs["channel_mult_noise"])
    half = noise // 2
    swap = (np.arange(noise) + half) % noise  # EDM's [sin, cos] <-> the suite's [cos, sin]
    w0 = m.take("map_layer0.weight")
    m.put("cond/time/dense_0/kernel", None if w0 is None else w0[:, swap].T)
    m.put("cond/time/dense_0/bias", m.take("map_layer0.bias"))
    m.put("cond/time/dense_1/kernel", _linear(m.take("map_layer1.weight")))
    m.put("cond/time/dense_1/bias", m.take("map_layer1.bias"))
    if int(kwargs["label_dim"]):
        w, b = m.take("map_label.weight"), m.take("map_label.bias")
        m.put("cond/label/kernel", None if w is None else w[swap].T)
        m.put("cond/label/bias", None if b is None else b[swap])

    resolution, levels, blocks = int(kwargs["img_resolution"]), len(cfg["channel_mult"]), cfg["num_blocks"]
    for level in range(levels):
        res = resolution >> level
        key = f"{res}x{res}"
        if level == 0:
            m.put("conv_in/kernel", _conv(m.take(f"enc.{key}_conv.weight")))
            m.put("conv_in/bias", m.take(f"enc.{key}_conv.bias"))
        else:
            _block(m, f"enc.{key}_down", f"enc_{level - 1}_down", None, 1)
        for i in range(blocks):
            src = f"enc.{key}_block{i}"
            _block(m, src, f"enc_{level}_res_{i}", f"enc_{level}_attn_{i}" if m.has(f"{src}.qkv.weight") else None, 1)
    for level in reversed(range(levels)):
        res = resolution >> level
        key = f"{res}x{res}"
        if level == levels - 1:
            _block(m, f"dec.{key}_in0", "mid_res_0", "mid_attn", 1)
            _block(m, f"dec.{key}_in1", "mid_res_1", None, 1)
        else:
            _block(m, f"dec.{key}_up", f"dec_{level + 1}_up", None, 1)
        for i in range(blocks + 1):
            src = f"dec.{key}_block{i}"
            _block(m, src, f"dec_{level}_res_{i}", f"dec_{level}_attn_{i}" if m.has(f"{src}.qkv.weight") else None, 1)
    top = f"{resolution}x{resolution}"
    m.put("norm_out/scale", m.take(f"dec.{top}_aux_norm.weight"))
    m.put("norm_out/bias", m.take(f"dec.{top}_aux_norm.bias"))
    m.put("conv_out/kernel", _conv(m.take(f"dec.{top}_aux_conv.weight")))
    m.put("conv_out/bias", m.take(f"dec.{top}_aux_conv.bias"))
    return m.finish(expected, "EDM's DDPM++ as the suite's unet")


def convert(data: Mapping[str, Any], path: str) -> Imported:
    """An EDM network pickle (read by network_pickle.load) -> Imported."""
    from fewstep_jax import models

    ema, model = _network(data, path)
    kwargs = {**SONGUNET_DEFAULTS, **model.kwargs}
    sigma_data = float(ema.state.get("sigma_data", ema.kwargs.get("sigma_data", 0.5)))
    cfg = model_section(kwargs, path)
    shape = (int(kwargs["img_resolution"]), int(kwargs["img_resolution"]), int(kwargs["in_channels"]))
    num_classes = int(kwargs["label_dim"])
    net = models.build(cfg, data_shape=shape, num_classes=num_classes)
    tree = params(model, cfg, kwargs, expected_shapes(net, shape, num_classes), path)
    data_name = suite_dataset(shape, num_classes)
    dataset = data.get("dataset_kwargs") if isinstance(data.get("dataset_kwargs"), Mapping) else {}
    summary = dict(
        architecture=(
            f"DDPM++ (EDM SongUNet): {cfg['channels']} channels x {list(cfg['channel_mult'])}, "
            f"{cfg['num_blocks']} blocks per resolution, attention at {list(cfg['attn_resolutions'])}"
        ),
        network_class=f"{ema.class_name} / {model.class_name}",
        data=data_name or f"{shape} images (no dataset of the suite has this shape)",
        stored_dtype=str(next(iter(model.tensors().values())).dtype),
        ema="not recorded in the file (EDM's training default: a 0.5 Mimg half-life)",
        not_imported=["model.map_augment.weight: augmentation conditioning, unused when sampling (no augment labels)"]
        if int(kwargs["augment_dim"])
        else [],
        training_dataset=str(dataset.get("path", "")),
    )
    return imported(
        "edm",
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
    )
