"""Deterministic, resumable, multi-host batch iterators over numpy data.

Contract shared by every iterator here (the training loop relies on it):

* The GLOBAL batch for step k is a pure function of (seed, k). Process p of P returns rows
  [p * L, (p + 1) * L) of it, L = global_batch_size // P. The union over processes is what a
  single process would see, so results do not depend on the number of processes.
* The state is the number of global batches consumed ({'step': k, ...}); restoring it jumps
  straight to step k (random access, no replay).
* Batches are numpy dicts {'x': float32 [L, *shape], 'y': int32 [L]}; the training loop turns
  them into global jax.Arrays (jax.make_array_from_process_local_data).

Random streams come from `stream_rng(stream, seed, index)`, a fixed-length word tuple. The
length is fixed on purpose: numpy's SeedSequence pads its entropy with zeros, so
`default_rng((seed, 0))` and `default_rng(seed)` are the SAME stream. A fixed length plus a
distinct stream tag per purpose keeps every stream independent.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

Batch = dict[str, np.ndarray]

# Stream tags: one per purpose, never reused; nonzero so that no tag looks like padding.
STREAM_TOY_BATCH = 101
STREAM_DIGITS_EPOCH = 102
STREAM_TOY_REFERENCE_TRAIN = 103
STREAM_TOY_REFERENCE_TEST = 104
STREAM_DIGITS_REFERENCE_SUBSET = 105
STREAM_TOY_DATA_STD = 106
STREAM_REAL_SHUFFLE = 107
STREAM_LATENT_NOISE = 108
STREAM_REAL_REFERENCE_SUBSET = 109
STREAM_LATENT_REFERENCE_NOISE = 110
STREAM_LATENT_FLIP = 111  # which of an image's and its mirror's moments a training read takes
STREAM_LATENT_REFERENCE_FLIP = 112

_STATE_KEYS = ("step", "seed", "global_batch_size")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_seed(seed: Any) -> int:
    """Returns `seed` as an int; raises ValueError unless it is a non-negative integer."""
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer (numpy SeedSequence), got {seed!r}")
    return int(seed)


def stream_rng(stream: int, seed: int, index: int) -> np.random.Generator:
    """The numpy Generator of (purpose `stream`, user `seed`, position `index`)."""
    return np.random.default_rng((int(stream), check_seed(seed), int(index)))


def _state_int(value: Any, key: str) -> int:
    """Accepts python / numpy integers and 0-d integer arrays (what checkpoint restores yield)."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if not _is_int(value):
        raise ValueError(f"iterator state: {key!r} must be an integer, got {value!r}")
    return int(value)


