"""Encoding images into VAE moments for the latent datasets, resumable, shard by shard.

    python -m fewstep_jax.data.prepare --dataset=imagenet256_latents --manual_dir=IMAGENET \\
        --vae_weights=diffusion_pytorch_model.safetensors --latent_preset=sd --flip

The images are read in the fixed order of the pixel datasets (ImageNet: sorted synsets, then
file names; a folder: sorted relative paths), center-cropped as ADM does (formats.adm_center_crop)
at the dataset's size, mapped to the preset's VAE input range and encoded in batches (the VAE
shards each batch over all local devices). Every `shard_size` consecutive source images form one
shard file `shard-NNNNN.npz` in the work folder (see `work_dir`), holding

    moments  float32 [n, h, w, 2C]: the posterior's mean, then log-variance channels (raw VAE units)
    flipped  float32 [n, h, w, 2C]: the moments of the horizontally mirrored image (with --flip)
    labels   int32 [n] (labelled datasets)

A shard is written to a temporary name and renamed once complete, so a killed run leaves only
whole shards, and a rerun encodes just the missing ones (the work folder's settings.json must
match: same VAE weights, preset, flips, crop size and shard size). An image that cannot be
decoded is skipped, counted and named in the log and in settings.json's `skipped` list; the
count is deterministic, since the same files fail on every run. A full disk stops the run with
one message; the finished shards are kept.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np
from absl import logging

from fewstep_jax.data import formats, latents, sources

SHARD_PREFIX = "shard-"
SETTINGS = "settings.json"
PROGRESS_SECONDS = 30.0


class Encoder(Protocol):
    """What encoding needs of a VAE (models/vae.py VAE): moments of a float batch, and a fingerprint."""

    fingerprint: str

    def encode_moments(self, images: np.ndarray) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True)
class Item:
    """One source image: its label (0 for unlabelled data), a name for messages, a byte reader."""

    label: int
    name: str
    read: Callable[[], bytes]


def image_items(dataset: sources.RealDataset, manual_dir: str) -> tuple[Iterator[Item], int | None]:
    """The images a latent dataset is encoded from, in their fixed order, and their count when
    known without reading (image folders; ImageNet tarballs are counted as they are read)."""
    if dataset.num_classes:  # ImageNet
        source = formats.imagenet_source(manual_dir, "train")
        if source is None:
            raise FileNotFoundError(f"{manual_dir} holds no ImageNet training images ({sources.IMAGENET_TRAIN_TAR})")
        index = {synset: i for i, synset in enumerate(formats.imagenet_labels("train"))}

        def imagenet() -> Iterator[Item]:
            for synset, files in formats.imagenet_groups(source, "train"):
                if synset not in index:
                    raise ValueError(f"{source}: {synset!r} is not an ILSVRC2012 synset id")
                for name, data in files:
                    yield Item(index[synset], f"{synset}/{name}", lambda data=data: data)

        return imagenet(), None
    files = formats.image_files(manual_dir)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(formats.IMAGE_EXTENSIONS)}) below {manual_dir}")
    items = (Item(0, os.path.relpath(p, manual_dir), lambda p=p: formats.read_bytes(p)) for p in files)
    return items, len(files)


def crop(item: Item, size: int) -> np.ndarray | None:
    """uint8 [size, size, 3] ADM center crop of the item (an exact-size image is kept as is), or
    None when the file cannot be decoded."""
    try:
        image = formats.decode_rgb(item.read())
    except Exception as error:  # PIL raises many types for a broken file
        logging.warning("skipping %s: cannot decode it (%s)", item.name, error)
        return None
    return np.asarray(image) if image.size == (size, size) else formats.adm_center_crop(image, size)


def work_dir(data_dir: str, dataset: sources.RealDataset, preset: str, flip: bool) -> str:
    """Where the shards of one encoding live until the dataset is built from them."""
    return os.path.join(data_dir, dataset.builder, f"encoding-{preset}{'-flip' if flip else ''}")


def _check_settings(folder: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Writes settings.json in a new work folder; in an existing one, they must match (resume)."""
    path = os.path.join(folder, SETTINGS)
    if os.path.isfile(path):
        with open(path) as f:
            recorded = json.load(f)
        differ = {k: (recorded.get(k), v) for k, v in settings.items() if recorded.get(k) != v}
        if differ:
            details = "; ".join(f"{k}: recorded {a!r}, now {b!r}" for k, (a, b) in differ.items())
            raise ValueError(
                f"{folder} holds shards encoded with other settings ({details}); "
                "rerun with the recorded settings to resume, or delete the folder to start again"
            )
        return recorded
    os.makedirs(folder, exist_ok=True)
    recorded = dict(settings, skipped=[])
    _write_json(path, recorded)
    return recorded


def _write_json(path: str, value: Any) -> None:
    partial = path + ".part"
    with open(partial, "w") as f:
        json.dump(value, f, indent=1)
    os.replace(partial, path)


