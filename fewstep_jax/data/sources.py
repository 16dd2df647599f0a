"""The real datasets: what each one is, where it lives once prepared, what the user provides.

Cheap to import (no tensorflow-datasets, no grain): `validate` and the not-prepared error
messages use it before anything is read.

Prepared datasets live in DATA_DIR/<builder>/<version>/ (the tensorflow-datasets layout, array_record
files), DATA_DIR being data.data_dir, else $TFDS_DATA_DIR, else ~/tensorflow_datasets. The builder
names carry a `fewstep_` prefix: they are not the catalogue's own `cifar10` / `imagenet2012`
datasets, whose layout and preprocessing differ.

Pixel datasets store PNG-encoded uint8 RGB images; training batches are float32 NHWC in [-1, 1]
(x / 127.5 - 1), whose per-element std is close to 0.5: DatasetInfo.data_std = 0.5 is EDM's
sigma_data convention for such images (Karras et al. 2022, sec. 5), not a measured value. Latent
datasets store VAE latents (or the encoder's mean / log-variance moments, and those of the
mirrored images) with the name of their latent normalization preset (data/latents.py), which
maps them to the network's space at read time and fixes data_std.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

VERSION = "1.0.0"
DEFAULT_DATA_DIR = os.path.join("~", "tensorflow_datasets")

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"  # as published on the CIFAR-10 page
CIFAR10_FILE = "cifar-10-python.tar.gz"
IMAGENET_TRAIN_TAR = "ILSVRC2012_img_train.tar"
IMAGENET_VAL_TAR = "ILSVRC2012_img_val.tar"


@dataclasses.dataclass(frozen=True)
class RealDataset:
    """One real dataset.

    name: the data.name of configs. builder: the prepared dataset's directory name.
    shape: one example, (H, W, C); None for latents (read from the prepared dataset).
    num_classes: label count (0: no labels). splits: the splits preparation writes (optional
    ones only when their files are there). conditional_default: data.conditional when unset.
    expects: what the user puts in the manual folder, in words. download_url: where
    `prepare --download` fetches it (None: no public download).
    """

    name: str
    builder: str
    shape: tuple[int, int, int] | None
    num_classes: int
    splits: tuple[str, ...]
    conditional_default: bool
    expects: str
    download_url: str | None = None
    image_size: int | None = None  # latents: the square pixel size they are encoded from

    @property
    def is_latent(self) -> bool:
        return self.shape is None


def _latent_files(images: str) -> str:
    return (
        f"{images} (encoded with --vae_weights), or an EDM2-style latent store (a folder or .zip of "
        "img-mean-std-*.npy with dataset.json), or latent shards *.npz with 'latents' [n, H, W, C] or "
        "'moments' [n, H, W, 2C] (mean then log-variance channels) and optionally 'labels' [n] "
        "(see fewstep_jax/data/formats.py)"
    )


_IMAGENET_FILES = f"{IMAGENET_TRAIN_TAR} (or its extraction: a folder train/ of synset folders n01440764/ ...)"
_CELEBAHQ_FILES = "the CelebA-HQ images (.png / .jpg, any folder depth; 256x256 or larger)"

DATASETS: dict[str, RealDataset] = {
    d.name: d
    for d in (
        RealDataset(
            "cifar10",
            "fewstep_cifar10",
            (32, 32, 3),
            10,
            ("train", "test"),
            False,
            f"{CIFAR10_FILE} (the CIFAR-10 python version, {CIFAR10_URL})",
            CIFAR10_URL,
        ),
        RealDataset(
            "imagenet64",
            "fewstep_imagenet64",
            (64, 64, 3),
            1000,
            ("train", "validation"),
            True,
            f"{_IMAGENET_FILES[:-1]}; optionally {IMAGENET_VAL_TAR} or a folder val/ of synset folders)",
        ),
        RealDataset(
            "celebahq256",
            "fewstep_celebahq256",
            (256, 256, 3),
            0,
            ("train",),
            False,
            _CELEBAHQ_FILES,
        ),
        RealDataset(
            "imagenet256_latents", "fewstep_imagenet256_latents", None, 1000, ("train",), True,
            _latent_files(_IMAGENET_FILES), image_size=256,
        ),
        RealDataset(
            "celebahq256_latents", "fewstep_celebahq256_latents", None, 0, ("train",), False,
            _latent_files(_CELEBAHQ_FILES), image_size=256,
        ),
        RealDataset(
            "imagenet512_latents", "fewstep_imagenet512_latents", None, 1000, ("train",), True,
            _latent_files(_IMAGENET_FILES), image_size=512,
        ),
    )
}


def get(name: str) -> RealDataset:
    if name not in DATASETS:
        raise ValueError(f"unknown real dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]


def resolve_data_dir(data_dir: Any = None) -> str:
    """data.data_dir if set (non-empty), else $TFDS_DATA_DIR, else ~/tensorflow_datasets; absolute."""
    chosen = data_dir or os.environ.get("TFDS_DATA_DIR") or DEFAULT_DATA_DIR
    return os.path.abspath(os.path.expanduser(str(chosen)))


def prepared_dir(dataset: RealDataset, data_dir: str) -> str:
    """Where the prepared dataset lives: DATA_DIR/<builder>/<version>."""
    return os.path.join(data_dir, dataset.builder, VERSION)


def prepare_command(dataset: RealDataset, data_dir: str, manual_dir: str = "DIR", latent_preset: Any = None) -> str:
    """The exact command that prepares `dataset` into `data_dir`."""
    command = (
        f"python -m fewstep_jax.data.prepare --dataset={dataset.name} --manual_dir={manual_dir} --data_dir={data_dir}"
    )
    if dataset.is_latent:
        command += f" --latent_preset={latent_preset or 'sd'} --vae_weights=VAE.safetensors"
    return command


def not_prepared_message(dataset: RealDataset, data_dir: str, latent_preset: Any = None) -> str:
    """Says which files to put where and the command that prepares them."""
    missing = os.path.join(prepared_dir(dataset, data_dir), "dataset_info.json")
    message = (
        f"dataset {dataset.name!r} is not prepared in {data_dir} (no {missing}). Put {dataset.expects} "
        f"in a folder DIR, then run:\n  {prepare_command(dataset, data_dir, latent_preset=latent_preset)}"
    )
    if dataset.download_url:
        message += f"\n(or add --download to fetch {dataset.download_url} into DIR first)"
    if dataset.is_latent:
        message += (
            "\n(--latent_preset: sd, edm2, scm or imf, see fewstep_jax/data/latents.py; --vae_weights: the "
            "Stable Diffusion VAE's diffusion_pytorch_model.safetensors from stabilityai/sd-vae-ft-mse, "
            "needed when DIR holds images)"
        )
    message += "\nSet data.data_dir or $TFDS_DATA_DIR to read prepared datasets from another folder."
    return message
