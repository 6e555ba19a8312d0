"""HDF5 files (Keras' ``.h5``), through h5py, reading only what lies inside the file.

Links are resolved one path component at a time: hard links and soft links inside the file
are followed (soft links at most :data:`MAX_HOPS` deep), external links and user-defined links
never are. A dataset is read only once its dtype is numeric and its claimed size is accounted
for by the bytes the file stores for it; datasets whose data live in other files (external
storage, virtual datasets) are refused. Attributes are read only when their element count and
stored size are bounded. Every failure is a :class:`~jaxlstm.readers.guard.CheckpointError`.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from jaxlstm.readers.guard import MAX_RATIO, SMALL_MEMBER, CheckpointError, name

MAGIC = b"\x89HDF\r\n\x1a\n"
"""The first bytes of an HDF5 file (at offset 0; HDF5 also allows 512, 1024, ...)."""
MAX_HOPS = 16
"""Most soft links followed to reach one object (a loop of them would never end)."""
MAX_ATTRIBUTE_BYTES = 16 << 20
"""Largest attribute read (a Keras ``model_config`` of a large model is a few hundred KB)."""
MAX_ATTRIBUTE_ITEMS = 1 << 16
"""Most elements in one attribute (``layer_names``, ``weight_names``)."""
INSTALL = "reading HDF5 (Keras .h5) files needs h5py: pip install 'jaxlstm[keras]'"


def h5py_module() -> Any:
    """``h5py``, or a :class:`CheckpointError` with the install line."""
    try:
        import h5py
    except ImportError as error:
        raise CheckpointError(INSTALL) from error
    return h5py


def is_hdf5(path: Path) -> bool:
    """Whether ``path`` starts like an HDF5 file."""
    try:
        with path.open("rb") as handle:
            return handle.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def open_file(source: Path | bytes, path: Path) -> Any:
    """``source`` (a path, or the bytes of an archive member) as a read-only ``h5py.File``;
    ``path`` names the file in messages."""
    h5py = h5py_module()
    try:
        target = io.BytesIO(source) if isinstance(source, bytes) else str(source)
        return h5py.File(target, "r")
    except (OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{name(path)} is not a readable HDF5 file ({error}); it is "
                              "truncated, corrupt or another format") from error


def member(group: Any, relative: str, path: Path, hops: int = 0) -> Any:
    """The object at ``relative`` below ``group``, reached without leaving the file."""
    h5py = h5py_module()
    node = group
    walked = group.name.rstrip("/")
    for part in relative.split("/"):
        if part in ("", "."):
            continue
        walked += "/" + part
        try:
            link = node.get(part, getlink=True)
        except (KeyError, OSError, RuntimeError, ValueError) as error:
            raise CheckpointError(f"{name(path)}: HDF5 object {walked!r} cannot be read "
                                  f"({error}); the file is corrupt") from error
        if link is None:
            raise CheckpointError(f"{name(path)} has no HDF5 object {walked!r}, which its "
                                  "records name; it is truncated or inconsistent")
        if isinstance(link, h5py.ExternalLink):
            raise CheckpointError(
                f"{name(path)}: HDF5 object {walked!r} is an external link to "
                f"{link.filename!r}:{link.path!r}, another file; it is not followed (only "
                "data inside the file are read)")
        if isinstance(link, h5py.SoftLink):
            if hops >= MAX_HOPS:
                raise CheckpointError(f"{name(path)}: HDF5 soft link {walked!r} leads through "
                                      f"more than {MAX_HOPS} links; a loop, refused")
            base = node.file if link.path.startswith("/") else node
            node = member(base, link.path, path, hops + 1)
        elif isinstance(link, h5py.HardLink):
            node = node[part]
        else:
            raise CheckpointError(f"{name(path)}: HDF5 object {walked!r} is a "
                                  f"{type(link).__name__}, not a group or dataset; refused")
    return node


def children(group: Any, path: Path) -> list[str]:
    """The names of ``group``'s members (links are checked when a member is read)."""
    try:
        return list(group.keys())
    except (OSError, RuntimeError, ValueError) as error:
        raise CheckpointError(f"{name(path)}: HDF5 group {group.name!r} cannot be listed "
                              f"({error}); the file is corrupt") from error


