"""The files users provide, read without TensorFlow, and the published image preprocessing.

CIFAR-10 (python version, https://www.cs.toronto.edu/~kriz/cifar.html): cifar-10-python.tar.gz
holds cifar-10-batches-py/data_batch_1 .. data_batch_5 (train, 10,000 images each) and test_batch
(10,000). Each is a pickled dict with b'data', uint8 [N, 3072] (the 1024 red, then green, then
blue values of a 32x32 image, rows top to bottom) and b'labels', N ints in 0..9. The files are
pickles: read only the official tarball.

ImageNet (ILSVRC2012): ILSVRC2012_img_train.tar holds one tar per synset (n01440764.tar, ...),
each holding that synset's JPEGs; an extracted copy is a folder train/ of synset folders. Labels
are the index of the synset in the sorted list of the 1,000 ILSVRC2012 synset ids (0..999).
ILSVRC2012_img_val.tar holds the 50,000 validation JPEGs flat (ILSVRC2012_val_00000001.JPEG, ...);
their synsets come from the official ground truth, as shipped with tensorflow-datasets; a folder
val/ of synset folders works too.

Latent shards (our format, for VAE latents computed outside the suite): a folder of .npz files,
read in file-name order, each holding
  'latents'  float16 / float32 [n, H, W, C]: VAE latents, NOT multiplied by the scale factor; or
  'moments'  float16 / float32 [n, H, W, 2C]: the encoder's Gaussian posterior, mean channels
             then log-variance channels (the Stable Diffusion VAE's `moments`, channels last);
  'flipped'  optional, with 'moments' only: the moments of the horizontally mirrored images
             (a mirrored latent is not the latent of the mirrored image), same shape and dtype;
  'labels'   optional integer [n], class ids.
Every shard has the same kind, per-example shape and dtype, and labels (and flips) in all or
in none. `prepare` writes such shards itself when it encodes images (data/encode.py). A
PyTorch VAE gives channels-first arrays: np.transpose(x, (0, 2, 3, 1)) before saving.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import io
import itertools
import os
import tarfile
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent import futures
from typing import Any

import numpy as np
from absl import logging
from PIL import Image

from fewstep_jax import safe_pickle
from fewstep_jax.data import sources

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_GLOBALS = safe_pickle.NUMPY_ARRAYS  # the batches hold a numpy array, lists and byte strings
CIFAR10_SPLITS = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
LATENT_KINDS = ("latents", "moments")
LOGVAR_RANGE = (-30.0, 20.0)  # the Stable Diffusion VAE clamps its posterior log-variance to this

# The official synset lists ship inside tensorflow-datasets (data files, no TensorFlow needed).
_IMAGENET_LABEL_FILES = {
    "train": ("datasets/imagenet2012/labels.txt", "image_classification/imagenet2012_labels.txt"),
    "validation": (
        "datasets/imagenet2012/validation_labels.txt",
        "image_classification/imagenet2012_validation_labels.txt",
    ),
}


# ---------------------------------------------------------------------------- images


def adm_center_crop(image: Image.Image, size: int) -> np.ndarray:
    """ADM's `center_crop_arr` (Dhariwal & Nichol 2021, guided-diffusion image_datasets.py), which
    EDM2 (Karras et al. 2024, dataset_tool.py --transform=center-crop-dhariwal) reuses for
    ImageNet-64: while the short side is at least 2 * size, halve the image with a box filter;
    then resize bicubically so the short side is `size` (each side round(side * scale)); then
    take the central size x size crop. RGB PIL image -> uint8 [size, size, 3].
    """
    while min(image.size) >= 2 * size:
        image = image.resize((image.width // 2, image.height // 2), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), resample=Image.BICUBIC)
    pixels = np.asarray(image)
    top, left = (pixels.shape[0] - size) // 2, (pixels.shape[1] - size) // 2
    return pixels[top : top + size, left : left + size]


def decode_rgb(data: bytes) -> Image.Image:
    """Encoded image bytes (JPEG, PNG, ...; CMYK and grayscale too) -> RGB PIL image."""
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def encode_png(pixels: np.ndarray) -> bytes:
    """uint8 [H, W, 3] -> PNG bytes (lossless)."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def imagenet_png(data: bytes, size: int) -> bytes:
    """One ImageNet JPEG -> the PNG of its ADM center crop at `size`."""
    return encode_png(adm_center_crop(decode_rgb(data), size))


def resized_png(data: bytes, size: int) -> bytes:
    """An image kept as is when it is size x size, else ADM-center-cropped to it; as PNG."""
    image = decode_rgb(data)
    pixels = np.asarray(image) if image.size == (size, size) else adm_center_crop(image, size)
    return encode_png(pixels)


def ordered_map(fn: Callable[[Any], Any], items: Iterable[Any], num_workers: int, chunk: int = 512) -> Iterator[Any]:
    """fn over items on `num_workers` threads, results in input order, `chunk` items in flight.

    PIL decodes, resizes and encodes with the GIL released, so threads use all cores.
    """
    iterator = iter(items)
    with futures.ThreadPoolExecutor(max(1, num_workers)) as pool:
        while block := list(itertools.islice(iterator, chunk)):
            yield from pool.map(fn, block)


