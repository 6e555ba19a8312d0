"""``torch.jit.save`` archives: the module tree of ``data.pkl`` and its tensors, without torch.

``torch.jit.load`` would run the archive's TorchScript code; this reader never calls it. It
unpickles ``<root>/data.pkl`` with an allow-list that builds nothing but dicts, lists and numpy
arrays, and rebuilds each tensor from its ``<root>/data/<key>`` record only after checking that
the record holds exactly the elements its storage claims and that the tensor's size, stride and
offset lie inside that storage.
"""

from __future__ import annotations

import io
import math
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxlstm.readers.guard import CheckpointError, bounded_walk, name, open_zip, read_member

# Storage classes in TorchScript archives, by the dtype of their records.
STORAGE_DTYPES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
}


def is_torchscript(path: Path) -> bool:
    """A ``torch.jit.save`` archive: a zip with ``<name>/constants.pkl`` and ``<name>/code/``."""
    if not zipfile.is_zipfile(path):
        return False
    with open_zip(path) as archive:
        names = archive.namelist()
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


class _ScriptObject:
    """A TorchScript module's attributes, as a dict: nothing of the module's code is loaded."""

    qualified_name = ""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, Mapping):
            raise pickle.UnpicklingError(f"{self.qualified_name} is built from a "
                                         f"{type(state).__name__}, not from its attributes")
        # _flat_weights repeats the named parameters as a list.
        self.attributes = {k: v for k, v in state.items() if k != "_flat_weights"}

    def tree(self) -> dict[str, Any]:
        return getattr(self, "attributes", {})


def numpy_dtype(dtype_name: str) -> np.dtype:
    """A numpy dtype by name; ``bfloat16`` through ``ml_dtypes``."""
    if dtype_name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtype_name)


class _Storage:
    """One ``data/<key>`` record, read and checked against its claimed element count."""

    def __init__(self, key: str, array: np.ndarray):
        self.key, self.array = key, array


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _rebuild_array(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> np.ndarray:
    """torch's ``_rebuild_tensor_v2`` on a numpy storage, after checking that the tensor lies
    inside it and holds no more elements than it (a zero stride could claim any size)."""
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError(f"a tensor is rebuilt from a {type(storage).__name__}, "
                                     "not from a storage record")
    where = f"tensor over storage data/{storage.key}"
    if not (isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride)
            and all(map(_is_count, (*size, *stride, offset)))):
        raise pickle.UnpicklingError(f"{where} has size {size!r}, stride {stride!r}, offset "
                                     f"{offset!r}; expected non-negative integers, one stride "
                                     "per dimension")
    count, numel = math.prod(size), storage.array.size
    last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if count else offset - 1
    if count > numel or last >= numel:
        raise pickle.UnpicklingError(
            f"{where} claims size {size}, stride {stride}, offset {offset} ({count} elements "
            f"reaching element {last}), but the storage holds {numel} elements")
    itemsize = storage.array.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage.array[offset:], shape=size, strides=tuple(s * itemsize for s in stride),
        writeable=False,
    )
    return np.array(view)


class _TorchScriptUnpickler(pickle.Unpickler):
    """``data.pkl`` with an allow-list: module classes (``__torch__.*``) become
    :class:`_ScriptObject`, tensors :func:`_rebuild_array`; any other global is refused, so the
    file cannot make this process run anything."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, root: str, path: Path):
        super().__init__(io.BytesIO(data))
        self.archive, self.root, self.path = archive, root, path
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__"):
            return type(name, (_ScriptObject,), {"qualified_name": f"{module}.{name}"})
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_array
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return lambda array, *args: array
        if module == "torch.jit._pickle" and name == "restore_type_tag":
            return lambda value, type_name: value
        if module == "torch.jit._pickle" and name.startswith("build_"):  # typed lists
            return list
        if module == "torch" and name in STORAGE_DTYPES:
            return name
        raise pickle.UnpicklingError(
            f"it would import {module}.{name}, which a TorchScript archive's weights never need "
            "and which could run code, so it is refused")

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and pid[1] in STORAGE_DTYPES and isinstance(pid[2], str) and _is_count(pid[4])):
            raise pickle.UnpicklingError(f"unsupported tensor storage record {pid!r:.200}")
        _, storage, key, _location, numel = pid
        if key not in self.storages:
            dtype = numpy_dtype(STORAGE_DTYPES[storage])
            raw = read_member(self.archive, f"{self.root}/data/{key}", self.path,
                              size=numel * dtype.itemsize)
            self.storages[key] = _Storage(key, np.frombuffer(raw, dtype))
        return self.storages[key]


def _attributes(value: Any) -> Any:
    """A TorchScript object as the dict of its attributes; anything else as it is."""
    return value.tree() if isinstance(value, _ScriptObject) else value


def read_torchscript(path: Path) -> Any:
    """The module tree of a ``torch.jit.save`` archive as nested dicts of numpy arrays."""
    with open_zip(path) as archive:
        pickled = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickled) != 1:
            raise CheckpointError(f"{name(path)} looks like a TorchScript archive but holds "
                                  f"{len(pickled)} data.pkl records; it is corrupt")
        root = pickled[0][: -len("/data.pkl")]
        data = read_member(archive, pickled[0], path)
        try:
            tree = _TorchScriptUnpickler(data, archive, root, path).load()
        except CheckpointError:
            raise
        except Exception as error:  # a crafted pickle fails in any way; none may escape raw
            raise CheckpointError(
                f"{name(path)} is a TorchScript archive whose {pickled[0]!r} cannot be read: "
                f"{error}. Only the weights are read from TorchScript archives; if the archive "
                "is yours, save the weights instead: torch.save(model.state_dict(), path)"
            ) from error

    return bounded_walk(tree, path, _attributes)
