"""Unpickling files that come from users, without ever running code from them.

A pickle is a small program: its GLOBAL / STACK_GLOBAL opcodes import any attribute of any module
and REDUCE calls it, so `pickle.load` on a crafted file runs whatever the file asks for. Every
global a pickle refers to passes through `Unpickler.find_class` (also those reached through the
copyreg extension registry), so overriding it with an allow-list closes that door, the approach of
`torch.load(weights_only=True)`.

The allow-lists here name a few plain constructors, each wrapped so that it accepts only
harmless arguments: numpy arrays of plain dtypes (never object arrays, whose items would be
unpickled objects), dtypes, ordered dicts, and the byte strings that Python 3 writes for
protocol < 3. Anything else is refused with `PickleRefused` before it is called.

Callers: `metrics.torch_pickle` (PyTorch weight files) and `data.formats.read_cifar10` (the
CIFAR-10 batches, which are pickles). docs/FILES.md lists every file the suite reads.
"""

from __future__ import annotations

import collections
import os
import pickle
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO

import numpy as np

Allowed = Mapping[tuple[str, str], Callable[..., Any]]


class PickleRefused(ValueError):
    """The pickle asks for something outside the allow-list (or for an object array)."""


class _ArgumentRefused(PickleRefused):
    """An allowed constructor was called with arguments it refuses (reported with the file name)."""


def _plain_dtype(*args: Any) -> np.dtype:
    """numpy.dtype(...) as a pickle calls it, refusing dtypes that hold Python objects."""
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise _ArgumentRefused(f"refusing a numpy array of dtype {dtype}: object arrays hold arbitrary pickled objects")
    return dtype


class _NDArrayType:
    """What a pickle gets for numpy.ndarray: a token for _reconstruct, not a constructor."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise _ArgumentRefused("refusing to call numpy.ndarray directly")


_NDARRAY = _NDArrayType()


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> np.ndarray:
    """numpy's ndarray.__reduce__ entry point (protocols 2-4): an empty base-class array whose
    state (shape, dtype, raw bytes) the pickle's BUILD opcode then sets; BUILD accepts only a
    dtype object, so the state's dtype also comes through _plain_dtype."""
    del shape, typecode  # replaced by the state that BUILD sets
    if subtype is not _NDARRAY:
        raise _ArgumentRefused(f"refusing to rebuild an array of type {subtype!r}: only numpy.ndarray is allowed")
    return np.ndarray.__new__(np.ndarray, (0,), np.uint8)


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    """numpy's protocol-5 entry point: an array over the pickled buffer."""
    if not isinstance(buffer, (bytes, bytearray, memoryview)):
        raise _ArgumentRefused(f"refusing an array buffer of type {type(buffer).__name__}")
    array = np.frombuffer(buffer, dtype=_plain_dtype(dtype))
    return array.reshape(tuple(int(n) for n in shape), order="F" if order == "F" else "C")


def _latin1_bytes(text: Any, encoding: str = "utf-8") -> bytes:
    """_codecs.encode as Python 3 pickles bytes at protocol < 3: only (str, 'latin1')."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _ArgumentRefused(f"refusing _codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


def _ordered_dict(*args: Any) -> collections.OrderedDict:
    return collections.OrderedDict(*args)


#: Plain numpy arrays, under the module names numpy 1.x and 2.x write.
NUMPY_ARRAYS: dict[tuple[str, str], Callable[..., Any]] = {
    ("numpy", "dtype"): _plain_dtype,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("_codecs", "encode"): _latin1_bytes,
}

#: Containers beyond the built-in dict / list / tuple, which need no global.
CONTAINERS: dict[tuple[str, str], Callable[..., Any]] = {("collections", "OrderedDict"): _ordered_dict}


class Unpickler(pickle.Unpickler):
    """A pickle.Unpickler that resolves only the globals in `allowed` and raises `error` for the rest.

    `source` names the file in error messages. Subclasses may define persistent_load.
    """

    error: type[Exception] = PickleRefused

    def __init__(self, file: BinaryIO, allowed: Allowed, *, source: str, **kwargs: Any):
        super().__init__(file, **kwargs)
        self._allowed = allowed
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._allowed:
            return self._allowed[(module, name)]
        raise self.error(
            f"{self._source}: refusing to unpickle {module}.{name}: a data or weights file may hold only "
            "arrays and plain values, and loading anything else could run code from the file"
        )

    def load(self) -> Any:
        try:
            return super().load()
        except _ArgumentRefused as e:
            raise self.error(f"{self._source}: {e}") from None
        except self.error:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
            raise self.error(f"{self._source} is not a readable pickle ({type(e).__name__}: {e})") from e


def load(file: BinaryIO, allowed: Allowed, *, source: str | os.PathLike[str], encoding: str = "ASCII") -> Any:
    """One object from an open binary file, resolving only the globals in `allowed`."""
    return Unpickler(file, allowed, source=os.fspath(source), encoding=encoding).load()