class BatchIterator(abc.ABC):
    """Per-process slicing, step bookkeeping and checkpointable state for a global batch stream.

    Subclasses implement `_rows(step, start, stop)`: rows [start, stop) of global batch `step`.
    """

    def __init__(self, *, seed: int, global_batch_size: int, process_index: int = 0, process_count: int = 1):
        self._seed = check_seed(seed)
        if not _is_int(global_batch_size) or global_batch_size <= 0:
            raise ValueError(f"global_batch_size must be a positive integer, got {global_batch_size!r}")
        if not _is_int(process_count) or process_count <= 0:
            raise ValueError(f"process_count must be a positive integer, got {process_count!r}")
        if not _is_int(process_index) or not 0 <= process_index < process_count:
            raise ValueError(f"process_index must be an integer in [0, {process_count}), got {process_index!r}")
        if global_batch_size % process_count:
            raise ValueError(
                f"global_batch_size={global_batch_size} is not divisible by process_count={process_count}; "
                "every process must get the same local batch size"
            )
        self._global_batch_size = int(global_batch_size)
        self._process_index = int(process_index)
        self._process_count = int(process_count)
        self._local_batch_size = self._global_batch_size // self._process_count
        self._step = 0

    @abc.abstractmethod
    def _rows(self, step: int, start: int, stop: int) -> Batch:
        """Rows [start, stop) of global batch `step`: {'x': [stop - start, *shape], 'y': [stop - start]}."""

    @property
    def seed(self) -> int:
        return self._seed

    @property
    def step(self) -> int:
        """Number of global batches consumed so far (= index of the next batch)."""
        return self._step

    @property
    def global_batch_size(self) -> int:
        return self._global_batch_size

    @property
    def local_batch_size(self) -> int:
        return self._local_batch_size

    def global_batch(self, step: int) -> Batch:
        """The whole global batch of `step` (all processes together); does not move the iterator."""
        return self._rows(int(step), 0, self._global_batch_size)

    def local_batch(self, step: int) -> Batch:
        """This process's rows of global batch `step`; does not move the iterator."""
        start = self._process_index * self._local_batch_size
        return self._rows(int(step), start, start + self._local_batch_size)

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> Batch:
        batch = self.local_batch(self._step)
        self._step += 1
        return batch

    def get_state(self) -> dict[str, int]:
        """JSON-serializable state. Seed and batch size are recorded to catch a mismatched resume."""
        return {"step": self._step, "seed": self._seed, "global_batch_size": self._global_batch_size}

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Restores `get_state()` output: the next batch is the uninterrupted run's next batch.

        Only 'step' is required. 'seed' and 'global_batch_size', when present, must equal this
        iterator's (another value would silently change the data stream). The process layout may
        differ from the one that saved the state, since the global stream does not depend on it.
        """
        if not isinstance(state, Mapping):
            raise ValueError(f"iterator state must be a mapping, got {type(state).__name__}")
        unknown = sorted(set(state) - set(_STATE_KEYS))
        if unknown:
            raise ValueError(f"iterator state has unknown key(s) {unknown}; accepted: {list(_STATE_KEYS)}")
        if "step" not in state:
            raise ValueError(f"iterator state needs a 'step' entry, got keys {sorted(state)}")
        step = _state_int(state["step"], "step")
        if step < 0:
            raise ValueError(f"iterator state: 'step' must be >= 0, got {step}")
        for key, mine in (("seed", self._seed), ("global_batch_size", self._global_batch_size)):
            if key in state and _state_int(state[key], key) != mine:
                raise ValueError(
                    f"iterator state was saved with {key}={_state_int(state[key], key)} but this iterator "
                    f"has {key}={mine}; restoring it would change the data stream"
                )
        self._step = step


class FreshSampleIterator(BatchIterator):
    """Data with an exact sampler (toy2d): global batch k is a fresh i.i.d. draw; labels are zeros.

    Global batch k = sample_fn(B, stream_rng(STREAM_TOY_BATCH, seed, k)), x float32 [B, *shape].
    """

    def __init__(self, sample_fn: Callable[[int, np.random.Generator], np.ndarray], **kwargs: Any):
        super().__init__(**kwargs)
        self._sample_fn = sample_fn

    def _rows(self, step: int, start: int, stop: int) -> Batch:
        # Every process draws the whole global batch and slices it: toy batches are tiny, and
        # drawing the same array everywhere is what makes the slices add up to the global batch.
        rng = stream_rng(STREAM_TOY_BATCH, self._seed, step)
        x = np.asarray(self._sample_fn(self._global_batch_size, rng), np.float32)
        return {"x": x[start:stop], "y": np.zeros((stop - start,), np.int32)}


class EpochShuffleIterator(BatchIterator):
    """Finite arrays (digits), reshuffled every epoch, nothing dropped.

    Epoch e visits the examples in the order stream_rng(STREAM_DIGITS_EPOCH, seed, e).permutation(N).
    The example stream is the concatenation of the epoch orders and global batch k is positions
    [k * B, (k + 1) * B) of it, so a batch may straddle an epoch boundary (or span several epochs
    when B > N).
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, **kwargs: Any):
        super().__init__(**kwargs)
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"x and y must be non-empty and of equal length, got {len(x)} and {len(y)}")
        self._x = np.asarray(x, np.float32)
        self._y = np.asarray(y, np.int32)
        self._orders: dict[int, np.ndarray] = {}

    @property
    def num_examples(self) -> int:
        return len(self._x)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Indices of the examples in the order epoch `epoch` visits them: int64 [N], a permutation."""
        order = self._orders.get(epoch)
        if order is None:
            order = stream_rng(STREAM_DIGITS_EPOCH, self._seed, epoch).permutation(len(self._x))
            if len(self._orders) >= 4:  # iteration touches consecutive epochs; keep only recent ones
                self._orders.pop(min(self._orders))
            self._orders[epoch] = order
        return order

    def _rows(self, step: int, start: int, stop: int) -> Batch:
        n = len(self._x)
        positions = step * self._global_batch_size + np.arange(start, stop, dtype=np.int64)
        epochs, offsets = np.divmod(positions, n)
        index = np.empty_like(positions)
        for epoch in np.unique(epochs):
            mask = epochs == epoch
            index[mask] = self.epoch_order(int(epoch))[offsets[mask]]
        return {"x": self._x[index], "y": self._y[index]}
