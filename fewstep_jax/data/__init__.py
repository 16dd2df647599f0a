"""Datasets: embedded (toy2d, digits; always available) and real (tensorflow-datasets, no TensorFlow).

    info, batches = build_dataset(config.data, seed=config.seed, global_batch_size=B,
                                  process_index=jax.process_index(), process_count=jax.process_count())
    batch = next(batches)   # {'x': float32 [B // P, *info.shape], 'y': int32 [B // P]} (numpy)

The data config section (an ml_collections ConfigDict or a plain mapping):

    toy2d   name='toy2d', distribution in toy2d.DISTRIBUTIONS, conditional (optional, ignored:
            toy2d is unconditional, so y is always zeros and num_classes is 0)
    digits  name='digits', conditional (optional bool, default True: num_classes=10 and y holds
            the labels; False: num_classes=0 and y is zeros)
    real    name in sources.DATASETS: 'cifar10' (32x32, 10 classes), 'imagenet64' (64x64, 1,000
            classes, ADM / EDM2 center crop), 'celebahq256' (256x256, no labels), and the VAE-latent
            datasets 'imagenet256_latents', 'imagenet512_latents' (1,000 classes) and
            'celebahq256_latents' (no labels).
            conditional (optional bool; default True for the ImageNet ones, else False; True on a
            dataset without labels is an error); data_dir (optional: where prepared datasets live,
            default $TFDS_DATA_DIR, else ~/tensorflow_datasets); read_threads (optional int >= 0,
            default 8: threads reading batches ahead); latent datasets also latent_preset (optional:
            sd / edm2 / scm / imf, data/latents.py; when set it must equal the preset recorded at
            preparation, which is the one applied) and latent_flips (optional bool: whether the
            recipe wants the moments of mirrored images too, prepared with --flip; checked).

Any other key is an error: `validate` rejects it before anything is built. Real datasets are
prepared once with `python -m fewstep_jax.data.prepare` (prepare.py); a config naming one that is
not prepared fails in dataset_info / build_dataset (before any compilation) with the files to
provide and the command to run. Images arrive as float32 NHWC in [-1, 1] with data_std 0.5 (EDM's
sigma_data convention), latents mapped by their preset with the preset's data_std (latents.py).
For FID reference statistics: iterate_images (uint8 images in stored order) and num_examples.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from fewstep_jax.data import digits, latents, pipeline, sources, tfds_reader, toy2d
from fewstep_jax.data.pipeline import BatchIterator
from fewstep_jax.data.tfds_reader import DatasetNotPreparedError

#: Real datasets, read through tensorflow-datasets once prepared (sources.py, prepare.py).
REAL_DATASETS: tuple[str, ...] = tuple(sources.DATASETS)
KNOWN_DATASETS: tuple[str, ...] = ("toy2d", "digits", *REAL_DATASETS)

_REAL_KEYS = ("name", "conditional", "data_dir", "read_threads")
_LATENT_KEYS = ("latent_preset", "latent_flips")
# Accepted keys per dataset; 'name' is common to all.
_DATASET_KEYS: dict[str, tuple[str, ...]] = {
    "toy2d": ("name", "distribution", "conditional"),
    "digits": ("name", "conditional"),
    **{d.name: _REAL_KEYS + (_LATENT_KEYS if d.is_latent else ()) for d in sources.DATASETS.values()},
}

DEFAULT_TOY_REFERENCE_SIZE = 10_000
DEFAULT_READ_THREADS = 8

__all__ = [
    "KNOWN_DATASETS",
    "REAL_DATASETS",
    "BatchIterator",
    "DatasetInfo",
    "DatasetNotPreparedError",
    "build_dataset",
    "dataset_info",
    "iterate_images",
    "latent_preset",
    "num_examples",
    "reference_data",
    "validate",
]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the model and method need to know about a dataset.

    name: data.name ('toy2d', 'digits', 'cifar10', ...). shape: one example, e.g. (2,), (8, 8, 1),
    (32, 32, 3), (32, 32, 4) latents. num_classes: 0 for unconditional data, else labels are
    0..num_classes-1. data_std: per-element std of the training data (EDM-style preconditioning
    uses it as sigma_data): measured for the embedded datasets, the conventional 0.5 for images
    in [-1, 1] and 1.0 for scaled VAE latents (sources.py). latent_preset: the latents.PRESETS
    name a prepared latent dataset was made with (None for other data), what a pretrained
    latent model must have been trained on.
    """

    name: str
    shape: tuple[int, ...]
    num_classes: int
    data_std: float
    latent_preset: str | None = None


def _keys(data_cfg: Any) -> list[str]:
    if not hasattr(data_cfg, "keys") or not hasattr(data_cfg, "get"):
        raise ValueError(f"the data config must be a ConfigDict or a mapping, got {type(data_cfg).__name__}")
    return list(data_cfg.keys())


