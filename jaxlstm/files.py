"""Checkpoint files: read the tensors of any checkpoint safely, write atomically.

Reading never executes code from the file: a ``.pt`` file goes through
``torch.load(..., weights_only=True)``, and a file that holds Python objects besides tensors is
refused with an explanation; a TorchScript archive is a zip whose ``data.pkl`` is read by an
unpickler that builds nothing but dicts and numpy arrays (``torch.jit.load``, which would run
the archive's TorchScript code, is never called). safetensors files are read and written with
``safetensors.numpy``, so they need no torch. Every write goes to a temporary file in the
target directory that is renamed over the target only once complete, so a failure never leaves
a half-written file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import pickle
import re
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxlstm.arrays import WRAPPER_SEGMENTS, flatten_arrays, to_numpy

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SUFFIXES = (*TORCH_SUFFIXES, ".safetensors", ".index.json", ".onnx", ".npz")
"""What :func:`read_checkpoint` reads (other suffixes are told apart by their content)."""


class CheckpointError(ValueError):
    """A file that cannot be read as a state dict; the message names the file and the fix."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """The tensors read from a file, flattened to dotted keys, and how they were stored."""

    path: Path
    state_dict: dict[str, np.ndarray]
    """``{dotted key: array}``, nested containers joined with ``.``
    (``model_state.rnn.weight_ih_l0``)."""
    wrapper: str | None = None
    """The key(s) of the one container that held every tensor (``"state_dict"``,
    ``"model"``, ``"checkpoint.model"``), removed from the keys; ``None`` if there was none."""
    skipped: tuple[str, ...] = ()
    """Dotted keys of entries that are not tensors (``epoch``, ``optimizer.param_groups.0.lr``)."""
    format: str = "torch"
    """``torch``, ``torchscript``, ``safetensors``, ``sharded``, ``onnx`` or ``npz``."""


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read every tensor of a checkpoint file, safely (no code from the file runs).

    **Arguments:**

    - ``path``: a ``.pt``/``.pth``/``.bin``/``.ckpt`` file (``torch.save`` of a state dict or
      of a training checkpoint, nested to any depth; or a ``torch.jit.save`` TorchScript
      archive), a ``.safetensors`` file, a sharded checkpoint's ``*.index.json`` (Hugging Face
      layout: its ``weight_map`` names the shard of each key), an ``.onnx`` model (its ``LSTM``
      nodes in torch's layout, see :mod:`jaxlstm.formats.onnx`) or a jax-rnn ``.npz`` written
      by ``jaxlstm convert``. Other suffixes are recognised by their content.

    Nested dicts, lists and tuples are flattened to dotted keys; when one container holds every
    tensor (``{'epoch': 3, 'state_dict': {...}}``) its key is dropped and reported in
    ``Checkpoint.wrapper``. Values become numpy arrays of the stored dtype (``bfloat16`` via
    ``ml_dtypes``). Raises :class:`CheckpointError` for a missing, truncated, corrupt or unsafe
    file.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise CheckpointError(f"checkpoint file {str(path)!r} {what}")
    name = path.name
    if name.endswith(".index.json"):
        return Checkpoint(path, _read_sharded(path), format="sharded")
    if path.suffix == ".onnx":
        return Checkpoint(path, _read_onnx(path), format="onnx")
    if path.suffix == ".npz":
        return Checkpoint(path, _read_npz(path), format="npz")
    if _is_safetensors(path):
        return Checkpoint(path, _read_safetensors(path), format="safetensors")
    if _is_torchscript(path):
        return _unwrap(path, _read_torchscript(path), "torchscript")
    return _unwrap(path, _torch_load(path), "torch")


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The tensors in ``path`` as ``{dotted key: numpy array}`` (see :func:`read_checkpoint`)."""
    return read_checkpoint(path).state_dict


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    if path.suffix in TORCH_SUFFIXES:
        return False
    # safetensors: an 8-byte little-endian header length, then the JSON header.
    with path.open("rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError, safe_open

    arrays = {}
    try:
        with safe_open(str(path), framework="numpy") as handle:
            for key in handle.keys():
                try:
                    arrays[key] = handle.get_tensor(key)
                except TypeError:
                    arrays[key] = _read_exotic(path, key)
    except SafetensorError as error:
        raise CheckpointError(
            f"{str(path)!r} is not a readable safetensors file ({error}); the file is truncated "
            "or corrupt: copy or export it again"
        ) from error
    return arrays


def _read_exotic(path: Path, key: str) -> np.ndarray:
    """A tensor whose dtype numpy cannot name (bfloat16, float8): read through JAX."""
    from safetensors import safe_open

    with safe_open(str(path), framework="flax") as handle:
        return np.asarray(handle.get_tensor(key))


def _read_sharded(path: Path) -> dict[str, np.ndarray]:
    """A Hugging Face sharded checkpoint: the index maps each key to its shard file."""
    try:
        weight_map = json.loads(path.read_text())["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(
            f"{str(path)!r} is not a sharded-checkpoint index: expected JSON with a "
            '"weight_map" {key: shard file} (as Hugging Face writes model.safetensors.index.json)'
        ) from error
    arrays: dict[str, np.ndarray] = {}
    for shard in shards:
        shard_path = path.parent / shard
        if not shard_path.is_file():
            raise CheckpointError(
                f"shard {shard!r} listed in {str(path)!r} does not exist beside it; copy every "
                "shard file into the index's directory"
            )
        arrays.update(read_checkpoint(shard_path).state_dict)
    missing = sorted(set(weight_map) - set(arrays))
    if missing:
        raise CheckpointError(
            f"{str(path)!r} lists keys that its shards do not hold: {', '.join(missing[:5])}"
        )
    return arrays


def _read_onnx(path: Path) -> dict[str, np.ndarray]:
    from jaxlstm.formats.onnx import read_onnx

    try:
        return read_onnx(path)
    except ImportError as error:
        raise ImportError(f"reading {str(path)!r} needs onnx: pip install onnx") from error


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """A jax-rnn ``.npz`` (as ``jaxlstm convert`` writes it), else a plain ``numpy.savez``."""
    from jaxlstm.formats.jax_rnn import SIZE_KEYS, read_npz

    try:
        with np.load(path) as data:
            keys = set(data.files)
            if "weights" in keys and keys >= set(SIZE_KEYS):
                return read_npz(path)
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise CheckpointError(
            f"{str(path)!r} is not a readable .npz file ({error}); it is truncated or corrupt"
        ) from error


def _is_torchscript(path: Path) -> bool:
    """A ``torch.jit.save`` archive: a zip with ``<name>/constants.pkl`` and ``<name>/code/``."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


# Storage classes in TorchScript archives, by the dtype of their records.
_STORAGE_DTYPES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
}


class _ScriptObject:
    """A TorchScript module's attributes, as a dict: nothing of the module's code is loaded."""

    qualified_name = ""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, Mapping):
            # _flat_weights repeats the named parameters as a list.
            self.attributes = {k: v for k, v in state.items() if k != "_flat_weights"}

    def tree(self) -> dict[str, Any]:
        return getattr(self, "attributes", {})


class _TorchScriptUnpickler(pickle.Unpickler):
    """Reads ``data.pkl`` of a TorchScript archive with an allow-list of what it may build.

    Module classes (``__torch__.*``) become :class:`_ScriptObject` (a dict of attributes);
    tensors are rebuilt by :func:`_rebuild_array` from the raw records in ``data/``. Every other
    global is refused, so the file cannot make this process run anything.
    """

    def __init__(self, data: bytes, archive: zipfile.ZipFile, root: str):
        super().__init__(io.BytesIO(data))
        self.archive, self.root = archive, root

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
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a TorchScript "
                                     "archive read for its weights")

    def persistent_load(self, pid: Any) -> np.ndarray:
        kind, storage, key, _location, _numel = pid
        if kind != "storage" or storage not in _STORAGE_DTYPES:
            raise pickle.UnpicklingError(f"unsupported tensor storage {pid!r}")
        raw = self.archive.read(f"{self.root}/data/{key}")
        return np.frombuffer(raw, _numpy_dtype(_STORAGE_DTYPES[storage]))


def _numpy_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _rebuild_array(storage: np.ndarray, offset: int, size: Any, stride: Any, *args: Any):
    """torch's ``_rebuild_tensor_v2``, on a numpy view of the storage (copied out)."""
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride),
        writeable=False,
    )
    return np.array(view)


