"""Fixtures for importing the official EDM / EDM2 network pickles, and the script that writes them.

tests/test_pretrained_edm.py checks the suite's importers (fewstep_jax/models/pretrained/) against
the reference PyTorch code itself. This script builds each family's reference network, at a
reduced size, with NVlabs' own classes (persistence-wrapped, as their training code builds them),
sets deterministic random weights, pickles the result exactly as the official training loops do,
and evaluates the FULL preconditioned forward pass (EDMPrecond / EDM2's Precond: c_in, c_noise,
the noise embedding, the labels, c_skip, c_out; EDM2's log-variance head) in float64 on a few
inputs. Committed: the pickles (tests/fixtures/pretrained/*.pkl, each < 300 KB: the real file
format, module sources included) and the outputs (pretrained_golden.npz).

Networks (all 8x8, the shape of the suite's digits data, so the fixtures also drive the
train.init_from tests):
  edm-digits-8x8-{uncond,cond}-vp.pkl  EDMPrecond + SongUNet with EDM's DDPM++ settings (train.py
      --arch=ddpmpp: positional embedding, standard encoder / decoder, filter [1, 1]),
      model_channels 4, channel_mult [1, 2, 2], 1 block per level, attention at 4x4,
      channel_mult_noise 8 (a 32-wide positional embedding), augment_dim 9 as EDM's CIFAR-10
      models; 1 channel, 10 classes for `cond`. Pickled as EDM's training_loop.py does:
      dict(ema, loss_fn=EDMLoss, augment_pipe=AugmentPipe, dataset_kwargs), float32 weights.
  edm-digits-8x8-cond-ve.pkl  the same with EDM's NCSN++ settings (train.py --arch=ncsnpp:
      Fourier noise embedding, channel_mult_noise 2, residual encoder, standard decoder, filter
      [1, 3, 3, 1]), 10 classes.
  edm-digits-8x8-cond-adm.pkl  EDMPrecond + DhariwalUNet (train.py --arch=adm), model_channels 4,
      channel_mult [1, 2, 2], 1 block per level, attention at 8x8 and 4x4, dropout 0.1,
      augment_dim 9, 10 classes. DhariwalUNet passes channels_per_head=64 to its UNetBlocks, which
      leaves a network this small without attention heads; the fixture builds its UNetBlocks with
      channels_per_head=2 (the UNetBlock argument DhariwalUNet sets; the blocks record it in the
      file), through a wrapper around the class while DhariwalUNet is constructed.
  edm2-digits-xxs-0000524-0.130.pkl, edm2-latent8-xxs-uncond-0000262-0.050.pkl  EDM2's Precond
      + UNet, model_channels 8, channel_mult [1, 2, 2], 1 block per level, attention at 4x4 with
      4 channels per head, logvar_channels 16; 1 channel and 10 classes / 4 latent channels and
      no labels (with a StabilityVAEEncoder). Pickled as EDM2's training_loop.py /
      reconstruct_phema.py do: EasyDict(encoder, dataset_kwargs, loss_fn=EDM2Loss, ema) with the
      network in float16. The file names follow the released post-hoc EMA files
      (<name>-<training kimg>-<sigma_rel>.pkl).

Weights (`random_value`): each parameter and buffer is drawn from
numpy.random.default_rng([SEED, crc32(name)]) by its torch state_dict name, in float64, then
stored in the file's dtype:
  EDM   Linear / Conv2d weights N(0, 1 / fan_in); biases N(0, 0.1^2); GroupNorm weights
        U(0.5, 1.5), biases N(0, 0.1^2); the resampling filters keep their values (constants of
        the architecture); NCSN++'s Fourier frequencies 16 N(0, 1) (FourierEmbedding's scale).
        Every zero-initialized layer gets random weights too.
  EDM2  MPConv weights N(0, 3^2) (far from unit norm, so the weight normalization in the forward
        pass matters); the gains U(0.5, 1.5) (zero in a fresh network); MPFourier frequencies
        2 pi N(0, 1) and phases 2 pi U(0, 1).
Inputs: 5 noise levels sigma = (0.002, 0.05, 0.5, 3, 80), x = x0 + sigma n with x0 ~ U(-1, 1)
and n ~ N(0, 1) from default_rng(SEED); labels (3, 0, 9, 5, none) one-hot, "none" being the
all-zero row (both codes' input without a label; the suite's NULL id). Stored NHWC.

The float64 evaluation runs the reference modules unchanged: their module-level `torch` is
replaced by a proxy whose float32 / float16 are torch.float64 (every explicit cast in
EDMPrecond, AttentionOp, PositionalEmbedding, Precond, MPConv, MPFourier and normalize goes
through it), with torch's default dtype float64.

Regenerate (offline; torch CPU; nothing from the suite is imported, nothing written outside
tests/fixtures/pretrained):

    git clone https://github.com/NVlabs/edm /tmp/edm
    git -C /tmp/edm checkout 008a4e5316c8e3bfe61a62f874bddba254295afb
    git clone https://github.com/NVlabs/edm2 /tmp/edm2
    git -C /tmp/edm2 checkout 4bf8162f601bcc09472ce8a32dd0cbe8889dc8fc
    python tests/pretrained_golden.py --edm=/tmp/edm --edm2=/tmp/edm2

Each source tree is copied to a temporary directory and imported from there.
"""

