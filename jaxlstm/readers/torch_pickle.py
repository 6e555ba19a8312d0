"""``torch.save`` files, through ``torch.load(weights_only=True)``: nothing in them runs.

The zip's members are checked (:func:`~jaxlstm.readers.guard.open_zip`) before torch opens it,
and storages are memory-mapped rather than read whole, so memory stays within the file's own
tensors. A file that holds Python objects besides tensors is refused with the name of the global
it would import, never with advice to load it unsafely.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

from jaxlstm.readers.guard import (
    CheckpointError,
    bounded_walk,
    name,
    open_zip,
    pickled_globals,
    read_member,
)

# What a weights-only torch pickle imports (torch's own allow-list is longer; these are the
# names a state dict or training checkpoint made by torch.save uses).
_TORCH_GLOBALS = ("torch.", "collections.OrderedDict", "builtins.set", "builtins.frozenset",
                  "builtins.slice", "builtins.complex", "builtins.bytearray")


# torch's boilerplate around a weights-only refusal, which advises loading the file unsafely.
_BOILERPLATE = ("weights only load failed", "weights_only", "trusted source", "file an issue",
                "check the documentation")


def _first_line(error: Exception) -> str:
    """The error as a short phrase: its type and first line that is not torch's advice."""
    lines = [line.strip() for line in str(error).splitlines()]
    text = next((line for line in lines
                 if line and not any(b in line.lower() for b in _BOILERPLATE)), "")
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _pickle_bytes(path: Path) -> bytes:
    """The pickle stream of a ``torch.save`` file: ``data.pkl`` of a zip, else the file."""
    if zipfile.is_zipfile(path):
        with open_zip(path) as archive:
            pickled = [n for n in archive.namelist() if n.endswith("data.pkl")]
            return read_member(archive, pickled[0], path) if pickled else b""
    return path.read_bytes()


def _refusal(path: Path, error: Exception) -> CheckpointError:
    """Why torch refused the file: the foreign global it would import, or damage."""
    foreign = [g for g in pickled_globals(_pickle_bytes(path)) if not g.startswith(_TORCH_GLOBALS)]
    if not foreign:
        return CheckpointError(f"{name(path)} is not a torch checkpoint, or it is truncated or "
                               f"corrupt ({_first_line(error)}); copy or save it again")
    first = foreign[0]
    if first.startswith(("numpy.", "_codecs.")):
        return CheckpointError(
            f"{name(path)} is a pickle of numpy objects (it would import {first}), not a "
            "torch checkpoint; unpickling it could run code, so it is refused. Save the arrays "
            "with numpy.savez(path, **arrays) (an .npz, which jaxlstm reads) or as safetensors"
        )
    return CheckpointError(
        f"{name(path)} holds pickled Python objects besides tensors: it would import {first}, "
        "which could run code, so it is refused (jaxlstm never runs code from a file). Save "
        "only the weights where the file was made: torch.save(model.state_dict(), path), or "
        "safetensors.torch.save_file(model.state_dict(), path)"
    )


def _is_expanded(tensor: Any) -> bool:
    """A view holding more elements than its storage (a zero stride); copying it would
    allocate what the file never stored."""
    return tensor.numel() * tensor.element_size() > tensor.untyped_storage().nbytes()


def read_torch(path: Path) -> Any:
    """The object ``torch.save`` wrote to ``path``, its containers copied (bounded depth, no
    cycles) and its tensors checked to lie inside their storages."""
    with path.open("rb") as handle:
        head = handle.read(4)
    # torch.save writes a zip archive (since torch 1.6) or, legacy, a pickle (protocol byte 0x80).
    if not head.startswith((b"PK", b"\x80")):
        shown = repr(head) if head else "nothing (the file is empty)"
        raise CheckpointError(
            f"{name(path)} is not a torch checkpoint or it is corrupt: it starts with {shown}, "
            "not with a zip archive or a pickle as torch.save writes; check that this is the "
            "right file, or copy or save it again"
        )
    try:
        import torch
    except ImportError as error:
        raise CheckpointError(
            f"reading {name(path)} needs torch (pip install 'jaxlstm[torch]'); or save the "
            "state dict as safetensors where torch is installed: safetensors.torch.save_file("
            "model.state_dict(), 'model.safetensors')"
        ) from error
    is_zip = head.startswith(b"PK")
    if is_zip:
        open_zip(path).close()  # member sizes checked before torch reads any
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as error:
        raise _refusal(path, error) from error
    except Exception as error:  # a damaged stream fails in many ways (EOF, Index, Runtime...)
        raise CheckpointError(
            f"{name(path)} is truncated or corrupt and torch cannot read it "
            f"({_first_line(error)}); copy or save it again"
        ) from error

    def checked(value: Any) -> Any:
        if not isinstance(value, torch.Tensor):
            return value
        if _is_expanded(value):
            raise CheckpointError(
                f"{name(path)}: a tensor of shape {tuple(value.shape)} is a view of "
                f"{value.untyped_storage().nbytes()} stored bytes (zero strides); a state dict "
                "stores each weight's own elements, so the file is crafted or corrupt")
        # Copied out of the memory map, so rewriting the file later cannot change (or fault)
        # the arrays read from it.
        return value.detach().clone()

    return bounded_walk(obj, path, checked)