def _script_tree(value: Any) -> Any:
    """TorchScript objects as nested dicts of their attributes."""
    if isinstance(value, _ScriptObject):
        return {k: _script_tree(v) for k, v in value.tree().items()}
    if isinstance(value, Mapping):
        return {k: _script_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_script_tree(v) for v in value]
    return value


def _read_torchscript(path: Path) -> Any:
    """The module tree of a ``torch.jit.save`` archive, read without torch and without its code."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickled = [n for n in archive.namelist() if n.endswith("/data.pkl")]
            if len(pickled) != 1:
                raise CheckpointError(f"{str(path)!r} looks like a TorchScript archive but holds "
                                      f"{len(pickled)} data.pkl records")
            root = pickled[0][: -len("/data.pkl")]
            tree = _TorchScriptUnpickler(archive.read(pickled[0]), archive, root).load()
    except (pickle.UnpicklingError, zipfile.BadZipFile, KeyError, ValueError, EOFError) as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(
            f"{str(path)!r} is a TorchScript archive whose weights cannot be read ({error}); "
            "save the weights instead: torch.save(model.state_dict(), path)"
        ) from error
    return _script_tree(tree)


def _torch_load(path: Path) -> Any:
    with path.open("rb") as handle:
        head = handle.read(4)
    # torch.save writes a zip archive (since torch 1.6) or, legacy, a pickle (protocol byte 0x80).
    if not head.startswith((b"PK", b"\x80")):
        shown = repr(head) if head else "nothing (the file is empty)"
        raise CheckpointError(
            f"{str(path)!r} is not a torch checkpoint or it is corrupt: it starts with {shown}, "
            "not with a zip archive or a pickle as torch.save writes; check that this is the "
            "right file, or copy or save it again"
        )
    try:
        import torch
    except ImportError as error:
        raise CheckpointError(
            f"reading {str(path)!r} needs torch (pip install jaxlstm[torch]); or save the state "
            "dict as safetensors where torch is installed: safetensors.torch.save_file("
            "model.state_dict(), 'model.safetensors')"
        ) from error

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if found is None:
            raise CheckpointError(
                f"{str(path)!r} is not a torch checkpoint, or it is corrupt (torch.load: "
                f"{_first_line(error)})"
            ) from error
        raise CheckpointError(
            f"{str(path)!r} holds pickled Python objects besides tensors (e.g. "
            f"{found.group(1)}), which could run code when loaded, so it is not loaded. "
            "Re-save only the weights: torch.save(model.state_dict(), path). Or, only if you "
            "trust the file, load it yourself with torch.load(path, weights_only=False) and "
            "pass the state dict (model.state_dict()) instead of the path"
        ) from error
    except Exception as error:  # a damaged pickle stream fails in many ways (EOF, Index...)
        raise CheckpointError(
            f"{str(path)!r} is truncated or corrupt and torch cannot read it "
            f"({_first_line(error)}); copy or save it again"
        ) from error


def _first_line(error: Exception) -> str:
    """An exception as a short phrase: its type and first line (never a bare number)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _unwrap(path: Path, obj: Any, fmt: str) -> Checkpoint:
    """The tensors of a loaded object, flattened; a single container of them is dropped."""
    if not isinstance(obj, (Mapping, list, tuple)):
        raise CheckpointError(
            f"{str(path)!r} holds a {type(obj).__name__}, not a state dict; save "
            "model.state_dict() instead"
        )
    chain = []
    while isinstance(obj, Mapping):
        holders = [k for k, v in obj.items() if flatten_arrays({k: v})[0]]
        if len(holders) != 1 or not isinstance(obj[holders[0]], Mapping):
            break
        if str(holders[0]) in WRAPPER_SEGMENTS:  # a model wrapper, not a checkpoint container
            break
        chain.append(str(holders[0]))
        obj = obj[holders[0]]
    arrays, skipped = flatten_arrays(obj)
    if not arrays:
        listed = ", ".join(map(repr, list(obj)[:8])) if isinstance(obj, Mapping) else ""
        raise CheckpointError(
            f"{str(path)!r} holds no tensors (top-level keys: {listed or 'none'}); save the "
            "model's weights with torch.save(model.state_dict(), path)"
        )
    state = {}
    for key, value in arrays.items():
        try:
            state[key] = to_numpy(value, key)
        except (TypeError, RuntimeError) as error:
            raise CheckpointError(
                f"{str(path)!r}: tensor {key!r} cannot be read as an array ({error})"
            ) from error
    return Checkpoint(path, state, ".".join(chain) or None, tuple(skipped), fmt)


