"""Reading prepared real datasets: tensorflow-datasets random access fed through grain, no TensorFlow.

A prepared dataset (DATA_DIR/<builder>/<version>, see sources.py) is opened with
tfds.builder_from_directory, which needs only the files (not the builder classes), and read
with its array_record data source (`as_data_source`, what tfds.data_source returns).

Training stream (GrainBatchIterator), in grain terms:
    order = MapDataset.range(N).shuffle(seed=s).repeat()           # example indices, infinite
    local = order.batch(L)[p::P].map_with_index(read and finish)   # process p's batches
Epoch e of the stream is a permutation of the split drawn from (s + e) (grain's index shuffle),
s = a 32-bit word derived from the training seed (stream STREAM_REAL_SHUFFLE), so nearby seeds
do not share epochs. Global batch k is stream positions [k B, (k + 1) B); with L = B / P,
mini-batch k P + p of size L is process p's share, so the processes' slices concatenate to the
global batch, whatever P is. Each local batch is one batched read of the source; `finish` turns
uint8 images into float32 in [-1, 1] (x / 127.5 - 1) and scales latents; moments are sampled
with noise drawn from (seed, stream position), so a batch is a pure function of (seed, k).
Batches are read ahead on `read_threads` threads (grain's to_iter_dataset prefetch); 0 reads
in the calling thread.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from fewstep_jax.data import latents, pipeline, sources

Finish = Callable[[dict[str, np.ndarray], np.ndarray], pipeline.Batch]
# When reference_data is asked for a whole split: above this many examples it refuses (memory).
MAX_REFERENCE_EXAMPLES = 200_000


class DatasetNotPreparedError(ValueError):
    """A config names a real dataset that is not in its data directory (says how to prepare it)."""


@dataclasses.dataclass(frozen=True)
class Prepared:
    """An opened prepared dataset: its description, folder and tfds (read-only) builder."""

    dataset: sources.RealDataset
    path: str
    builder: Any

    @property
    def features(self) -> Any:
        return self.builder.info.features

    @property
    def has_labels(self) -> bool:
        return "label" in self.features

    @property
    def latent_kind(self) -> str | None:
        return self.builder.info.metadata.get("latent_kind") if self.dataset.is_latent else None

    @property
    def latent_preset(self) -> Any:
        """The latents.Preset recorded at preparation (None for pixel datasets)."""
        if not self.dataset.is_latent:
            return None
        return latents.get(self.builder.info.metadata.get("latent_preset"))

    @property
    def has_flipped(self) -> bool:
        """Latents stored with the moments of the mirrored images (picked at random when read)."""
        return "moments_flipped" in self.features

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self.builder.info.metadata)

    @property
    def shape(self) -> tuple[int, ...]:
        """One training example: (H, W, C) images or latents."""
        if self.dataset.is_latent:
            stored = tuple(self.features[self.latent_kind].shape)
            return (*stored[:-1], stored[-1] // 2) if self.latent_kind == "moments" else stored
        return tuple(self.features["image"].shape)

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(sorted(self.builder.info.splits))

    def num_examples(self, split: str) -> int:
        self.check_split(split)
        return int(self.builder.info.splits[split].num_examples)

    def check_split(self, split: str) -> None:
        if split not in self.builder.info.splits:
            raise ValueError(f"{self.dataset.name} has no split {split!r}; prepared splits: {', '.join(self.splits)}")

    def source(self, split: str) -> Any:
        """Random-access source of `split`: len() and [i] -> dict of numpy arrays (images decoded)."""
        self.check_split(split)
        return self.builder.as_data_source(split=split)


_OPENED: dict[str, Prepared] = {}
# tfds imports the module named by each feature's pythonClassName in features.json; only its own
# feature classes are accepted, so a crafted dataset folder cannot make it import anything else.
_FEATURE_MODULE_PREFIX = "tensorflow_datasets.core.features."


def check_feature_classes(path: str) -> None:
    """Raises ValueError if PATH/features.json names a feature class outside tensorflow_datasets."""
    features = os.path.join(path, "features.json")
    if not os.path.isfile(features):
        return
    with open(features) as f:
        try:
            tree = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{features} is not valid JSON ({e}); prepare the dataset again") from e
    pending = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            name = node.get("pythonClassName")
            if name is not None and not (isinstance(name, str) and name.startswith(_FEATURE_MODULE_PREFIX)):
                raise ValueError(
                    f"{features} names the feature class {name!r}; only tensorflow_datasets' own features "
                    "are read, since loading another would import code. Prepare the dataset with "
                    "`python -m fewstep_jax.data.prepare`"
                )
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)


def open_prepared(name: str, data_dir: Any = None, latent_preset: Any = None) -> Prepared:
    """The prepared dataset `name` in data_dir (resolved as in sources.resolve_data_dir).

    Raises DatasetNotPreparedError with the files to provide and the command to run; for latent
    datasets, ValueError when `latent_preset` is given and differs from the recorded preset
    (the presets differ in the VAE's input range, so the moments are not interchangeable).
    """
    dataset = sources.get(name)
    root = sources.resolve_data_dir(data_dir)
    path = sources.prepared_dir(dataset, root)
    if not os.path.isfile(os.path.join(path, "dataset_info.json")):
        raise DatasetNotPreparedError(sources.not_prepared_message(dataset, root, latent_preset))
    prepared = _OPENED.get(path)
    if prepared is None:
        import tensorflow_datasets as tfds  # only real datasets pay for this import

        check_feature_classes(path)
        prepared = Prepared(dataset, path, tfds.builder_from_directory(path))
        _OPENED[path] = prepared
    if dataset.is_latent and latent_preset is not None:
        ours, theirs = latents.get(latent_preset), prepared.latent_preset
        if ours != theirs:
            raise ValueError(
                f"data.latent_preset={ours.name!r} (VAE input {ours.input_range}) but {path} was prepared with "
                f"the preset {theirs.name!r} (VAE input {theirs.input_range}); set data.latent_preset="
                f"{theirs.name!r} or prepare the latents again with --latent_preset={ours.name}"
            )
    return prepared


# ---------------------------------------------------------------------------- turning records into batches


def images_to_float(images: np.ndarray) -> np.ndarray:
    """uint8 [..., H, W, C] -> float32 in [-1, 1]: x / 127.5 - 1 (0 -> -1, 255 -> 1)."""
    return images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def latent_noise(stream: int, seed: int, positions: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal noise [len(positions), *shape], one independent draw per stream position."""
    return np.stack([pipeline.stream_rng(stream, seed, int(i)).standard_normal(shape, np.float32) for i in positions])


def latent_values(prepared: Prepared, stored: np.ndarray, noise: Callable[[], np.ndarray] | None) -> np.ndarray:
    """Stored latents or moments [n, ...] -> the network's latents float32 [n, H, W, C].

    moments: z = mean + exp(logvar / 2) * eps with logvar clamped to [-30, 20], the Stable
    Diffusion VAE's DiagonalGaussianDistribution.sample (Rombach et al. 2022); then the recorded
    preset's affine (latents.Preset.to_model).
    """
    values = stored.astype(np.float32)
    if prepared.latent_kind == "moments":
        values = latents.sample(values, noise())
    return prepared.latent_preset.to_model(values).astype(np.float32)


def choose_flips(records: dict[str, np.ndarray], stream: int, seed: int, positions: np.ndarray) -> np.ndarray:
    """The stored moments with, for each row, the mirrored image's moments instead with
    probability 1/2 (a fair coin from (stream, seed, position)): the random horizontal flip of
    the pixel recipes, taken before encoding."""
    coins = np.asarray([pipeline.stream_rng(stream, seed, int(i)).integers(2) for i in positions], bool)
    pick = coins.reshape((-1,) + (1,) * (records["moments"].ndim - 1))
    return np.where(pick, records["moments_flipped"], records["moments"])


def read_records(source: Any, index: Any) -> dict[str, np.ndarray]:
    """source[index[0]], source[index[1]], ... in one batched read, stacked: {feature: [n, ...]}."""
    records = source.__getitems__([int(i) for i in index])
    return {key: np.stack([record[key] for record in records]) for key in records[0]}


def make_finish(prepared: Prepared, *, conditional: bool, seed: int, noise_stream: int) -> Finish:
    """finish(records stacked by grain, stream positions) -> {'x': float32 [n, *shape], 'y': int32 [n]}.

    y holds the labels when `conditional`, else zeros (never leak labels to an unconditional run).
    """

    training = noise_stream == pipeline.STREAM_LATENT_NOISE
    flip_stream = pipeline.STREAM_LATENT_FLIP if training else pipeline.STREAM_LATENT_REFERENCE_FLIP

    def finish(records: dict[str, np.ndarray], positions: np.ndarray) -> pipeline.Batch:
        if prepared.dataset.is_latent:
            noise = lambda: latent_noise(noise_stream, seed, positions, prepared.shape)
            stored = records[prepared.latent_kind]
            if prepared.has_flipped:
                stored = choose_flips(records, flip_stream, seed, positions)
            x = latent_values(prepared, stored, noise)
        else:
            x = images_to_float(records["image"])
        if conditional:
            y = np.asarray(records["label"], np.int32)
        else:
            y = np.zeros((len(positions),), np.int32)
        return {"x": x, "y": y}

    return finish


# ---------------------------------------------------------------------------- the training iterator


class GrainBatchIterator(pipeline.BatchIterator):
    """A random-access split as an infinite, epoch-shuffled, per-process batch stream (module doc)."""

    def __init__(self, source: Any, finish: Finish, *, read_threads: int = 0, **layout: Any):
        super().__init__(**layout)
        import grain

        self._grain = grain
        self._finish = finish
        self._read_threads = int(read_threads)
        self._source = source
        shuffle_seed = int(pipeline.stream_rng(pipeline.STREAM_REAL_SHUFFLE, self.seed, 0).integers(2**32))
        self._order = grain.MapDataset.range(len(source)).shuffle(seed=shuffle_seed).repeat()
        first, last = self._process_index * self._local_batch_size, (self._process_index + 1) * self._local_batch_size
        local_indices = self._order.batch(self._local_batch_size, drop_remainder=True)
        self._local = local_indices[self._process_index :: self._process_count].map_with_index(
            lambda step, index: self._finish(read_records(source, index), self._positions(step, first, last))
        )
        self._reader = None

    @property
    def num_examples(self) -> int:
        """Examples in one epoch (the split's size)."""
        return len(self._source)

    def _positions(self, step: int, start: int, stop: int) -> np.ndarray:
        """Stream positions of rows [start, stop) of global batch `step`."""
        return step * self._global_batch_size + np.arange(start, stop, dtype=np.int64)

    def _rows(self, step: int, start: int, stop: int) -> pipeline.Batch:
        positions = self._positions(step, start, stop)
        index = [self._order[int(position)] for position in positions]
        return self._finish(read_records(self._source, index), positions)

    def local_batch(self, step: int) -> pipeline.Batch:
        return self._local[int(step)]

    def __next__(self) -> pipeline.Batch:
        if self._read_threads <= 0:
            batch = self._local[self._step]
        else:
            if self._reader is None:
                options = self._grain.ReadOptions(
                    num_threads=self._read_threads, prefetch_buffer_size=2 * self._read_threads
                )
                self._reader = iter(self._local.to_iter_dataset(options))
            if self._reader.get_state()["next_index"] != self._step:  # after set_state: jump, drop read-ahead
                self._reader.set_state({"next_index": self._step})
            batch = next(self._reader)
        self._step += 1
        return batch

    def close(self) -> None:
        """Stops the read-ahead threads (a later next() starts them again)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None


# ---------------------------------------------------------------------------- evaluation access


def iterate_images(prepared: Prepared, split: str, *, batch_size: int, limit: int | None = None, read_threads: int = 8):
    """(uint8 images [b, H, W, C], int32 labels [b]) over `split` in stored order (the first `limit`).

    Labels are the true labels (zeros for unlabelled data). A latent dataset gives the images it
    was encoded from, read again from their folder with the same crop (encode.source_images).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    total = prepared.num_examples(split)
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 0:
            raise ValueError(f"limit must be a non-negative integer or None, got {limit!r}")
        total = min(total, int(limit))
    return _iterate_images(prepared, split, int(batch_size), total, read_threads)


def _iterate_images(prepared: Prepared, split: str, batch_size: int, total: int, read_threads: int) -> Iterator:
    if prepared.dataset.is_latent:
        from fewstep_jax.data import encode

        yield from encode.source_images(prepared, batch_size=batch_size, limit=total, num_workers=read_threads)
        return
    for records in read_batches(prepared.source(split), range(total), batch_size, read_threads):
        images = records["image"]
        labels = records["label"] if prepared.has_labels else np.zeros((len(images),), np.int64)
        yield images, np.asarray(labels, np.int32)


def read_batches(source: Any, index: Any, batch_size: int, read_threads: int) -> Iterator[dict[str, np.ndarray]]:
    """Records source[index[0]], source[index[1]], ... stacked in batches (the last may be
    smaller), in order, read ahead on `read_threads` threads (at least one)."""
    import grain

    threads = max(1, int(read_threads))
    chunks = grain.MapDataset.source(index).batch(batch_size)
    batches = chunks.map(lambda chunk: read_records(source, chunk))
    yield from batches.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * threads))


