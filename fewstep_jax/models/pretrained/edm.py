"""NVlabs/edm network pickles -> the suite's `unet` (EDM's DDPM++ and NCSN++) or `adm` network.

The released EDM models (Karras et al. 2022; https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/)
are EDMPrecond networks (NVlabs/edm training/networks.py) around
  - a SongUNet: "vp" files (edm-cifar10-32x32-{uncond,cond}-vp.pkl, the FFHQ / AFHQv2 64x64
    ones) use EDM's DDPM++ settings (train.py --arch=ddpmpp: positional noise embedding,
    standard encoder / decoder, resampling filter [1, 1]): the suite's UNet with
    emb_norm='additive', resample='residual', decoder_attn='last', GroupNorm eps 1e-6 with >= 4
    channels per group (recipes.ddpmpp_unet). "ve" files (edm-cifar10-32x32-{uncond,cond}-ve.pkl)
    use its NCSN++ settings (--arch=ncsnpp): the same plus embedding_type='fourier' (the file's
    frequencies become the param cond/time/freqs), noise_dim = 2 * channels, encoder_type=
    'residual' and the filter [1, 3, 3, 1]. Conditional files feed the labels as EDM does
    (label_embed='onehot_linear');
  - a DhariwalUNet (edm-imagenet-64x64-cond-adm.pkl, --arch=adm): the suite's `adm` network
    (models/adm.py), with the channels_per_head its blocks record (64).
Refused by name: SongUNet's 'skip' encoder / decoder (no released EDM file uses them) and the VP /
VE / iDDPM-preconditioned baselines (baseline-*.pkl).

Weight correspondence (torch names under `model.` -> suite names; Conv2d [O, I, k, k] -> flax
[k, k, I, O], Linear [O, I] -> [I, O]):
  SongUNet
  map_noise.freqs (NCSN++)       cond/time/freqs
  map_layer0 / map_layer1        cond/time/dense_0 / dense_1; EDM swaps the noise features'
                                 halves to [sin, cos] (SongUNet.forward) where the suite's are
                                 [cos, sin]: map_layer0's input columns are permuted
  map_label                      cond/label (its output rows permuted alike)
  map_augment                    not imported: EDM adds it only with augmentation labels, which
                                 sampling never passes (EDMPrecond without augment_labels)
  enc.RxR_conv                   conv_in
  enc.RxR_down, enc.RxR_blockI   enc_{level-1}_down, enc_{level}_res_I (+ enc_{level}_attn_I)
  enc.RxR_aux_residual (NCSN++)  enc_{level-1}_aux_residual/conv
  dec.RxR_in0 / in1              mid_res_0 + mid_attn / mid_res_1
  dec.RxR_up, dec.RxR_blockI     dec_{level+1}_up, dec_{level}_res_I (+ dec_{level}_attn_I)
  dec.RxR_aux_norm / aux_conv    norm_out / conv_out
  UNetBlock                      norm0 -> norm_0, conv0 -> conv_0, affine -> emb_proj,
                                 norm1 -> norm_1, conv1 -> conv_1, skip -> skip; its attention
                                 norm2 / qkv / proj -> the AttentionBlock's norm / qkv / proj,
                                 qkv's output channels reordered from EDM's (head, channel,
                                 q/k/v) to the suite's (q/k/v, head, channel)
  DhariwalUNet (no swap: its noise features are [cos, sin] like the suite's)
  map_layer0 / map_layer1        cond/time/dense_0 / dense_1
  map_label (bias-free)          cond/label
  map_augment                    not imported (as above)
  enc.RxR_conv                   conv_in
  enc.RxR_down, enc.RxR_blockI   enc_{level-1}_down, enc_{level}_block_I
  dec.RxR_in0 / in1              mid_0 / mid_1
  dec.RxR_up, dec.RxR_blockI     dec_{level+1}_up, dec_{level}_block_I
  out_norm / out_conv            norm_out / conv_out
  UNetBlock                      as above, its attention inside the block: norm2 -> norm_2,
                                 qkv (reordered alike, heads of channels_per_head), proj
The resampling filters (buffers) are checked against the configured filter and not imported.
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

#: Every class an EDMPrecond file holds, by its network's class.
KNOWN_CLASSES = {
    "SongUNet": {"EDMPrecond", "SongUNet", "UNetBlock", "Conv2d", "Linear", "GroupNorm", "PositionalEmbedding"}
    | {"FourierEmbedding"},
    "DhariwalUNet": {"EDMPrecond", "DhariwalUNet", "UNetBlock", "Conv2d", "Linear", "GroupNorm", "PositionalEmbedding"},
}

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

#: DhariwalUNet's constructor defaults (NVlabs/edm training/networks.py).
DHARIWALUNET_DEFAULTS = dict(
    label_dim=0,
    augment_dim=0,
    model_channels=192,
    channel_mult=[1, 2, 3, 4],
    channel_mult_emb=4,
    num_blocks=3,
    attn_resolutions=[32, 16, 8],
    dropout=0.10,
    label_dropout=0,
)

#: The SongUNet settings of EDM's two CIFAR-10 architectures (train.py --arch=ddpmpp / ncsnpp;
#: besides these, NCSN++ doubles the noise features' width: channel_mult_noise 2, not 1).
SONGUNET_ARCHS = {
    "DDPM++": dict(embedding_type="positional", encoder_type="standard", resample_filter=[1, 1]),
    "NCSN++": dict(embedding_type="fourier", encoder_type="residual", resample_filter=[1, 3, 3, 1]),
}

#: The EDM paper's deterministic sampler for CIFAR-10 (Table 2: Heun, 18 steps, NFE 35).
SAMPLING = dict(sampler="heun", num_steps=18)

#: ADM's: EDM's deterministic setting for its 64x64 models (example.py: Heun, 40 steps, NFE 79).
#: EDM's ImageNet-64 FID 1.36 is from its stochastic sampler (256 steps, S_churn 40), which the
#: suite does not have.
SAMPLING_ADM = dict(sampler="heun", num_steps=40)


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
    if model.class_name not in KNOWN_CLASSES:
        raise PretrainedError(
            f"{path}: unknown network class {model.class_name!r} under EDMPrecond (expected "
            f"{' or '.join(KNOWN_CLASSES)})"
        )
    what = {"SongUNet": "DDPM++ / NCSN++", "DhariwalUNet": "ADM"}[model.class_name]
    check_classes(ema, KNOWN_CLASSES[model.class_name], path, f"{what} (EDMPrecond + {model.class_name})")
    return ema, model


def song_architecture(kwargs: Mapping[str, Any]) -> str:
    """'DDPM++' or 'NCSN++' when a SongUNet has EDM's settings of that architecture, else 'SongUNet'."""
    for name, settings in SONGUNET_ARCHS.items():
        if all((list(kwargs[k]) if k == "resample_filter" else kwargs[k]) == v for k, v in settings.items()):
            return name
    return "SongUNet"