def shard_path(folder: str, index: int) -> str:
    return os.path.join(folder, f"{SHARD_PREFIX}{index:05d}.npz")


def _save_shard(path: str, arrays: dict[str, np.ndarray]) -> None:
    partial = path + ".part.npz"
    try:
        np.savez(partial, **arrays)
        os.replace(partial, path)
    except OSError as error:
        if os.path.exists(partial):
            os.remove(partial)
        raise OSError(
            f"could not write {path} ({error.strerror or error}); the finished shards are kept: "
            "free some space (or choose another --data_dir) and rerun the same command to resume"
        ) from error


def _encode_batch(encoder: Encoder, preset: latents.Preset, images: list[np.ndarray]) -> np.ndarray:
    return np.asarray(encoder.encode_moments(preset.images_to_vae(np.stack(images))), np.float32)


def encode_images(
    items: Iterator[Item],
    *,
    encoder: Encoder,
    preset: latents.Preset,
    folder: str,
    size: int,
    flip: bool,
    labelled: bool,
    total: int | None = None,
    shard_size: int = 4096,
    batch_size: int = 64,
    num_workers: int = 0,
    settings: dict[str, Any] | None = None,
) -> list[str]:
    """Encodes every item into shards in `folder` (module doc); returns the shard paths in order.

    Shard k holds the source items [k shard_size, (k + 1) shard_size); finished shards are not
    read again (their images are skipped without decoding).
    """
    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"shard_size and batch_size must be positive, got {shard_size} and {batch_size}")
    base = dict(
        vae=encoder.fingerprint,
        preset=preset.name,
        input_range=preset.input_range,
        flip=bool(flip),
        size=int(size),
        shard_size=int(shard_size),
        labelled=bool(labelled),
    )
    recorded = _check_settings(folder, dict(base, **(settings or {})))
    skipped: list[str] = list(recorded.get("skipped", []))
    workers = num_workers or os.cpu_count() or 1
    start, last_log, done, encoded = time.perf_counter(), time.perf_counter(), 0, 0
    paths: list[str] = []
    shard_index = 0
    while True:
        block = [item for _, item in zip(range(shard_size), items)]
        if not block:
            break
        path = shard_path(folder, shard_index)
        paths.append(path)
        shard_index += 1
        done += len(block)
        if os.path.isfile(path):
            continue
        crops = formats.ordered_map(lambda item: (item, crop(item, size)), block, workers)
        arrays: dict[str, list[np.ndarray]] = {"moments": [], "flipped": [], "labels": []}
        pending: list[tuple[Item, np.ndarray]] = []

        def flush() -> None:
            if not pending:
                return
            images = [image for _, image in pending]
            arrays["moments"].append(_encode_batch(encoder, preset, images))
            if flip:
                arrays["flipped"].append(_encode_batch(encoder, preset, [im[:, ::-1] for im in images]))
            arrays["labels"].append(np.asarray([item.label for item, _ in pending], np.int32))
            pending.clear()

        for item, image in crops:
            if image is None:
                if item.name not in skipped:
                    skipped.append(item.name)
                continue
            pending.append((item, image))
            encoded += 1
            if len(pending) == batch_size:
                flush()
            now = time.perf_counter()
            if now - last_log > PROGRESS_SECONDS:
                last_log = now
                _progress(encoded, done, total, start)
        flush()
        out = {
            k: np.concatenate(v)
            for k, v in arrays.items()
            if v and (k != "labels" or labelled) and (k != "flipped" or flip)
        }
        if "moments" not in out:  # every image was unreadable: an empty shard keeps the numbering
            shape = _encode_batch(encoder, preset, [np.zeros((size, size, 3), np.uint8)]).shape[1:]
            out = {"moments": np.zeros((0, *shape), np.float32)}
            out.update({"flipped": out["moments"]} if flip else {})
            out.update({"labels": np.zeros((0,), np.int32)} if labelled else {})
        _save_shard(path, out)
        if skipped != recorded.get("skipped"):
            recorded["skipped"] = list(skipped)
            _write_json(os.path.join(folder, SETTINGS), recorded)
    if not paths:
        raise FileNotFoundError(f"no images to encode in {folder}'s source")
    _progress(encoded, done, total or done, start)
    if skipped:
        logging.warning("%d image(s) could not be decoded and were skipped: %s", len(skipped), skipped[:10])
    return paths


def _progress(encoded: int, done: int, total: int | None, start: float) -> None:
    rate = encoded / max(time.perf_counter() - start, 1e-9)
    if total:
        eta = (total - done) / max(rate, 1e-9)
        logging.info("encoded %d images (%d / %d read; %.1f img/s, ETA %.0f s)", encoded, done, total, rate, eta)
    else:
        logging.info("encoded %d images (%d read; %.1f img/s)", encoded, done, rate)


