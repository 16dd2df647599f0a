"""tensorflow-datasets builders of the real datasets, writing array_record files without TensorFlow.

Each builder reads the user's files from the manual folder (formats.py) and writes
DATA_DIR/<builder>/<version>/ in source order (no tfds shuffling: iterate_images sees the
CIFAR batches, the sorted synsets and the sorted file names in order). Images are written as
PNG bytes through tfds.features.Image, latents as tfds.features.Tensor: both serialize without
TensorFlow (a numpy image given to tfds.features.Image would need TensorFlow to encode).
Reading needs neither these classes nor TensorFlow: tfds.builder_from_directory(path) and
tfds.data_source-style random access (`as_data_source`), see tfds_reader.py.

Use prepare.py (`python -m fewstep_jax.data.prepare`) rather than these classes directly.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from fewstep_jax.data import formats, latents, sources


class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared by all builders: array_record files, source order, a worker count for decoding.

    A subclass names its sources.RealDataset (DATASET), which gives the builder's name and the
    manual-download text; its docstring is the dataset description. Builders stay out of the
    tfds registry: the prepared files are read by path (builder_from_directory), never by name.
    """

    VERSION = tfds.core.Version(sources.VERSION)
    RELEASE_NOTES = {sources.VERSION: "First release."}
    DATASET: sources.RealDataset
    HOMEPAGE = ""

    def __init_subclass__(cls, **kwargs: Any):
        if "DATASET" in cls.__dict__:
            cls.name = cls.DATASET.builder
            cls.MANUAL_DOWNLOAD_INSTRUCTIONS = f"Put {cls.DATASET.expects} in the manual folder."
        super().__init_subclass__(skip_registration=True, **kwargs)

    def __init__(self, *, num_workers: int = 0, **kwargs: Any):
        self._num_workers = num_workers or os.cpu_count() or 1
        super().__init__(file_format="array_record", **kwargs)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # tfds's default lookup needs the importlib_resources backport for a package found on
        # disk (it looks for a checksums file next to the code; these builders download nothing).
        return epath.Path(__file__)

    def _features(self) -> dict[str, Any]:
        raise NotImplementedError

    def _metadata(self) -> dict[str, Any]:
        return {"fewstep_dataset": self.DATASET.name}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=" ".join((self.__doc__ or "").split()),
            features=tfds.features.FeaturesDict(self._features()),
            homepage=self.HOMEPAGE,
            metadata=tfds.core.MetadataDict(self._metadata()),
            disable_shuffling=True,  # keep the source order
        )

    def _image(self) -> tfds.features.Image:
        return tfds.features.Image(shape=self.DATASET.shape, encoding_format="png")

    def _generate_examples(self, examples: Iterator[dict[str, Any]]):
        for index, example in enumerate(examples):
            yield index, example


class Cifar10(_Builder):
    """CIFAR-10, 32x32, 10 classes: train 50,000 (data_batch_1 .. 5), test 10,000 (test_batch)."""

    DATASET = sources.DATASETS["cifar10"]
    HOMEPAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"

    def _features(self):
        return {"image": self._image(), "label": tfds.features.ClassLabel(names=formats.CIFAR10_CLASSES)}

    def _split_generators(self, dl_manager):
        splits = formats.read_cifar10(os.path.join(dl_manager.manual_dir, sources.CIFAR10_FILE))
        return {split: self._generate_examples(self._examples(x, y)) for split, (x, y) in splits.items()}

    def _examples(self, images, labels):
        pngs = formats.ordered_map(formats.encode_png, images, self._num_workers)
        for png, label in zip(pngs, labels):
            yield {"image": png, "label": int(label)}


class Imagenet64(_Builder):
    """ImageNet (ILSVRC2012) at 64x64 with ADM's center crop (formats.adm_center_crop), as ADM and
    EDM2 train on; 1,000 classes, synset ids sorted -> 0..999. Train, and validation when given."""

    DATASET = sources.DATASETS["imagenet64"]
    HOMEPAGE = "https://image-net.org/challenges/LSVRC/2012/"

    def _features(self):
        return {"image": self._image(), "label": tfds.features.ClassLabel(names=formats.imagenet_labels("train"))}

    def _split_generators(self, dl_manager):
        generators = {}
        for split in ("train", "validation"):
            source = formats.imagenet_source(dl_manager.manual_dir, split)
            if source is not None:
                generators[split] = self._generate_examples(self._examples(source, split))
        return generators

    def _examples(self, source: str, split: str):
        index = {synset: i for i, synset in enumerate(formats.imagenet_labels("train"))}
        size = self.DATASET.shape[0]

        def labelled_jpegs():
            start = time.perf_counter()
            for group, (synset, files) in enumerate(formats.imagenet_groups(source, split)):
                if synset not in index:
                    raise ValueError(f"{source}: {synset!r} is not an ILSVRC2012 synset id")
                if len(files) > 1 or group % 5000 == 0:  # a flat validation tar has one image per group
                    elapsed = time.perf_counter() - start
                    logging.info(
                        "imagenet64 %s: group %d (%s, %d images), %.0f s", split, group, synset, len(files), elapsed
                    )
                for _, data in files:
                    yield index[synset], data

        items = labelled_jpegs()
        pngs = formats.ordered_map(
            lambda item: (item[0], formats.imagenet_png(item[1], size)), items, self._num_workers
        )
        for label, png in pngs:
            yield {"image": png, "label": label}