def _visited(kwargs: Mapping[str, Any], key: str) -> tuple[int, ...]:
    """The file's attention resolutions that the network visits (EDM lists 16 for 8x8 models too)."""
    resolution, levels = int(kwargs["img_resolution"]), len(kwargs["channel_mult"])
    visited = [resolution >> level for level in range(levels)]
    return tuple(int(r) for r in kwargs[key] if int(r) in visited)


def model_section(kwargs: Mapping[str, Any], path: str) -> dict[str, Any]:
    """The suite's model section (`unet`) of a SongUNet with these constructor arguments: EDM's
    DDPM++ and NCSN++, and their mixtures; refuses the 'skip' encoder / decoder, naming them."""
    from fewstep_jax import recipes
    from fewstep_jax.models import layers, unet

    allowed = dict(embedding_type=layers.TIME_EMBEDDINGS, encoder_type=unet.ENCODER_TYPES, decoder_type=("standard",))
    differ = {k: kwargs[k] for k, v in allowed.items() if kwargs[k] not in v}
    if differ:
        raise PretrainedError(
            f"{path} is a SongUNet with {differ}; the suite's unet has "
            + ", ".join(f"{k} {' / '.join(map(repr, v))}" for k, v in allowed.items())
            + " (EDM's DDPM++ and NCSN++)"
        )
    channels = int(kwargs["model_channels"])
    section = recipes.ddpmpp_unet(
        channels=channels,
        channel_mult=tuple(int(m) for m in kwargs["channel_mult"]),
        num_blocks=int(kwargs["num_blocks"]),
        attn_resolutions=_visited(kwargs, "attn_resolutions"),
        dropout=float(kwargs["dropout"]),
        emb_dim=channels * int(kwargs["channel_mult_emb"]),
        label_embed="onehot_linear",  # EDM's label input (no labels: no label weights either way)
        noise_dim=channels * int(kwargs["channel_mult_noise"]),
        embedding_type=str(kwargs["embedding_type"]),
        encoder_type=str(kwargs["encoder_type"]),
        resample_filter=tuple(int(v) for v in kwargs["resample_filter"]),
    )
    return section.to_dict()


