"""``numpy.savez`` archives, member by member: each ``.npy`` header's shape and dtype must
account for exactly the bytes stored, and nothing pickled is read."""

from __future__ import annotations

import ast
import math
import struct
from pathlib import Path

import numpy as np

from jaxlstm.readers.guard import CheckpointError, name, open_zip, read_member

_MAGIC = b"\x93NUMPY"


def _header(raw: bytes, member: str, path: Path) -> tuple[np.dtype, tuple[int, ...], bool, int]:
    """``(dtype, shape, fortran_order, data offset)`` of an ``.npy`` record, checked."""
    where = f"{name(path)}: array {member!r}"
    if not raw.startswith(_MAGIC) or len(raw) < 10:
        raise CheckpointError(f"{where} is not an .npy record; the file is corrupt")
    major = raw[6]
    width = 2 if major == 1 else 4
    if major not in (1, 2, 3) or len(raw) < 8 + width:
        raise CheckpointError(f"{where} has an unknown .npy version {major}")
    length = struct.unpack("<H" if width == 2 else "<I", raw[8:8 + width])[0]
    start = 8 + width
    if start + length > len(raw):
        raise CheckpointError(f"{where} claims a {length}-byte header past its end; corrupt")
    try:
        header = ast.literal_eval(raw[start:start + length].decode("latin1"))
        dtype = np.dtype(header["descr"]) if isinstance(header["descr"], str) else None
        shape, fortran = header["shape"], header["fortran_order"]
    except (ValueError, SyntaxError, KeyError, TypeError, MemoryError, RecursionError) as error:
        raise CheckpointError(f"{where} has an unreadable .npy header ({error})") from error
    if dtype is None or dtype.hasobject or not isinstance(shape, tuple) or not all(
            isinstance(n, int) and n >= 0 for n in shape) or not isinstance(fortran, bool):
        raise CheckpointError(
            f"{where} holds {header['descr']!r} values of shape {shape!r}; only numeric arrays "
            "are read (pickled Python objects could run code)")
    return dtype, shape, fortran, start + length


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz``, keyed like ``numpy.load(path)``'s ``files``."""
    arrays: dict[str, np.ndarray] = {}
    with open_zip(path) as archive:
        for info in archive.infolist():
            member = info.filename
            key = member[:-4] if member.endswith(".npy") else member
            raw = read_member(archive, member, path)
            dtype, shape, fortran, offset = _header(raw, key, path)
            stored = len(raw) - offset
            if math.prod(shape) * dtype.itemsize != stored:
                raise CheckpointError(
                    f"{name(path)}: array {key!r} claims shape {shape} of {dtype} "
                    f"({math.prod(shape) * dtype.itemsize} bytes) but stores {stored}; it is "
                    "truncated or crafted")
            flat = np.frombuffer(memoryview(raw)[offset:], dtype)
            arrays[key] = flat.reshape(shape, order="F" if fortran else "C").copy()
    return arrays
