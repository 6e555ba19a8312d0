"""safetensors files, through ``safetensors`` (which checks the header, the offsets and the dtypes
against the file); any failure is a :class:`~jaxlstm.readers.guard.CheckpointError`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxlstm.readers.guard import CheckpointError, name


def is_safetensors(path: Path, suffixes_of_others: tuple[str, ...]) -> bool:
    """A ``.safetensors`` file, or one of unknown suffix that starts like one."""
    if path.suffix == ".safetensors":
        return True
    if path.suffix in suffixes_of_others:
        return False
    # safetensors: an 8-byte little-endian header length, then the JSON header.
    with path.open("rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file, in its stored dtype (``bfloat16`` and ``float8``
    through ``ml_dtypes``)."""
    from safetensors import safe_open

    arrays = {}
    key = None
    try:
        with safe_open(str(path), framework="numpy") as handle:
            for key in handle.keys():
                try:
                    arrays[key] = handle.get_tensor(key)
                except TypeError:  # a dtype numpy cannot name: read through JAX
                    arrays[key] = _read_exotic(path, key)
    except CheckpointError:
        raise
    except Exception as error:  # the library's own error, or numpy's for an odd dtype
        what = f"tensor {key!r} of " if key is not None else ""
        raise CheckpointError(
            f"{what}{name(path)} is not a readable safetensors file ({type(error).__name__}: "
            f"{error}); the file is truncated or corrupt (or holds a dtype this safetensors "
            "cannot read): copy or export it again"
        ) from error
    return arrays


def _read_exotic(path: Path, key: str) -> np.ndarray:
    from safetensors import safe_open

    with safe_open(str(path), framework="flax") as handle:
        return np.asarray(handle.get_tensor(key))
