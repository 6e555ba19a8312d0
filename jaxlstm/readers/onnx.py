"""ONNX models: the protobuf parsed, external data read only from inside the model's directory,
every tensor's byte count checked against its dims before it becomes an array."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from jaxlstm.readers.guard import CheckpointError, confined, name


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as error:
        raise CheckpointError("reading ONNX models needs onnx: pip install 'jaxlstm[onnx]'"
                              ) from error
    return onnx


def _external(tensor: Any, path: Path) -> None:
    """Read ``tensor``'s external data into ``raw_data``: the file must lie inside ``path``'s
    directory and hold the bytes at the offset and length the tensor claims."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    target = confined(path.parent, info.get("location", ""), source=path,
                      what=f"external data of tensor {tensor.name!r}")
    try:
        offset = int(info.get("offset", 0))
        size = target.stat().st_size
        length = int(info["length"]) if "length" in info else size - offset
    except (ValueError, OSError) as error:
        raise CheckpointError(f"{name(path)}: external data of tensor {tensor.name!r} cannot be "
                              f"read ({error}); copy it beside the model") from error
    if offset < 0 or length < 0 or offset + length > size:
        raise CheckpointError(
            f"{name(path)}: tensor {tensor.name!r} claims bytes {offset}..{offset + length} of "
            f"{info.get('location')!r}, which holds {size}; the external data is truncated")
    with target.open("rb") as handle:
        handle.seek(offset)
        tensor.raw_data = handle.read(length)
    del tensor.external_data[:]
    tensor.data_location = 0  # DEFAULT: the bytes are in raw_data now


def load_model(path: Path) -> Any:
    """The ``ModelProto`` in ``path``, its external data (if any) read safely."""
    onnx = _onnx()
    from google.protobuf.message import DecodeError
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as error:
        raise CheckpointError(f"{name(path)} is not an ONNX model, or it is truncated or corrupt "
                              f"({type(error).__name__}: {error}); export it again") from error
    for tensor in _get_all_tensors(model):
        if uses_external_data(tensor):
            _external(tensor, path)
    return model


def to_array(tensor: Any, path: Path) -> np.ndarray:
    """A ``TensorProto`` as a numpy array, after checking its raw bytes fit its dims."""
    from onnx import helper, numpy_helper

    dims = tuple(tensor.dims)
    where = f"{name(path)}: tensor {tensor.name!r}"
    if any(d < 0 for d in dims):
        raise CheckpointError(f"{where} has negative dims {dims}; the model is corrupt")
    if tensor.raw_data:
        try:
            itemsize = helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        except (KeyError, ValueError, TypeError) as error:
            raise CheckpointError(f"{where} has an unknown data type {tensor.data_type}"
                                  ) from error
        if math.prod(dims) * itemsize != len(tensor.raw_data):
            raise CheckpointError(
                f"{where} claims dims {dims} ({math.prod(dims) * itemsize} bytes) but holds "
                f"{len(tensor.raw_data)} bytes; the model is truncated or crafted")
    try:
        return numpy_helper.to_array(tensor)
    except (ValueError, TypeError, KeyError) as error:
        raise CheckpointError(f"{where} cannot be read as an array ({error})") from error
