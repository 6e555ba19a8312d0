"""Writing files atomically: a temporary file beside the target, renamed over it once complete,
so a failure never leaves a half-written file. The bottom of the writing side: the formats write
through it, and nothing here knows a format but safetensors' own bytes."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxlstm.arrays import to_numpy


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