class Celebahq256(_Builder):
    """CelebA-HQ at 256x256 from an image folder (any depth, sorted paths), unconditional.
    256x256 images are kept bit-exact; others get ADM's center crop to 256 (formats.adm_center_crop)."""

    DATASET = sources.DATASETS["celebahq256"]
    HOMEPAGE = "https://github.com/tkarras/progressive_growing_of_gans"

    def _features(self):
        return {"image": self._image()}

    def _split_generators(self, dl_manager):
        files = formats.image_files(dl_manager.manual_dir)
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(formats.IMAGE_EXTENSIONS)}) below {dl_manager.manual_dir}")
        logging.info("celebahq256: %d images in %s", len(files), dl_manager.manual_dir)
        return {"train": self._generate_examples(self._examples(files))}

    def _examples(self, files: list[str]):
        size = self.DATASET.shape[0]
        pngs = formats.ordered_map(lambda p: formats.resized_png(formats.read_bytes(p), size), files, self._num_workers)
        for png in pngs:
            yield {"image": png}


class _Latents(_Builder):
    """VAE latents (or posterior moments, optionally with those of the mirrored images) from
    latent shards (formats.py), with their latent preset (latents.py) and how they were made in
    the metadata; the reader samples the moments and applies the preset at read time."""

    def __init__(self, *, shards: formats.LatentShards, latent_preset: str, provenance: dict[str, Any], **kwargs: Any):
        if shards.has_labels and not self.DATASET.num_classes:
            raise ValueError(f"{self.DATASET.name} is unconditional: its latent shards must not hold 'labels'")
        self._preset = latents.get(latent_preset)
        if shards.latent_shape[-1] != len(self._preset.scale):
            raise ValueError(
                f"the latent preset {latent_preset!r} is for {len(self._preset.scale)}-channel latents, "
                f"the shards hold {shards.latent_shape[-1]} channels"
            )
        self._shards = shards
        self._provenance = dict(provenance)
        super().__init__(**kwargs)

    def _features(self):
        tensor = tfds.features.Tensor(shape=self._shards.shape, dtype=np.dtype(self._shards.dtype))
        features = {self._shards.kind: tensor}
        if self._shards.has_flipped:
            features["moments_flipped"] = tensor
        if self._shards.has_labels:
            features["label"] = tfds.features.ClassLabel(num_classes=self.DATASET.num_classes)
        return features

    def _metadata(self):
        return dict(
            super()._metadata(),
            latent_preset=self._preset.name,
            vae_input_range=self._preset.input_range,
            latent_kind=self._shards.kind,
            **self._provenance,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # the shards were found and checked before construction
        return {"train": self._generate_examples(self._examples())}

    def _examples(self):
        kind, num_classes = self._shards.kind, self.DATASET.num_classes
        for value, mirror, label in formats.latent_examples(self._shards):
            example = {kind: value}
            if mirror is not None:
                example["moments_flipped"] = mirror
            if label is not None:
                if not 0 <= label < num_classes:
                    raise ValueError(f"latent label {label} is outside 0..{num_classes - 1}")
                example["label"] = label
            yield example


class Imagenet256Latents(_Latents):
    """VAE latents of 256x256 ImageNet images (labels: sorted synset ids -> 0..999)."""

    DATASET = sources.DATASETS["imagenet256_latents"]


class Celebahq256Latents(_Latents):
    """VAE latents of CelebA-HQ 256x256 images (unconditional)."""

    DATASET = sources.DATASETS["celebahq256_latents"]


class Imagenet512Latents(_Latents):
    """VAE latents of 512x512 ImageNet images (EDM2's and sCM's setting; labels as for 256)."""

    DATASET = sources.DATASETS["imagenet512_latents"]


BUILDERS: dict[str, type[_Builder]] = {
    b.DATASET.name: b
    for b in (Cifar10, Imagenet64, Celebahq256, Imagenet256Latents, Celebahq256Latents, Imagenet512Latents)
}