def atomic_write(
    path: str | os.PathLike[str], write: Callable[[Path], Any], *, force: bool = False
) -> Path:
    """Create ``path`` by ``write(temporary_path)`` and a rename, so it is never half-written.

    **Arguments:**

    - ``path``: the file to create.
    - ``write``: called with a path in the same directory whose name ends with ``path``'s name
      (so suffix checks such as Keras' ``.keras`` pass); it must create that file.
    - ``force``: replace an existing ``path`` (default: refuse with ``FileExistsError``).

    If ``write`` raises, the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(
            f"output file {str(path)!r} already exists; choose another name or pass force=True "
            "to replace it"
        )
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {str(path)!r}: directory {str(path.parent)!r} "
                                "does not exist")
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix="-" + path.name)
    os.close(handle)
    os.unlink(temporary)  # writers such as Keras refuse to overwrite; let them create it
    try:
        write(Path(temporary))
        if not os.path.exists(temporary):
            raise RuntimeError(f"the writer for {str(path)!r} did not create a file")
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    return path


def safetensors_bytes(state_dict: Mapping[str, Any]) -> bytes:
    """``{torch name: array}`` (numpy, JAX or torch) as safetensors bytes, dtypes kept.

    The metadata ``{"format": "pt"}`` marks torch names, as Hugging Face's files do.
    """
    from safetensors.numpy import save

    arrays = {}
    for key, value in state_dict.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"state dict key {key!r} must be a non-empty string")
        arrays[key] = np.ascontiguousarray(to_numpy(value, key))
    return save(arrays, metadata={"format": "pt"})


def save_safetensors(
    state_dict: Mapping[str, Any], path: str | os.PathLike[str], *, force: bool = False
) -> Path:
    """Write ``{torch name: array}`` as a safetensors file that torch loads with its own names.

    **Arguments:**

    - ``state_dict``: torch-named arrays (numpy, JAX or torch); dtypes are kept as they are.
    - ``path``: the output file; written atomically (see :func:`atomic_write`).
    - ``force``: replace an existing file.

    ``safetensors.torch.load_file(path)`` then gives a state dict for ``load_state_dict``.
    """
    data = safetensors_bytes(state_dict)
    return atomic_write(path, lambda temporary: temporary.write_bytes(data), force=force)