def source_images(prepared: Any, *, batch_size: int, limit: int, num_workers: int = 8) -> Iterator:
    """(uint8 images [b, S, S, 3], int32 labels [b]) of the first `limit` images a latent dataset
    was encoded from, read again from the recorded folder with the same crop: the real images
    that FID and FD-DINOv2 reference statistics of the latent dataset describe."""
    meta = prepared.metadata
    folder = meta.get("source_dir")
    if meta.get("source") != "images" or not folder or not os.path.exists(folder):
        raise ValueError(
            f"{prepared.path} was prepared from {meta.get('source', 'latents')} at {folder}, not from images that "
            "are still there: give reference statistics as files instead (eval.fid_stats, e.g. ADM's "
            "VIRTUAL_imagenet256_labeled.npz, and eval.fd_dinov2_stats, e.g. EDM2's dataset-refs/img512.pkl)"
        )
    items, _ = image_items(prepared.dataset, folder)
    size = int(meta.get("image_size", prepared.dataset.image_size))
    crops = formats.ordered_map(lambda item: (item.label, crop(item, size)), items, max(1, num_workers))
    images: list[np.ndarray] = []
    labels: list[int] = []
    count = 0
    for label, image in crops:
        if count >= limit:
            break
        if image is None:
            continue
        images.append(image)
        labels.append(label)
        count += 1
        if len(images) == batch_size:
            yield np.stack(images), np.asarray(labels, np.int32)
            images, labels = [], []
    if images:
        yield np.stack(images), np.asarray(labels, np.int32)


# ---------------------------------------------------------------------------- EDM2 / REPA stores


def read_mean_std_store(path: str) -> Iterator[tuple[np.ndarray, int | None]]:
    """(moments [h, w, 2C], label or None) of every image of an EDM2-style latent store, in order.

    EDM2's `dataset_tool.py encode` (Karras et al. 2024), also used by REPA and Decoupled
    MeanFlow, writes a folder or .zip holding NNNNN/img-mean-std-NNNNNNNN.npy arrays [2C, h, w]
    (mean channels, then std channels) and dataset.json {"labels": [[file, label], ...] or null}.
    """
    import zipfile

    if os.path.isdir(path):
        names = sorted(
            os.path.relpath(os.path.join(d, n), path).replace(os.sep, "/")
            for d, _, files in os.walk(path)
            for n in files
            if n.endswith(".npy")
        )

        def read(name: str) -> bytes:
            return formats.read_bytes(os.path.join(path, name))

        has_json = os.path.isfile(os.path.join(path, "dataset.json"))
        archive = None
    else:
        archive = zipfile.ZipFile(path)
        names = sorted(n for n in archive.namelist() if n.endswith(".npy"))
        read = archive.read
        has_json = "dataset.json" in archive.namelist()
    try:
        labels: dict[str, int] | None = None
        if has_json:
            meta = json.loads(read("dataset.json"))
            entries = meta.get("labels") if isinstance(meta, dict) else None
            if entries is not None:
                labels = {str(name): int(label) for name, label in entries}
        if not names:
            raise FileNotFoundError(f"{path} holds no .npy latents (EDM2's img-mean-std-*.npy)")
        import io

        for name in names:
            array = np.load(io.BytesIO(read(name)), allow_pickle=False)
            if array.ndim != 3 or array.shape[0] % 2:
                raise ValueError(f"{path}/{name}: expected a (mean, std) array [2C, h, w], got {list(array.shape)}")
            if labels is not None and name not in labels:
                raise ValueError(f"{path}/dataset.json has no label for {name}")
            yield latents.moments_from_mean_std(array), None if labels is None else labels[name]
    finally:
        if archive is not None:
            archive.close()


def is_mean_std_store(path: str) -> bool:
    """A .zip file, or a folder holding dataset.json or NNNNN/ subfolders of .npy files."""
    if os.path.isfile(path):
        return path.endswith(".zip")
    if not os.path.isdir(path):
        return False
    if os.path.isfile(os.path.join(path, "dataset.json")):
        return True
    return any(
        n.isdigit()
        and os.path.isdir(os.path.join(path, n))
        and any(f.endswith(".npy") for f in os.listdir(os.path.join(path, n)))
        for n in os.listdir(path)
    )


def store_to_shards(path: str, folder: str, *, shard_size: int = 4096) -> list[str]:
    """Converts an EDM2-style store into the suite's moment shards in `folder` (not resumable:
    reading is cheap); returns the shard paths."""
    os.makedirs(folder, exist_ok=True)
    paths, values, labels, has_labels = [], [], [], None

    def write() -> None:
        arrays = {"moments": np.stack(values)}
        if has_labels:
            arrays["labels"] = np.asarray(labels, np.int32)
        target = shard_path(folder, len(paths))
        _save_shard(target, arrays)
        paths.append(target)
        values.clear()
        labels.clear()

    for moments, label in read_mean_std_store(path):
        has_labels = label is not None
        values.append(moments)
        labels.append(label)
        if len(values) == shard_size:
            write()
    if values:
        write()
    return paths