# ---------------------------------------------------------------------------- CIFAR-10


def file_md5(path: str) -> str:
    """Hex MD5 of a file, read in 1 MiB blocks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def read_cifar10(path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """cifar-10-python.tar.gz -> {'train': (x, y), 'test': (x, y)}, x uint8 [N, 32, 32, 3] (NHWC,
    from the stored CHW rows), y int64 [N]; train is data_batch_1 .. 5 in order.

    The batches are pickles, read with `safe_pickle` (plain arrays, lists, bytes and dicts only),
    so a tarball that is not the official one cannot run code; it is also named in a warning.
    """
    if file_md5(path) != sources.CIFAR10_MD5:
        logging.warning(
            "%s is not the official CIFAR-10 tarball (its MD5 is not %s); reading its arrays only",
            path,
            sources.CIFAR10_MD5,
        )
    out = {}
    with tarfile.open(path, "r:gz") as tar:
        for split, names in CIFAR10_SPLITS.items():
            images, labels = [], []
            for name in names:
                member = f"{CIFAR10_DIR}/{name}"
                try:
                    handle = tar.extractfile(member)
                except KeyError:
                    raise FileNotFoundError(f"{path} has no {member}: not the CIFAR-10 python tarball") from None
                batch = safe_pickle.load(handle, CIFAR10_GLOBALS, source=f"{path}:{member}", encoding="bytes")
                if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
                    raise ValueError(f"{path}:{member} is not a CIFAR-10 batch (a dict with b'data' and b'labels')")
                data = np.asarray(batch[b"data"], np.uint8)
                images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
                labels.append(np.asarray(batch[b"labels"], np.int64))
            out[split] = (np.concatenate(images), np.concatenate(labels))
    return out


# ---------------------------------------------------------------------------- ImageNet


def imagenet_labels(split: str) -> list[str]:
    """'train': the 1,000 ILSVRC2012 synset ids, sorted; 'validation': the synset of each of the
    50,000 validation images in file-name order."""
    root = importlib.resources.files("tensorflow_datasets")
    for relative in _IMAGENET_LABEL_FILES[split]:
        path = root.joinpath(relative)
        if path.is_file():
            return path.read_text().split()
    raise FileNotFoundError(
        f"tensorflow-datasets ships no ILSVRC2012 {split} label list at {_IMAGENET_LABEL_FILES[split]}"
    )


def _is_synset_id(name: str) -> bool:
    return len(name) == 9 and name[0] == "n" and name[1:].isdigit()


def imagenet_source(manual_dir: str, split: str) -> str | None:
    """The file or folder holding `split` ('train' / 'validation') in manual_dir, or None.

    Train: ILSVRC2012_img_train.tar, else a folder train/, else manual_dir itself when it holds
    synset folders. Validation: ILSVRC2012_img_val.tar, else a folder val/.
    """
    tar_name, folder = ("ILSVRC2012_img_train.tar", "train") if split == "train" else ("ILSVRC2012_img_val.tar", "val")
    for candidate in (os.path.join(manual_dir, tar_name), os.path.join(manual_dir, folder)):
        if os.path.exists(candidate):
            return candidate
    if split == "train" and os.path.isdir(manual_dir) and any(_is_synset_id(n) for n in os.listdir(manual_dir)):
        return manual_dir
    return None


def _synset_folders(root: str) -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    synsets = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not synsets:
        raise ValueError(f"{root} holds no synset folders (n01440764/, ...): sort the images into them")
    for synset in synsets:
        folder = os.path.join(root, synset)
        files = []
        for name in sorted(os.listdir(folder)):
            with open(os.path.join(folder, name), "rb") as f:
                files.append((name, f.read()))
        yield synset, files


def _tar_files(tar: tarfile.TarFile) -> list[tuple[str, bytes]]:
    members = sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name)
    return [(os.path.basename(m.name), tar.extractfile(m).read()) for m in members]


def _synset_tars(path: str) -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    with tarfile.open(path, "r:") as outer:
        members = sorted((m for m in outer.getmembers() if m.isfile()), key=lambda m: m.name)
        for member in members:
            if not member.name.endswith(".tar"):
                raise ValueError(f"{path}: {member.name} is not a per-synset tar (n01440764.tar, ...)")
            with tarfile.open(fileobj=outer.extractfile(member), mode="r:") as inner:
                yield os.path.basename(member.name)[: -len(".tar")], _tar_files(inner)


def imagenet_groups(source: str, split: str) -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    """(synset, [(file name, JPEG bytes), ...]) of `split`, synsets and files in sorted order.

    A flat validation tar yields one group per image with the synset of the official ground truth.
    """
    if os.path.isdir(source):
        yield from _synset_folders(source)
    elif split == "train":
        yield from _synset_tars(source)
    else:
        truth = imagenet_labels("validation")
        with tarfile.open(source, "r:") as tar:
            files = _tar_files(tar)
        if len(files) > len(truth):
            raise ValueError(f"{source} holds {len(files)} files; ILSVRC2012 validation has {len(truth)}")
        for name, data in files:
            index = int(os.path.splitext(name)[0].rsplit("_", 1)[-1]) - 1  # ILSVRC2012_val_00000001.JPEG -> 0
            yield truth[index], [(name, data)]


# ---------------------------------------------------------------------------- image folders


def image_files(root: str) -> list[str]:
    """Every image file below `root` (any depth), sorted by relative path."""
    found = []
    for folder, subfolders, names in os.walk(root):
        subfolders.sort()
        found += [os.path.join(folder, n) for n in names if n.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found, key=lambda p: os.path.relpath(p, root))


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# ---------------------------------------------------------------------------- latent shards


@dataclasses.dataclass(frozen=True)
class LatentShards:
    """A checked folder of latent shards. shape / dtype: one stored example ([H, W, C] latents or
    [H, W, 2C] moments); sizes: examples per file."""

    files: tuple[str, ...]
    kind: str
    shape: tuple[int, ...]
    dtype: str
    has_labels: bool
    sizes: tuple[int, ...]
    has_flipped: bool = False

    @property
    def num_examples(self) -> int:
        return sum(self.sizes)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """The shape of one latent: moments hold two latents' worth of channels."""
        if self.kind == "moments":
            return (*self.shape[:-1], self.shape[-1] // 2)
        return self.shape


def _npz_headers(path: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{array name: (shape, dtype)} of an .npz, reading only the array headers."""
    headers = {}
    with zipfile.ZipFile(path) as archive:
        for entry in archive.namelist():
            if not entry.endswith(".npy"):
                continue
            with archive.open(entry) as f:
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(f)
            headers[entry[: -len(".npy")]] = (tuple(shape), np.dtype(dtype))
    return headers


def scan_latent_shards(folder: str) -> LatentShards:
    """Checks every *.npz in `folder` against the format above (headers only) and describes them."""
    files = tuple(sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".npz")))
    if not files:
        raise FileNotFoundError(f"no latent shards (*.npz) in {folder}")
    kinds, shapes, dtypes, labelled, flipped, sizes = set(), set(), set(), set(), set(), []
    for path in files:
        headers = _npz_headers(path)
        present = [k for k in LATENT_KINDS if k in headers]
        if len(present) != 1:
            raise ValueError(f"{path}: needs exactly one of the arrays 'latents' or 'moments', has {sorted(headers)}")
        kind = present[0]
        shape, dtype = headers[kind]
        if len(shape) != 4 or dtype not in (np.float16, np.float32):
            raise ValueError(f"{path}: '{kind}' must be float16 / float32 [n, H, W, C], got {dtype} {list(shape)}")
        if kind == "moments" and shape[-1] % 2:
            raise ValueError(f"{path}: 'moments' needs an even channel count (mean, log-variance), got {shape[-1]}")
        if "labels" in headers:
            label_shape, label_dtype = headers["labels"]
            if label_shape != shape[:1] or label_dtype.kind not in "iu":
                raise ValueError(
                    f"{path}: 'labels' must be integers [{shape[0]}], got {label_dtype} {list(label_shape)}"
                )
        if "flipped" in headers and (kind != "moments" or headers["flipped"] != (shape, dtype)):
            raise ValueError(
                f"{path}: 'flipped' must be moments like 'moments' ({dtype} {list(shape)}), "
                f"got {headers['flipped'][1]} {list(headers['flipped'][0])} with '{kind}'"
            )
        kinds.add(kind)
        flipped.add("flipped" in headers)
        shapes.add(shape[1:])
        dtypes.add(dtype.name)
        labelled.add("labels" in headers)
        sizes.append(shape[0])
    if len(kinds) > 1 or len(shapes) > 1 or len(dtypes) > 1 or len(labelled) > 1 or len(flipped) > 1:
        raise ValueError(
            f"latent shards in {folder} disagree: kinds {sorted(kinds)}, example shapes {sorted(shapes)}, "
            f"dtypes {sorted(dtypes)}, labels present {sorted(labelled)}, flips present {sorted(flipped)}; "
            "every shard must match"
        )
    return LatentShards(files, kinds.pop(), shapes.pop(), dtypes.pop(), labelled.pop(), tuple(sizes), flipped.pop())


def latent_examples(shards: LatentShards) -> Iterator[tuple[np.ndarray, np.ndarray | None, int | None]]:
    """(stored array [H, W, C or 2C], flipped moments or None, label or None) of every example,
    in shard order."""
    for path in shards.files:
        with np.load(path, allow_pickle=False) as shard:
            values = shard[shards.kind]
            none: Sequence[Any] = [None] * len(values)
            labels: Sequence[Any] = shard["labels"] if shards.has_labels else none
            flipped: Sequence[Any] = shard["flipped"] if shards.has_flipped else none
            for value, mirror, label in zip(values, flipped, labels):
                yield value, mirror, None if label is None else int(label)