from __future__ import annotations

import argparse
import copy
import os
import pickle
import shutil
import sys
import tempfile
import types
import zlib

import numpy as np

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "pretrained")
GOLDEN = os.path.join(FIXTURES, "pretrained_golden.npz")
SEED = 20240605
SIGMAS = (0.002, 0.05, 0.5, 3.0, 80.0)
LABELS = (3, 0, 9, 5, -1)  # -1: no label (the all-zero row)
NUM_CLASSES = 10

EDM_KWARGS = dict(
    img_resolution=8,
    model_type="SongUNet",
    embedding_type="positional",
    encoder_type="standard",
    decoder_type="standard",
    channel_mult_noise=8,
    resample_filter=[1, 1],
    model_channels=4,
    channel_mult=[1, 2, 2],
    num_blocks=1,
    attn_resolutions=[4],
    augment_dim=9,
    dropout=0.13,
    use_fp16=False,
)
EDM_NCSNPP_KWARGS = dict(
    EDM_KWARGS,
    embedding_type="fourier",
    encoder_type="residual",
    channel_mult_noise=2,
    resample_filter=[1, 3, 3, 1],
)
EDM_ADM_KWARGS = dict(
    img_resolution=8,
    model_type="DhariwalUNet",
    model_channels=4,
    channel_mult=[1, 2, 2],
    num_blocks=1,
    attn_resolutions=[8, 4],
    augment_dim=9,
    dropout=0.1,
    use_fp16=False,
)
#: channels_per_head of the fixture ADM's UNetBlocks (DhariwalUNet's own: 64).
ADM_CHANNELS_PER_HEAD = 2
EDM2_KWARGS = dict(
    img_resolution=8,
    model_channels=8,
    channel_mult=[1, 2, 2],
    num_blocks=1,
    attn_resolutions=[4],
    channels_per_head=4,
    logvar_channels=16,
    dropout=0.0,
    use_fp16=True,
)

#: file name -> (family, image channels, label count, constructor arguments)
FIXTURE_NETS = {
    "edm-digits-8x8-uncond-vp.pkl": ("edm", 1, 0, EDM_KWARGS),
    "edm-digits-8x8-cond-vp.pkl": ("edm", 1, NUM_CLASSES, EDM_KWARGS),
    "edm-digits-8x8-cond-ve.pkl": ("edm", 1, NUM_CLASSES, EDM_NCSNPP_KWARGS),
    "edm-digits-8x8-cond-adm.pkl": ("edm", 1, NUM_CLASSES, EDM_ADM_KWARGS),
    "edm2-digits-xxs-0000524-0.130.pkl": ("edm2", 1, NUM_CLASSES, EDM2_KWARGS),
    "edm2-latent8-xxs-uncond-0000262-0.050.pkl": ("edm2", 4, 0, EDM2_KWARGS),
}