def _check_int(value: Any, what: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")


def _conditional(data_cfg: Any) -> bool:
    name = data_cfg.get("name")
    default = sources.DATASETS[name].conditional_default if name in sources.DATASETS else name == "digits"
    return bool(data_cfg.get("conditional", default))


def validate(data_cfg: Any) -> None:
    """Raises ValueError naming the problem for an unknown dataset, distribution, key or bad option.

    Cheap (reads no data), so it can run before anything is built or compiled. Whether a real
    dataset is prepared is checked by dataset_info / build_dataset.
    """
    keys = _keys(data_cfg)
    name = data_cfg.get("name")
    if not isinstance(name, str) or name not in _DATASET_KEYS:
        raise ValueError(f"unknown dataset data.name={name!r}; known datasets: {', '.join(KNOWN_DATASETS)}")
    unknown = sorted(set(keys) - set(_DATASET_KEYS[name]))
    if unknown:
        raise ValueError(
            f"unknown data config key(s) {unknown} for dataset {name!r}; accepted: {list(_DATASET_KEYS[name])}"
        )
    conditional = data_cfg.get("conditional", False)
    if not isinstance(conditional, (bool, np.bool_)):
        raise ValueError(f"data.conditional must be a bool, got {conditional!r}")
    if name == "toy2d":
        distribution = data_cfg.get("distribution")
        if distribution is None:
            raise ValueError(f"toy2d needs data.distribution, one of: {', '.join(toy2d.DISTRIBUTIONS)}")
        toy2d.check_distribution(distribution)
    if name not in sources.DATASETS:
        return
    if _conditional(data_cfg) and not sources.DATASETS[name].num_classes:
        raise ValueError(f"dataset {name!r} has no labels: set data.conditional=False")
    data_dir = data_cfg.get("data_dir")
    if data_dir is not None and not isinstance(data_dir, str):
        raise ValueError(f"data.data_dir must be a path string, got {data_dir!r}")
    _check_int(data_cfg.get("read_threads", DEFAULT_READ_THREADS), "data.read_threads", 0)
    preset = data_cfg.get("latent_preset")
    if preset is not None:
        latents.get(preset)
    flips = data_cfg.get("latent_flips")
    if flips is not None and not isinstance(flips, (bool, np.bool_)):
        raise ValueError(f"data.latent_flips must be a bool or None, got {flips!r}")


def _prepared(data_cfg: Any) -> tfds_reader.Prepared:
    """The opened prepared real dataset of a validated config (raises when it is not prepared)."""
    return tfds_reader.open_prepared(data_cfg.get("name"), data_cfg.get("data_dir"), data_cfg.get("latent_preset"))


def dataset_info(data_cfg: Any) -> DatasetInfo:
    """DatasetInfo of a (validated here) data config; cheap apart from the first digits load.

    Real datasets: raises DatasetNotPreparedError (a ValueError) with the files to
    provide and the command to run when the dataset is not prepared in its data directory.
    """
    validate(data_cfg)
    name = data_cfg.get("name")
    if name == "toy2d":
        distribution = data_cfg.get("distribution")
        return DatasetInfo("toy2d", (2,), 0, toy2d.data_std(distribution))
    conditional = _conditional(data_cfg)
    if name == "digits":
        return DatasetInfo("digits", digits.SHAPE, digits.NUM_CLASSES if conditional else 0, digits.data_std())
    prepared = _prepared(data_cfg)
    flips = data_cfg.get("latent_flips")
    if flips is not None and bool(flips) != prepared.has_flipped:
        raise ValueError(
            f"data.latent_flips={bool(flips)} but {prepared.path} was prepared "
            f"{'with' if prepared.has_flipped else 'without'} the moments of mirrored images; "
            f"prepare it again {'with' if flips else 'without'} --flip, or set data.latent_flips={prepared.has_flipped}"
        )
    if conditional and not prepared.has_labels:
        raise ValueError(
            f"data.conditional=True but {prepared.path} was prepared without labels; "
            "set data.conditional=False or prepare it again with labels"
        )
    latent = prepared.dataset.is_latent
    return DatasetInfo(
        name,
        prepared.shape,
        prepared.dataset.num_classes if conditional else 0,
        prepared.latent_preset.data_std if latent else 0.5,
        prepared.latent_preset.name if latent else None,
    )


def build_dataset(
    data_cfg: Any,
    *,
    seed: int,
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
) -> tuple[DatasetInfo, BatchIterator]:
    """The dataset's info and this process's infinite, resumable batch iterator.

    Global batch k depends only on (seed, k); process p gets rows [p L, (p + 1) L) of it with
    L = global_batch_size // process_count (ValueError when not divisible). See pipeline.py, and
    tfds_reader.py for the real datasets (their 'train' split, read through grain).
    """
    info = dataset_info(data_cfg)
    layout = dict(
        seed=seed, global_batch_size=global_batch_size, process_index=process_index, process_count=process_count
    )
    if info.name == "toy2d":
        distribution = data_cfg.get("distribution")
        iterator: BatchIterator = pipeline.FreshSampleIterator(
            lambda n, rng: toy2d.sample(distribution, n, rng), **layout
        )
    elif info.name == "digits":
        x, y = digits.load_split("train")
        labels = y if info.num_classes else np.zeros_like(y)  # unconditional: never leak labels
        iterator = pipeline.EpochShuffleIterator(x, labels, **layout)
    else:
        prepared = _prepared(data_cfg)
        finish = tfds_reader.make_finish(
            prepared, conditional=info.num_classes > 0, seed=seed, noise_stream=pipeline.STREAM_LATENT_NOISE
        )
        read_threads = data_cfg.get("read_threads", DEFAULT_READ_THREADS)
        iterator = tfds_reader.GrainBatchIterator(prepared.source("train"), finish, read_threads=read_threads, **layout)
    return info, iterator


def reference_data(data_cfg: Any, split: str, *, n: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Real data for evaluation: {'x': float32 [n, *shape], 'y': int32 [n]}.

    toy2d: n fresh exact samples (default 10,000) drawn with `seed`; 'train' and 'test' are
    independent streams. y is zeros.
    digits: the fixed 'train' (1,297) or held-out 'test' (500) split, always with the true
    labels (whatever data.conditional says); with `n`, a subset of n distinct images chosen
    with `seed`.
    real datasets: any prepared split ('train', 'test' for CIFAR-10, 'validation' for ImageNet
    when prepared), float32 like training batches, true labels (zeros without labels); with `n`,
    n distinct examples chosen with `seed` (latent moments sampled with `seed` too); without,
    the whole split (refused above 200,000 examples: use iterate_images).
    """
    validate(data_cfg)
    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0):
        raise ValueError(f"n must be a non-negative integer or None, got {n!r}")
    if data_cfg.get("name") in sources.DATASETS:
        return tfds_reader.reference_data(
            _prepared(data_cfg),
            split,
            n=n,
            seed=pipeline.check_seed(seed),
            subset_stream=pipeline.STREAM_REAL_REFERENCE_SUBSET,
            noise_stream=pipeline.STREAM_LATENT_REFERENCE_NOISE,
        )
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
    if data_cfg.get("name") == "toy2d":
        stream = pipeline.STREAM_TOY_REFERENCE_TRAIN if split == "train" else pipeline.STREAM_TOY_REFERENCE_TEST
        size = DEFAULT_TOY_REFERENCE_SIZE if n is None else int(n)
        x = toy2d.sample(data_cfg.get("distribution"), size, pipeline.stream_rng(stream, seed, 0))
        return {"x": x, "y": np.zeros((size,), np.int32)}
    x, y = digits.load_split(split)
    if n is None:
        return {"x": x.copy(), "y": y.copy()}
    if n > len(x):
        raise ValueError(f"asked for n={n} digits '{split}' images but the split has only {len(x)}")
    rng = pipeline.stream_rng(pipeline.STREAM_DIGITS_REFERENCE_SUBSET, seed, digits.SPLITS.index(split))
    idx = rng.permutation(len(x))[:n]
    return {"x": x[idx], "y": y[idx]}


def _real_only(data_cfg: Any, what: str) -> None:
    validate(data_cfg)
    if data_cfg.get("name") not in sources.DATASETS:
        raise ValueError(
            f"{what} reads the real datasets ({', '.join(REAL_DATASETS)}); {data_cfg.get('name')!r} is embedded: "
            "use reference_data"
        )


def num_examples(data_cfg: Any, split: str) -> int:
    """Number of examples in `split` of a prepared real dataset."""
    _real_only(data_cfg, "num_examples")
    return _prepared(data_cfg).num_examples(split)


def latent_preset(data_cfg: Any) -> latents.Preset | None:
    """The latent normalization a prepared latent dataset was made with (None for other data):
    what maps samples back to VAE latents for decoding."""
    validate(data_cfg)
    name = data_cfg.get("name")
    if name not in sources.DATASETS or not sources.DATASETS[name].is_latent:
        return None
    return _prepared(data_cfg).latent_preset


def iterate_images(data_cfg: Any, split: str, *, batch_size: int, limit: int | None = None):
    """(uint8 images [b, H, W, C], int32 labels [b]) over `split` of a prepared real dataset.

    The order is fixed (the stored source order: the CIFAR-10 batches in order; ImageNet by
    sorted synset, then file name; CelebA-HQ by path), so the first `limit` examples are always
    the same; b = batch_size except for the last batch. Labels are the true labels (zeros for
    CelebA-HQ). For FID reference statistics. A latent dataset gives the images it was encoded
    from (read again from their folder, same crop), or raises ValueError when it was prepared
    from latents.
    """
    _real_only(data_cfg, "iterate_images")
    prepared = _prepared(data_cfg)
    read_threads = data_cfg.get("read_threads", DEFAULT_READ_THREADS)
    return tfds_reader.iterate_images(prepared, split, batch_size=batch_size, limit=limit, read_threads=read_threads)
