"""Checkpoint files: read ``.pt``/``.pth``/``.safetensors`` state dicts safely, write atomically.

Reading a ``.pt`` file never executes pickled code: it goes through
``torch.load(..., weights_only=True)``, and a file that holds Python objects besides tensors is
refused with an explanation. safetensors files are read and written with ``safetensors.numpy``,
so they need no torch. Every write goes to a temporary file in the target directory that is
renamed over the target only once complete, so a failure never leaves a half-written file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

# Keys under which training scripts commonly store the state dict inside a checkpoint dict.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


class CheckpointError(ValueError):
    """A file that cannot be read as a state dict; the message names the file and the fix."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """The state dict read from a file, and where in the file it was found."""

    path: Path
    state_dict: dict[str, np.ndarray]
    """``{key: array}``, keys exactly as stored."""
    wrapper: str | None = None
    """The key(s) that held the state dict (``"state_dict"``, ``"model"``, ...), or ``None``."""
    skipped: tuple[str, ...] = ()
    """Entries next to the tensors that are not arrays (``epoch``, ``_extra_state``, ...)."""


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a state dict from a ``.pt``/``.pth``/``.bin``/``.ckpt`` or ``.safetensors`` file.

    **Arguments:**

    - ``path``: the file. The format is taken from the suffix, or sniffed from the content for
      other suffixes.

    A torch checkpoint may be the state dict itself or a dict holding it under ``state_dict``,
    ``model_state_dict`` or ``model`` (the key used is reported in ``Checkpoint.wrapper``).
    Values become numpy arrays of the stored dtype (``bfloat16`` via ``ml_dtypes``). Raises
    :class:`CheckpointError` for a missing, truncated, corrupt or unsafe file.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise CheckpointError(f"checkpoint file {str(path)!r} {what}")
    if _is_safetensors(path):
        return Checkpoint(path, _read_safetensors(path))
    return _unwrap(path, _torch_load(path))


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The state dict stored in ``path`` as ``{key: numpy array}`` (see :func:`read_checkpoint`)."""
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


def _torch_load(path: Path) -> Any:
    try:
        import torch
    except ImportError as error:
        raise CheckpointError(
            f"reading {str(path)!r} needs torch (pip install torch); or save the state dict as "
            "safetensors where torch is installed: safetensors.torch.save_file(model.state_dict(), "
            "'model.safetensors')"
        ) from error
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if found is None:
            raise CheckpointError(
                f"{str(path)!r} is not a torch checkpoint, or it is corrupt (torch.load: "
                f"{str(error).splitlines()[-1] if str(error) else type(error).__name__})"
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
            f"({str(error).splitlines()[0] if str(error) else type(error).__name__}); "
            "copy or save it again"
        ) from error


def _is_array(value: Any) -> bool:
    return hasattr(value, "detach") or isinstance(value, np.ndarray)


def _unwrap(path: Path, obj: Any) -> Checkpoint:
    chain = []
    while isinstance(obj, Mapping):
        nested = [k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)]
        if not nested:
            break
        chain.append(nested[0])
        obj = obj[nested[0]]
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{str(path)!r} holds a {type(obj).__name__}, not a state dict; save "
            "model.state_dict() instead"
        )
    arrays = {str(k): v for k, v in obj.items() if _is_array(v)}
    if not arrays:
        listed = ", ".join(map(repr, list(obj)[:8])) or "none"
        raise CheckpointError(
            f"{str(path)!r} holds no tensors (top-level keys: {listed}); if the state dict is "
            "stored under another key, load it yourself and pass the state dict"
        )
    state = {}
    for key, value in arrays.items():
        try:
            state[key] = _tensor_to_numpy(value)
        except (TypeError, RuntimeError) as error:
            raise CheckpointError(
                f"{str(path)!r}: tensor {key!r} cannot be read as an array ({error})"
            ) from error
    skipped = tuple(str(k) for k in obj if str(k) not in arrays)
    return Checkpoint(path, state, ".".join(chain) or None, skipped)


def _tensor_to_numpy(value: Any) -> np.ndarray:
    if not hasattr(value, "detach"):
        return np.asarray(value)
    value = value.detach().cpu()
    if str(value.dtype) == "torch.bfloat16":
        # numpy has no bfloat16; reinterpret the bits as ml_dtypes' bfloat16 (lossless).
        import ml_dtypes
        import torch

        return value.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return value.numpy()


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
            "(--force on the command line) to replace it"
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
        array = _tensor_to_numpy(value)
        if array.dtype == object:
            raise TypeError(f"state dict entry {key!r} is not an array ({type(value).__name__})")
        arrays[key] = np.ascontiguousarray(array)
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