def read_dataset(dataset: Any, path: Path) -> np.ndarray:
    """A numeric dataset as an array, after checking where its data live and its size."""
    h5py = h5py_module()
    where = f"{name(path)}: HDF5 dataset {dataset.name!r}"
    if not isinstance(dataset, h5py.Dataset):
        raise CheckpointError(f"{where} is a group, not a dataset of weights")
    if dataset.is_virtual or dataset.external:
        what = "a virtual dataset" if dataset.is_virtual else "stored in external files"
        raise CheckpointError(f"{where} is {what} {dataset.external or ''}: its data lie in "
                              "other files, which are not opened")
    dtype, shape = dataset.dtype, dataset.shape
    if shape is None or dtype.kind not in "fiub" or dtype.itemsize > 8 or dtype.fields:
        raise CheckpointError(f"{where} holds {dtype} values of shape {shape}; only numeric "
                              "arrays are weights")
    claimed = math.prod(shape) * dtype.itemsize
    stored = dataset.id.get_storage_size()
    filtered = dataset.chunks is not None and bool(dataset.id.get_create_plist().get_nfilters())
    file_size = _file_size(dataset)
    plausible = (claimed <= max(SMALL_MEMBER, MAX_RATIO * stored) if filtered
                 else stored == claimed or claimed == 0)
    if not plausible or stored > file_size:
        raise CheckpointError(
            f"{where} claims shape {shape} of {dtype} ({claimed} bytes) but the file stores "
            f"{stored} bytes for it; it is truncated or crafted")
    try:
        return np.asarray(dataset[()])
    except (OSError, RuntimeError, ValueError, TypeError) as error:
        raise CheckpointError(f"{where} cannot be read ({error}); the file is truncated or "
                              "corrupt") from error


def _file_size(node: Any) -> int:
    try:
        return int(node.file.id.get_filesize())
    except (OSError, RuntimeError, AttributeError):
        return 1 << 62


def read_attribute(node: Any, key: str, path: Path) -> Any:
    """Attribute ``key`` of ``node`` (``None`` when absent): a string, a list of strings or an
    array, read only when bounded. Keras splits long attributes into ``key0``, ``key1``, ...;
    those are joined."""
    if key not in node.attrs:
        if f"{key}0" not in node.attrs:
            return None
        parts, index = [], 0
        while f"{key}{index}" in node.attrs and index < MAX_ATTRIBUTE_ITEMS:
            parts.extend(as_list(read_attribute(node, f"{key}{index}", path)))
            index += 1
        return parts
    where = f"{name(path)}: HDF5 attribute {key!r} of {node.name!r}"
    try:
        attribute = node.attrs.get_id(key)
        count = math.prod(attribute.shape or ())
        stored = attribute.get_storage_size() if count else 0  # HDF5 fails on empty ones
    except (OSError, RuntimeError, ValueError, KeyError) as error:
        raise CheckpointError(f"{where} cannot be read ({error}); the file is corrupt"
                              ) from error
    if count > MAX_ATTRIBUTE_ITEMS or stored > MAX_ATTRIBUTE_BYTES:
        raise CheckpointError(f"{where} claims {count} elements, {stored} bytes; more than "
                              "any Keras file holds, refused")
    try:
        value = node.attrs[key]
    except (OSError, RuntimeError, ValueError, TypeError) as error:
        raise CheckpointError(f"{where} cannot be read ({error}); the file is corrupt"
                              ) from error
    value = _decoded(value)
    size = sum(map(len, value)) if isinstance(value, list) else len(value) if isinstance(
        value, str) else 0
    if size > MAX_ATTRIBUTE_BYTES:
        raise CheckpointError(f"{where} holds {size} characters; more than any Keras file "
                              "holds, refused")
    return value


def _decoded(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.dtype.kind in "OSU":
        return [_decoded(v) for v in value.ravel().tolist()]
    if isinstance(value, np.ndarray) and value.size == 0:
        return []
    return value


def as_list(value: Any) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]