def random_value(family: str, name: str, shape: tuple[int, ...], current: np.ndarray) -> np.ndarray:
    """The fixture value of the tensor `name` (see the module docstring)."""
    rng = np.random.default_rng([SEED, zlib.crc32(name.encode())])
    leaf = name.rsplit(".", 1)[-1]
    if family == "edm":
        if leaf == "resample_filter":
            return current
        if leaf == "freqs":
            return 16.0 * rng.normal(0.0, 1.0, shape)
        if leaf == "weight" and len(shape) >= 2:
            return rng.normal(0.0, 1.0 / np.sqrt(np.prod(shape[1:])), shape)
        if leaf == "weight" and "norm" in name:
            return rng.uniform(0.5, 1.5, shape)
        if leaf == "bias":
            return rng.normal(0.0, 0.1, shape)
    else:
        if leaf == "weight":
            return rng.normal(0.0, 3.0, shape)
        if leaf.endswith("gain"):
            return rng.uniform(0.5, 1.5, shape)
        if leaf == "freqs":
            return 2 * np.pi * rng.normal(0.0, 1.0, shape)
        if leaf == "phases":
            return 2 * np.pi * rng.uniform(0.0, 1.0, shape)
    raise ValueError(f"no rule for the {family} tensor {name} {shape}")


def golden_inputs(channels: int, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x [5, 8, 8, C] NHWC float64, sigma [5], one-hot labels [5, num_classes] or [5, 0])."""
    rng = np.random.default_rng(SEED)
    x0 = rng.uniform(-1.0, 1.0, (len(SIGMAS), 8, 8, channels))
    sigma = np.array(SIGMAS)
    x = x0 + sigma[:, None, None, None] * rng.normal(size=x0.shape)
    onehot = np.zeros((len(SIGMAS), num_classes))
    if num_classes:
        for i, y in enumerate(LABELS):
            if y >= 0:
                onehot[i, y] = 1.0
    return x, sigma, onehot


def _import_tree(source: str, tmp: str, name: str) -> None:
    """Copy a source checkout to tmp/name and import from there (a fresh set of its packages)."""
    if not os.path.isfile(os.path.join(source, "torch_utils", "persistence.py")):
        raise SystemExit(f"{source} is not a checkout of NVlabs/{name} (no torch_utils/persistence.py)")
    tree = os.path.join(tmp, name)
    shutil.copytree(source, tree, ignore=shutil.ignore_patterns(".git", "docs", "*.png", "*.jpg"))
    for module in [m for m in sys.modules if m.split(".")[0] in ("torch_utils", "dnnlib", "training")]:
        del sys.modules[module]
    sys.path.insert(0, tree)


class _Float64Torch(types.ModuleType):
    """`torch` with float32 and float16 meaning float64, for the reference modules' globals."""

    def __init__(self, torch):
        super().__init__("torch")
        self._torch = torch

    def __getattr__(self, name):
        if name in ("float32", "float16"):
            return self._torch.float64
        return getattr(self._torch, name)


def _randomize(net, family: str, dtype) -> None:
    import torch

    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            value = random_value(family, name, tuple(tensor.shape), tensor.numpy())
            tensor.copy_(torch.from_numpy(np.asarray(value, np.float64)).to(dtype))


def _evaluate(net, module, family: str, channels: int, num_classes: int) -> dict[str, np.ndarray]:
    """The float64 outputs of the reference network on the golden inputs."""
    import torch

    x, sigma, onehot = golden_inputs(channels, num_classes)
    net64 = copy.deepcopy(net).double().eval()
    saved, module.torch = module.torch, _Float64Torch(torch)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with torch.no_grad():
            args = (torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(sigma))
            labels = torch.from_numpy(onehot) if num_classes else None
            out = {"x": x, "sigma": sigma, "labels": np.array(LABELS) if num_classes else np.zeros(0, np.int64)}
            if family == "edm2":
                denoised, logvar = net64(*args, labels, return_logvar=True)
                out["logvar"] = logvar.reshape(-1).numpy()
            else:
                denoised = net64(*args, labels)
            assert denoised.dtype == torch.float64
            out["denoised"] = denoised.permute(0, 2, 3, 1).numpy()
            out["num_params"] = np.array(kept_parameters(net, family))
    finally:
        module.torch = saved
        torch.set_default_dtype(default)
    return out