def adm_section(kwargs: Mapping[str, Any], channels_per_head: int, path: str) -> dict[str, Any]:
    """The suite's model section (`adm`) of a DhariwalUNet with these constructor arguments and
    blocks built with `channels_per_head`."""
    from fewstep_jax import recipes

    channels = int(kwargs["model_channels"])
    return recipes.adm(
        channels=channels,
        channel_mult=tuple(int(m) for m in kwargs["channel_mult"]),
        num_blocks=int(kwargs["num_blocks"]),
        attn_resolutions=_visited(kwargs, "attn_resolutions"),
        dropout=float(kwargs["dropout"]),
        emb_dim=channels * int(kwargs["channel_mult_emb"]),
        channels_per_head=int(channels_per_head),
    ).to_dict()


def channels_per_head(model: Module, path: str) -> int:
    """The channels_per_head DhariwalUNet passed to its UNetBlocks (64), checked against the head
    count each attention block recorded."""
    found = {}
    for where, module in model.walk("model"):
        if module.class_name != "UNetBlock":
            continue
        per_head = module.kwargs.get("channels_per_head", 64)  # UNetBlock's default
        found.setdefault(per_head, where)
        heads = module.state.get("num_heads")
        width = int(module.kwargs.get("out_channels", 0))
        if heads and heads != width // per_head:
            raise PretrainedError(
                f"{path}: {where} has {heads} attention heads for {width} channels, not {width} // {per_head}"
            )
    if len(found) != 1:
        raise PretrainedError(f"{path}: its UNetBlocks differ in channels_per_head: {found} (first block of each)")
    return int(next(iter(found)))


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


def _block(m: TensorMap, src: str, res: str, attn: str | None, heads: int, attn_norm: str = "norm") -> None:
    """One EDM UNetBlock (`src`) -> the suite's ResBlock `res` (+ AttentionBlock `attn`, whose
    GroupNorm is `attn_norm`; ADM keeps the attention inside the block: attn = res)."""
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
    m.put(f"{attn}/{attn_norm}/scale", m.take(f"{src}.norm2.weight"))
    m.put(f"{attn}/{attn_norm}/bias", m.take(f"{src}.norm2.bias"))
    qkv, qkv_bias = m.take(f"{src}.qkv.weight"), m.take(f"{src}.qkv.bias")
    if qkv is not None and qkv_bias is not None:
        order = _qkv_order(qkv.shape[1], heads)
        m.put(f"{attn}/qkv/kernel", qkv[order, :, 0, 0].T)
        m.put(f"{attn}/qkv/bias", qkv_bias[order])
    proj = m.take(f"{src}.proj.weight")
    m.put(f"{attn}/proj/kernel", None if proj is None else proj[:, :, 0, 0].T)
    m.put(f"{attn}/proj/bias", m.take(f"{src}.proj.bias"))


def _filters(m: TensorMap, taps: tuple[int, ...]) -> None:
    """Check every resampling filter buffer against outer(taps, taps) / sum(taps)^2 (EDM's Conv2d
    buffer) and mark it as not imported (the filter is part of the model section)."""
    f = np.asarray(taps, np.float64)
    expected = (np.outer(f, f) / f.sum() ** 2)[None, None]
    for name in [n for n in m.tensors if n.endswith(".resample_filter")]:
        value = np.asarray(m.tensors[name], np.float64)
        if value.shape != expected.shape or np.max(np.abs(value - expected)) > 1e-7:
            raise PretrainedError(
                f"{m.path}: {name} is {value.ravel().tolist()}, not the filter {list(taps)} of the model section"
            )
        m.drop(name)


def params(model: Module, cfg: Mapping[str, Any], kwargs: Mapping[str, Any], expected, path: str) -> dict[str, Any]:
    """The suite UNet's params from SongUNet's tensors (see the module docstring)."""
    m = TensorMap(model.tensors(), path)
    _filters(m, tuple(cfg["resample_filter"]))
    m.drop("map_augment")
    if cfg["embedding_type"] == "fourier":
        m.put("cond/time/freqs", m.take("map_noise.freqs"))
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
            if cfg["encoder_type"] == "residual":
                m.put(f"enc_{level - 1}_aux_residual/conv/kernel", _conv(m.take(f"enc.{key}_aux_residual.weight")))
                m.put(f"enc_{level - 1}_aux_residual/conv/bias", m.take(f"enc.{key}_aux_residual.bias"))
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
    return m.finish(expected, f"EDM's {song_architecture(kwargs)} as the suite's unet")