def reference_data(
    prepared: Prepared, split: str, *, n: int | None, seed: int, subset_stream: int, noise_stream: int
) -> dict[str, np.ndarray]:
    """{'x': float32 [n, *shape] like training batches, 'y': true labels int32 [n]} of `split`.

    With n: n distinct examples chosen with `seed` (read in stored order); without: the whole
    split, refused above MAX_REFERENCE_EXAMPLES examples (use iterate_images to stream).
    Moments are sampled with noise from (seed, example index).
    """
    total = prepared.num_examples(split)
    if n is None:
        if total > MAX_REFERENCE_EXAMPLES:
            raise ValueError(
                f"{prepared.dataset.name} '{split}' has {total} examples, too many to hold as float32: "
                "pass n (a random subset) or stream the images with iterate_images"
            )
        index = np.arange(total)
    else:
        if n > total:
            raise ValueError(f"asked for n={n} {prepared.dataset.name} '{split}' examples but the split has {total}")
        rng = pipeline.stream_rng(subset_stream, seed, prepared.splits.index(split))
        index = np.sort(rng.choice(total, size=int(n), replace=False))
    if len(index) == 0:
        return {"x": np.zeros((0, *prepared.shape), np.float32), "y": np.zeros((0,), np.int32)}
    parts = list(read_batches(prepared.source(split), index, batch_size=256, read_threads=8))
    records = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    finish = make_finish(prepared, conditional=prepared.has_labels, seed=seed, noise_stream=noise_stream)
    return finish(records, index)