#: Released files whose full-size parameter counts the tests compare with: file -> constructor
#: arguments (EDM train.py --arch=ddpmpp / ncsnpp for CIFAR-10, --arch=adm for ImageNet-64 as
#: EDM's README trains it: --dropout=0.10 --augment=0; EDM2 train_edm2.py presets).
_CIFAR10_DDPMPP = {
    **EDM_KWARGS,
    "img_resolution": 32,
    "img_channels": 3,
    "channel_mult_noise": 1,
    "model_channels": 128,
    "channel_mult": [2, 2, 2],
    "num_blocks": 4,
    "attn_resolutions": [16],
}
_CIFAR10_NCSNPP = {
    **_CIFAR10_DDPMPP,
    "embedding_type": "fourier",
    "encoder_type": "residual",
    "channel_mult_noise": 2,
    "resample_filter": [1, 3, 3, 1],
}
RELEASED = {
    "edm-cifar10-32x32-uncond-vp.pkl": dict(class_name="training.networks.EDMPrecond", label_dim=0, **_CIFAR10_DDPMPP),
    "edm-cifar10-32x32-cond-vp.pkl": dict(class_name="training.networks.EDMPrecond", label_dim=10, **_CIFAR10_DDPMPP),
    "edm-cifar10-32x32-uncond-ve.pkl": dict(class_name="training.networks.EDMPrecond", label_dim=0, **_CIFAR10_NCSNPP),
    "edm-cifar10-32x32-cond-ve.pkl": dict(class_name="training.networks.EDMPrecond", label_dim=10, **_CIFAR10_NCSNPP),
    "edm-imagenet-64x64-cond-adm.pkl": dict(
        class_name="training.networks.EDMPrecond",
        img_resolution=64,
        img_channels=3,
        label_dim=1000,
        model_type="DhariwalUNet",
        model_channels=192,
        channel_mult=[1, 2, 3, 4],
        dropout=0.1,
    ),
    "edm2-img512-xs-2147483-0.135.pkl": dict(
        class_name="training.networks_edm2.Precond",
        img_resolution=64,
        img_channels=4,
        label_dim=1000,
        model_channels=128,
        dropout=0.0,
    ),
    "edm2-img64-s-1073741-0.075.pkl": dict(
        class_name="training.networks_edm2.Precond",
        img_resolution=64,
        img_channels=3,
        label_dim=1000,
        model_channels=192,
        dropout=0.0,
    ),
}


def kept_parameters(net, family: str) -> int:
    """What the suite's network holds of a reference network: the denoiser's parameters (EDM:
    without the augmentation map, plus NCSN++'s Fourier frequencies; EDM2: the UNet's, plus its
    MPFourier frequencies and phases)."""
    if family == "edm":
        kept = {k: v for k, v in net.model.named_parameters() if not k.startswith("map_augment.")}
        kept.update({k: v for k, v in net.model.named_buffers() if k == "map_noise.freqs"})
    else:
        kept = {**dict(net.unet.named_parameters()), **dict(net.unet.emb_fourier.named_buffers())}
    return sum(v.numel() for v in kept.values())


def released_counts(family: str) -> dict[str, np.ndarray]:
    import dnnlib

    out = {}
    for file, kwargs in RELEASED.items():
        if file.startswith(family + "-"):
            net = dnnlib.util.construct_class_by_name(**kwargs)
            out[f"released/{file}/num_params"] = np.array(kept_parameters(net, family))
            del net
    return out


def _write(family: str, module, build, pack) -> dict[str, np.ndarray]:
    """Build, randomize, pickle (`pack` gives what the official training loop pickles) and
    evaluate each fixture network of `family`."""
    import torch

    out = {}
    for file, (kind, channels, num_classes, kwargs) in FIXTURE_NETS.items():
        if kind != family:
            continue
        torch.manual_seed(0)
        net = build(channels, num_classes, kwargs)
        _randomize(net, family, torch.float32)
        data = pack(net, channels, num_classes)
        with open(os.path.join(FIXTURES, file), "wb") as f:
            pickle.dump(data, f)
        for key, value in _evaluate(data["ema"], module, family, channels, num_classes).items():
            out[f"{file}/{key}"] = value
    return {**out, **released_counts(family)}