def adm_params(model: Module, cfg: Mapping[str, Any], kwargs: Mapping[str, Any], expected, path: str) -> dict[str, Any]:
    """The suite ADM's params from DhariwalUNet's tensors (see the module docstring)."""
    m = TensorMap(model.tensors(), path)
    _filters(m, (1, 1))
    m.drop("map_augment")
    for edm_name, ours in (("map_layer0", "dense_0"), ("map_layer1", "dense_1")):
        m.put(f"cond/time/{ours}/kernel", _linear(m.take(f"{edm_name}.weight")))
        m.put(f"cond/time/{ours}/bias", m.take(f"{edm_name}.bias"))
    if int(kwargs["label_dim"]):
        m.put("cond/label/kernel", _linear(m.take("map_label.weight")))

    def block(src: str, ours: str) -> None:
        attention = m.has(f"{src}.qkv.weight")
        heads = m.tensors[f"{src}.qkv.weight"].shape[1] // int(cfg["channels_per_head"]) if attention else 0
        _block(m, src, ours, ours if attention else None, heads, attn_norm="norm_2")

    resolution, levels, blocks = int(kwargs["img_resolution"]), len(cfg["channel_mult"]), cfg["num_blocks"]
    for level in range(levels):
        key = f"{resolution >> level}x{resolution >> level}"
        if level == 0:
            m.put("conv_in/kernel", _conv(m.take(f"enc.{key}_conv.weight")))
            m.put("conv_in/bias", m.take(f"enc.{key}_conv.bias"))
        else:
            block(f"enc.{key}_down", f"enc_{level - 1}_down")
        for i in range(blocks):
            block(f"enc.{key}_block{i}", f"enc_{level}_block_{i}")
    for level in reversed(range(levels)):
        key = f"{resolution >> level}x{resolution >> level}"
        if level == levels - 1:
            block(f"dec.{key}_in0", "mid_0")
            block(f"dec.{key}_in1", "mid_1")
        else:
            block(f"dec.{key}_up", f"dec_{level + 1}_up")
        for i in range(blocks + 1):
            block(f"dec.{key}_block{i}", f"dec_{level}_block_{i}")
    m.put("norm_out/scale", m.take("out_norm.weight"))
    m.put("norm_out/bias", m.take("out_norm.bias"))
    m.put("conv_out/kernel", _conv(m.take("out_conv.weight")))
    m.put("conv_out/bias", m.take("out_conv.bias"))
    return m.finish(expected, "EDM's ADM (DhariwalUNet) as the suite's adm")


def convert(data: Mapping[str, Any], path: str) -> Imported:
    """An EDM network pickle (read by network_pickle.load) -> Imported."""
    from fewstep_jax import models

    ema, model = _network(data, path)
    adm = model.class_name == "DhariwalUNet"
    kwargs = {**(DHARIWALUNET_DEFAULTS if adm else SONGUNET_DEFAULTS), **model.kwargs}
    sigma_data = float(ema.state.get("sigma_data", ema.kwargs.get("sigma_data", 0.5)))
    cfg = adm_section(kwargs, channels_per_head(model, path), path) if adm else model_section(kwargs, path)
    shape = (int(kwargs["img_resolution"]), int(kwargs["img_resolution"]), int(kwargs["in_channels"]))
    num_classes = int(kwargs["label_dim"])
    try:
        net = models.build(cfg, data_shape=shape, num_classes=num_classes)
    except ValueError as e:
        raise PretrainedError(f"{path}: its network has no counterpart in the suite: {e}") from None
    tree = (adm_params if adm else params)(model, cfg, kwargs, expected_shapes(net, shape, num_classes), path)
    data_name = suite_dataset(shape, num_classes)
    dataset = data.get("dataset_kwargs") if isinstance(data.get("dataset_kwargs"), Mapping) else {}
    if adm:
        architecture = (
            f"ADM (EDM DhariwalUNet): {cfg['channels']} channels x {list(cfg['channel_mult'])}, "
            f"{cfg['num_blocks']} blocks per resolution, attention at {list(cfg['attn_resolutions'])} "
            f"with heads of {cfg['channels_per_head']} channels"
        )
    else:
        architecture = (
            f"{song_architecture(kwargs)} (EDM SongUNet): {cfg['channels']} channels x {list(cfg['channel_mult'])}, "
            f"{cfg['num_blocks']} blocks per resolution, attention at {list(cfg['attn_resolutions'])}"
        )
    summary = dict(
        architecture=architecture,
        network_class=f"{ema.class_name} / {model.class_name}",
        data=data_name or f"{shape} images (no dataset of the suite has this shape)",
        stored_dtype=str(next(iter(model.tensors().values())).dtype),
        ema="not recorded in the file (EDM trained it with a "
        + ("50 Mimg half-life, its ImageNet-64 setting)" if adm else "0.5 Mimg half-life, its default)"),
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
        sampling=SAMPLING_ADM if adm else SAMPLING,
        params=tree,
        summary=summary,
    )
