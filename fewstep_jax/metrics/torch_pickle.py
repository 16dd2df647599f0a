"""Read PyTorch `torch.save` files (state dicts of tensors) into numpy, without PyTorch.

The FID Inception weights are distributed as a PyTorch file; this reader keeps PyTorch off the
suite's import path. Both on-disk formats of `torch.save` are understood:

  * zip (PyTorch >= 1.6, the default): a zip archive `<name>/data.pkl` (the pickled object, whose
    tensors refer to storages by persistent id ('storage', type, key, location, numel)) and one raw
    little-endian file `<name>/data/<key>` per storage;
  * legacy (`_use_new_zipfile_serialization=False`, and files written before PyTorch 1.6): a
    sequence of pickles (magic number, protocol version, system info, the object, the list of
    storage keys), then each storage as an int64 element count followed by its raw bytes.

Every pickle in the file, the legacy format's header and key list included, is read through
`safe_pickle` with an allow-list of globals (ordered dicts, the tensor rebuild functions and
storage types, argparse.Namespace as a plain record), like `torch.load(weights_only=True)`: a file
that asks for anything else is rejected instead of executing code. Tensors come back as numpy
arrays with their shape, strides and storage offset applied (views of one storage share memory,
as in PyTorch). `load` returns a state dict; `load_object` the whole object (e.g. a training
checkpoint with 'model' / 'ema' / 'opt' / 'args' entries).
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
from typing import Any, BinaryIO

import numpy as np

from fewstep_jax import safe_pickle

#: PyTorch storage type name -> numpy dtype (bfloat16 has no numpy dtype and is not supported).
STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001


class TorchFileError(ValueError):
    """The file is not a PyTorch state dict this reader can load."""


class _StorageType:
    """Stand-in for torch.<X>Storage classes referenced by the pickle."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(STORAGE_DTYPES[name])


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple, stride: tuple, *_unused) -> np.ndarray:
    """torch._utils._rebuild_tensor_v2: a strided view into a flat storage (element units)."""
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if not size:
        return storage[offset : offset + 1].reshape(())  # a view: legacy files fill storages later
    extent = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1 if all(size) else offset
    if extent > storage.size:
        raise TorchFileError(f"tensor of size {size} / stride {stride} at offset {offset} overruns its storage")
    itemsize = storage.itemsize
    return np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=tuple(s * itemsize for s in stride), writeable=False
    )


def _rebuild_parameter(data: np.ndarray, *_unused) -> np.ndarray:
    return data


class Namespace:
    """Stand-in for argparse.Namespace, which training checkpoints store as their 'args' (DiT,
    SiT and REPA train.py): a plain record whose attributes the pickle's BUILD sets from a dict."""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise TorchFileError(f"an argparse.Namespace state must be a dict of names, got {type(state).__name__}")
        self.__dict__.update(state)