def write_edm(source: str, tmp: str) -> dict[str, np.ndarray]:
    _import_tree(source, tmp, "edm")
    import dnnlib
    import training.networks

    def build(channels, num_classes, kwargs):
        block = training.networks.UNetBlock
        if kwargs["model_type"] == "DhariwalUNet":  # see the module docstring

            def fixture_block(**block_kwargs):
                return block(**{**block_kwargs, "channels_per_head": ADM_CHANNELS_PER_HEAD})

            training.networks.UNetBlock = fixture_block
        try:
            return dnnlib.util.construct_class_by_name(
                class_name="training.networks.EDMPrecond", img_channels=channels, label_dim=num_classes, **kwargs
            )
        finally:
            training.networks.UNetBlock = block

    def pack(net, channels, num_classes):
        """EDM training_loop.py: the EMA network copied, in eval mode, without gradients, on the CPU."""
        loss_fn = dnnlib.util.construct_class_by_name(class_name="training.loss.EDMLoss")
        augment_pipe = dnnlib.util.construct_class_by_name(
            class_name="training.augment.AugmentPipe",
            p=0.12,
            xflip=1e8,
            yflip=1,
            scale=1,
            rotate_frac=1,
            aniso=1,
            translate_frac=1,
        )
        dataset_kwargs = dnnlib.EasyDict(
            class_name="training.dataset.ImageFolderDataset",
            path="datasets/digits-8x8.zip",
            use_labels=bool(num_classes),
            xflip=False,
            cache=True,
            resolution=8,
            max_size=1797,
        )
        ema = copy.deepcopy(net).eval().requires_grad_(False).cpu()
        return dict(ema=ema, loss_fn=loss_fn, augment_pipe=augment_pipe, dataset_kwargs=dict(dataset_kwargs))

    return _write("edm", training.networks, build, pack)


def write_edm2(source: str, tmp: str) -> dict[str, np.ndarray]:
    import torch

    sys.modules.setdefault("psutil", types.ModuleType("psutil"))  # training_loop imports it for memory stats
    _import_tree(source, tmp, "edm2")
    import dnnlib
    import training.networks_edm2

    def build(channels, num_classes, kwargs):
        return dnnlib.util.construct_class_by_name(
            class_name="training.networks_edm2.Precond", img_channels=channels, label_dim=num_classes, **kwargs
        )

    def pack(net, channels, num_classes):
        """EDM2 training_loop.py's network snapshots (reconstruct_phema.py writes the same layout)."""
        encoder = "StabilityVAEEncoder" if channels == 4 else "StandardRGBEncoder"
        data = dnnlib.EasyDict(
            encoder=dnnlib.util.construct_class_by_name(class_name="training.encoders." + encoder),
            dataset_kwargs=dnnlib.EasyDict(
                class_name="training.dataset.ImageFolderDataset",
                path="datasets/digits-8x8.zip",
                use_labels=bool(num_classes),
            ),
            loss_fn=dnnlib.util.construct_class_by_name(
                class_name="training.training_loop.EDM2Loss", P_mean=-0.8, P_std=1.6
            ),
        )
        data.ema = copy.deepcopy(net).cpu().eval().requires_grad_(False).to(torch.float16)
        return data

    return _write("edm2", training.networks_edm2, build, pack)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--edm", required=True, help="a checkout of NVlabs/edm (commit 008a4e5)")
    parser.add_argument("--edm2", required=True, help="a checkout of NVlabs/edm2 (commit 4bf8162)")
    args = parser.parse_args()
    import torch

    os.makedirs(FIXTURES, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = {**write_edm(args.edm, tmp), **write_edm2(args.edm2, tmp)}
    np.savez_compressed(GOLDEN, **out)
    for file in FIXTURE_NETS:
        print(f"{file}: {os.path.getsize(os.path.join(FIXTURES, file))} bytes")
    print(f"wrote {GOLDEN} (torch {torch.__version__})")


if __name__ == "__main__":
    main()
