"""Reading NVlabs network pickles (EDM's and EDM2's `.pkl` files) without running anything in them.

The official EDM (NVlabs/edm, training/training_loop.py) and EDM2 (NVlabs/edm2,
training/training_loop.py, reconstruct_phema.py) files are plain pickles (not torch.save) of a
dict, e.g. {'ema': network, 'loss_fn': ..., 'augment_pipe': ..., 'dataset_kwargs': {...}} (EDM)
or an EasyDict {'encoder', 'dataset_kwargs', 'loss_fn', 'ema'} (EDM2). Their networks are
"persistent" objects (torch_utils/persistence.py of either repository): each one pickles as a call
`torch_utils.persistence._reconstruct_persistent_obj(meta)` whose `meta` holds the Python source
of the module that defines the class (`module_src`), the class name and the object's state (its
__dict__: `_parameters`, `_buffers`, `_modules`, plain attributes, and the constructor arguments
recorded as `_init_args` / `_init_kwargs`). `pickle.load` would EXECUTE `module_src`.

This reader resolves only the globals such a file needs, each to an inert stand-in:
  * `_reconstruct_persistent_obj` records a `Module` (class name, state) and never compiles or
    runs `module_src`;
  * tensors and parameters (`torch._utils._rebuild_tensor_v2`, `_rebuild_parameter`) become
    numpy arrays; their storages (`torch.storage._load_from_bytes(bytes)`, a nested legacy
    torch.save payload) are read by metrics/torch_pickle.py's allow-list reader (`loads`);
  * PyTorch's non-persistent containers (`ModuleDict`, `ModuleList`, `Sequential`) become a
    `Module` too; `collections.OrderedDict`, `dnnlib.util.EasyDict` (a dict), numpy arrays and
    numpy scalars (as plain Python numbers) are read as data.
Anything else is refused with a `NetworkPickleError` naming the `module.name` the file asks for,
before it is called. Constructor arguments must be plain values (numbers, strings, bools, None,
tuples, lists, dicts of them): `Module.kwargs` checks that.

Usage: `data = load(path)`, then `data['ema']` is a `Module`; `module.tensors()` gives its
parameters and buffers by dotted name (the names of torch's state_dict), `module.kwargs` its
recorded constructor arguments, `module.children` its sub-modules.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from fewstep_jax import safe_pickle
from fewstep_jax.metrics import torch_pickle


class NetworkPickleError(ValueError):
    """The file is not a network pickle this reader accepts (or asks for something it refuses)."""


class _Refused(safe_pickle._ArgumentRefused):  # noqa: SLF001 - reported with the file name by safe_pickle
    pass


#: Plain values allowed in recorded constructor arguments.
PLAIN_TYPES = (type(None), bool, int, float, complex, str, bytes)


@dataclasses.dataclass
class Module:
    """One object of the pickle as recorded, never constructed: a persistent object (`persistent`,
    e.g. EDM's 'EDMPrecond') or one of PyTorch's containers ('ModuleDict', ...).

    state: the pickled __dict__, tensors as read-only numpy arrays, sub-objects as Modules.
    """

    class_name: str
    state: dict[str, Any]
    persistent: bool = True

    @property
    def kwargs(self) -> dict[str, Any]:
        """The constructor's keyword arguments as persistence recorded them (plain values only)."""
        recorded = self.state.get("_init_kwargs") or {}
        if not isinstance(recorded, Mapping):
            raise NetworkPickleError(f"{self.class_name}: its recorded constructor arguments are not a dict")
        check_plain(recorded, f"the constructor arguments of {self.class_name}")
        return dict(recorded)

    @property
    def args(self) -> tuple[Any, ...]:
        """The constructor's positional arguments as persistence recorded them (plain values only)."""
        recorded = tuple(self.state.get("_init_args") or ())
        check_plain(recorded, f"the positional constructor arguments of {self.class_name}")
        return recorded

    def _entries(self, key: str) -> dict[str, Any]:
        entries = self.state.get(key) or {}
        if not isinstance(entries, Mapping):
            raise NetworkPickleError(f"{self.class_name}.{key} is a {type(entries).__name__}, not a dict")
        return {str(k): v for k, v in entries.items() if v is not None}

    @property
    def children(self) -> dict[str, Module]:
        """Sub-modules by attribute name (torch's `_modules`, None entries dropped)."""
        children = self._entries("_modules")
        bad = {k: type(v).__name__ for k, v in children.items() if not isinstance(v, Module)}
        if bad:
            raise NetworkPickleError(f"{self.class_name}: sub-modules that are not modules: {bad}")
        return children

    def own_tensors(self) -> dict[str, np.ndarray]:
        """This module's own parameters and buffers (None entries dropped)."""
        out = {}
        for key in ("_parameters", "_buffers"):
            for name, value in self._entries(key).items():
                if not isinstance(value, np.ndarray):
                    raise NetworkPickleError(f"{self.class_name}.{name} is a {type(value).__name__}, not a tensor")
                out[name] = value
        return out

    def walk(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """(dotted path, module) for this module and every sub-module, depth first."""
        yield prefix, self
        for name, child in self.children.items():
            yield from child.walk(f"{prefix}.{name}" if prefix else name)

    def tensors(self) -> dict[str, np.ndarray]:
        """Every parameter and buffer by dotted name, as torch's `state_dict()` names them."""
        out = {}
        for path, module in self.walk():
            for name, value in module.own_tensors().items():
                out[f"{path}.{name}" if path else name] = value
        return out


def check_plain(value: Any, what: str, where: str = "") -> None:
    """Raise NetworkPickleError unless `value` is made of plain values only."""
    if isinstance(value, PLAIN_TYPES):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_plain(item, what, f"{where}[{i}]")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise NetworkPickleError(f"{what}: a key of type {type(key).__name__} at {where or 'the top'}")
            check_plain(item, what, f"{where}[{key!r}]")
        return
    raise NetworkPickleError(
        f"{what} hold a {type(value).__name__} at {where or 'the top'}; only plain values (numbers, strings, "
        "bools, None, lists, tuples, dicts) are read"
    )


# ---------------------------------------------------------------------------- the stand-ins


def _persistent_object(meta: Any) -> Module:
    """torch_utils.persistence._reconstruct_persistent_obj: record the class name and the state;
    `module_src` (the source that pickle.load would execute) is dropped unread."""
    if not isinstance(meta, dict):
        raise _Refused(f"a persistent object's meta is a {type(meta).__name__}, not a dict")
    if meta.get("type") != "class":
        raise _Refused(f"refusing a persistent object of type {meta.get('type')!r} (only 'class' is read)")
    class_name, state = meta.get("class_name"), meta.get("state")
    if not isinstance(class_name, str) or not isinstance(meta.get("module_src"), str):
        raise _Refused("a persistent object's meta lacks its class_name / module_src strings")
    if state is None:
        state = {}
    if not isinstance(state, dict):
        raise _Refused(f"the state of {class_name} is a {type(state).__name__}, not a dict")
    return Module(class_name, dict(state))


class _Container:
    """What a pickle gets for torch.nn.ModuleDict and friends: NEWOBJ makes an empty instance,
    BUILD hands it the __dict__; `module()` turns it into a Module."""

    kind = ""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise _Refused(f"the state of a {self.kind} is a {type(state).__name__}, not a dict")
        self.state = dict(state)


def _container(kind: str) -> type:
    return type(kind, (_Container,), {"kind": kind})


_CONTAINERS = {name: _container(name) for name in ("ModuleDict", "ModuleList", "Sequential")}


class _EasyDict(dict):
    """dnnlib.util.EasyDict as data: a dict (its attribute access is not needed)."""

    def __setstate__(self, state: Any) -> None:
        del state  # EasyDict keeps everything in the dict itself


def _rebuild_parameter(data: Any, *_unused: Any) -> np.ndarray:
    if not isinstance(data, np.ndarray):
        raise _Refused(f"a parameter wraps a {type(data).__name__}, not a tensor")
    return data


def _rebuild_tensor(storage: Any, *args: Any) -> np.ndarray:
    if not isinstance(storage, np.ndarray) or storage.ndim != 1:
        raise _Refused(f"a tensor's storage is a {type(storage).__name__}, not a flat array")
    try:
        return torch_pickle._rebuild_tensor(storage, *args)  # noqa: SLF001 - the same tensor layout
    except torch_pickle.TorchFileError as e:
        raise _Refused(str(e)) from None


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    """numpy.core.multiarray.scalar(dtype, bytes) as numpy pickles its scalars: a plain Python number."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biufc":
        raise _Refused(f"refusing a numpy scalar of dtype {dtype!r}")
    if not isinstance(data, (bytes, bytearray)) or len(data) != dtype.itemsize:
        raise _Refused(f"a numpy {dtype} scalar with {type(data).__name__} data")
    return np.frombuffer(data, dtype)[0].item()


def _plain_set(items: Any = ()) -> set:
    """builtins.set / frozenset as protocols < 4 pickle them (torch's module state has one)."""
    if not isinstance(items, (list, tuple)):
        raise _Refused(f"refusing set({type(items).__name__})")
    return set(items)


def _allowed(path: str) -> dict[tuple[str, str], Any]:
    def load_storage(data: Any) -> np.ndarray:
        """torch.storage._load_from_bytes: a nested legacy torch.save of one storage."""
        try:
            storage = torch_pickle.loads(data, source=f"{path} (a tensor storage inside it)")
        except torch_pickle.TorchFileError as e:
            raise _Refused(str(e)) from None
        if not isinstance(storage, np.ndarray) or storage.ndim != 1:
            raise _Refused(f"a nested torch.save payload holds a {type(storage).__name__}, not a storage")
        return storage

    allowed = {
        **safe_pickle.CONTAINERS,
        **safe_pickle.NUMPY_ARRAYS,
        ("numpy.core.multiarray", "scalar"): _numpy_scalar,
        ("numpy._core.multiarray", "scalar"): _numpy_scalar,
        ("builtins", "set"): _plain_set,
        ("builtins", "frozenset"): _plain_set,
        ("__builtin__", "set"): _plain_set,
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent_object,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch.storage", "_load_from_bytes"): load_storage,
        ("dnnlib.util", "EasyDict"): _EasyDict,
    }
    for name, cls in _CONTAINERS.items():
        allowed[("torch.nn.modules.container", name)] = cls
    return allowed


class _Unpickler(safe_pickle.Unpickler):
    error = NetworkPickleError


def _convert(value: Any) -> Any:
    """Containers -> Modules, EasyDicts -> dicts, recursively (shared objects stay shared)."""
    seen: dict[int, Any] = {}

    def walk(v: Any) -> Any:
        if id(v) in seen:
            return seen[id(v)]
        if isinstance(v, _Container):
            out = Module(v.kind, {}, persistent=False)
            seen[id(v)] = out
            out.state = walk(getattr(v, "state", {}))
            return out
        if isinstance(v, Module):
            seen[id(v)] = v
            v.state = walk(v.state)
            return v
        if isinstance(v, dict):  # dict, OrderedDict, EasyDict
            out = collections.OrderedDict() if isinstance(v, collections.OrderedDict) else {}
            seen[id(v)] = out
            out.update((k, walk(x)) for k, x in v.items())
            return out
        if isinstance(v, list):
            return [walk(x) for x in v]
        if isinstance(v, tuple):
            return tuple(walk(x) for x in v)
        return v

    return walk(value)


def load(path: str | os.PathLike[str]) -> Any:
    """The object of a network pickle (usually a dict holding 'ema'), persistent objects and
    PyTorch containers as `Module`s, tensors as numpy arrays. Raises NetworkPickleError for a
    file that is not such a pickle or asks for anything else (naming the global it asks for)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise NetworkPickleError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(0)
        if head.startswith(b"PK\x03\x04"):
            raise NetworkPickleError(f"{path} is a PyTorch torch.save (zip) file, not an NVlabs network pickle (.pkl)")
        obj = _Unpickler(f, _allowed(path), source=path).load()
        if f.read(1):
            raise NetworkPickleError(f"{path}: data after the end of the pickle (not a single network pickle)")
    return _convert(obj)