_TORCH_GLOBALS = {
    **safe_pickle.CONTAINERS,
    ("argparse", "Namespace"): Namespace,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


class _Unpickler(safe_pickle.Unpickler):
    """The tensor allow-list, with storages resolved through `load_storage`."""

    error = TorchFileError

    def __init__(self, file: BinaryIO, load_storage, source: str):
        super().__init__(file, _TORCH_GLOBALS, source=source)
        self._load_storage = load_storage

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise TorchFileError(f"{self._source}: unexpected persistent id {pid!r}")
        return self._load_storage(pid[1:])


class _PlainUnpickler(safe_pickle.Unpickler):
    error = TorchFileError


def _plain_pickle(f: BinaryIO, what: str) -> Any:
    """One pickle of plain values (the legacy format's header and key list): no globals at all."""
    return _PlainUnpickler(f, {}, source=what).load()


def _check_storage_type(storage_type: Any) -> _StorageType:
    if not isinstance(storage_type, _StorageType):
        raise TorchFileError(f"unsupported storage type {storage_type!r}")
    return storage_type


def _load_zip(file: str | BinaryIO, path: str) -> Any:
    with zipfile.ZipFile(file) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise TorchFileError(f"{path}: a PyTorch zip file has exactly one <name>/data.pkl, found {pickles}")
        prefix = pickles[0][: -len("data.pkl")]
        if archive.namelist().count(prefix + "byteorder") and archive.read(prefix + "byteorder") != b"little":
            raise TorchFileError(f"{path}: big-endian PyTorch files are not supported")
        cache: dict[str, np.ndarray] = {}

        def load_storage(data: tuple) -> np.ndarray:
            storage_type, key, _location, numel = data[:4]
            dtype = _check_storage_type(storage_type).dtype
            if key not in cache:
                raw = archive.read(f"{prefix}data/{key}")
                cache[key] = np.frombuffer(raw, dtype=dtype)
            if cache[key].size != int(numel):
                raise TorchFileError(f"{path}: storage {key} holds {cache[key].size} elements, expected {numel}")
            return cache[key]

        with archive.open(pickles[0]) as f:
            return _Unpickler(f, load_storage, path).load()


def _load_legacy(f: BinaryIO, path: str) -> Any:
    try:
        magic = _plain_pickle(f, "its header")
        protocol = _plain_pickle(f, "its header")
        _plain_pickle(f, "its header")  # system info (byte order, type sizes)
    except TorchFileError as e:  # not a pickle stream at all, or one asking for code
        raise TorchFileError(f"{path} is not a PyTorch file ({e})") from None
    if magic != LEGACY_MAGIC or protocol != LEGACY_PROTOCOL:
        raise TorchFileError(f"{path} is not a PyTorch legacy-format file (magic {magic!r}, protocol {protocol!r})")
    pending: dict[str, tuple[np.dtype, int]] = {}
    storages: dict[str, np.ndarray] = {}

    def load_storage(data: tuple) -> np.ndarray:
        storage_type, key, _location, numel, view = data[:5]
        if view is not None:
            raise TorchFileError(f"{path}: storage views of the pre-1.0 format are not supported")
        dtype = _check_storage_type(storage_type).dtype
        pending.setdefault(key, (dtype, int(numel)))
        # The bytes follow the object pickle: hand out a placeholder filled in below.
        return storages.setdefault(key, np.empty(int(numel), dtype))

    obj = _Unpickler(f, load_storage, path).load()
    keys = _plain_pickle(f, f"{path} (storage keys)")
    if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(pending):
        raise TorchFileError(f"{path}: its storage key list {keys!r} does not name the storages its tensors use")
    for key in keys:
        dtype, numel = pending[key]
        head = f.read(8)
        if len(head) != 8:
            raise TorchFileError(f"{path}: truncated file (storage {key})")
        (count,) = struct.unpack("<q", head)
        if count != numel:
            raise TorchFileError(f"{path}: storage {key} has {count} elements on disk, expected {numel}")
        raw = f.read(count * dtype.itemsize)
        if len(raw) != count * dtype.itemsize:
            raise TorchFileError(f"{path}: truncated file (storage {key})")
        storages[key][...] = np.frombuffer(raw, dtype=dtype)
    return obj


def _load_object(f: BinaryIO, source: str) -> Any:
    """The object of a torch.save stream in either format, tensors and storages as numpy arrays."""
    if zipfile.is_zipfile(f):
        f.seek(0)
        return _load_zip(f, source)
    f.seek(0)
    return _load_legacy(f, source)


def loads(data: bytes, *, source: str) -> Any:
    """The object of a torch.save payload held in memory, read like `load` reads a file, but
    returned as it is: a state dict, a tensor, or a bare storage (a flat numpy array of the
    storage's dtype). A plain pickle of PyTorch objects (NVlabs' network pickles,
    models/pretrained/network_pickle.py) carries each storage this way, as the bytes of a
    nested legacy-format torch.save that `torch.storage._load_from_bytes` would read.

    `source` names the payload in error messages. Raises TorchFileError.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise TorchFileError(f"{source}: expected the bytes of a torch.save payload, got {type(data).__name__}")
    return _load_object(io.BytesIO(data), source)


def load_object(path: str | os.PathLike[str]) -> Any:
    """The whole object of a `torch.save` file, tensors as numpy arrays: e.g. a training checkpoint
    {'model': state dict, 'ema': state dict, 'opt': ..., 'args': Namespace, ...}.

    Raises TorchFileError for a file this reader refuses (see the module docstring).
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        return _load_object(f, path)


def load(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """A PyTorch state dict file -> {name: numpy array} (each tensor keeps its dtype).

    Raises TorchFileError for a file that is not a tensor state dict.
    """
    path = os.fspath(path)
    obj = load_object(path)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]  # some checkpoints wrap the state dict
    if not isinstance(obj, dict):
        raise TorchFileError(f"{path} holds a {type(obj).__name__}, not a state dict")
    out = {}
    for name, value in obj.items():
        if not isinstance(value, np.ndarray):
            continue  # non-tensor entries (e.g. version numbers) carry no weights
        out[str(name)] = np.array(value, order="C")  # own, writable, contiguous (also for 0-d)
    return out
