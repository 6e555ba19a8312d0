"""Checkpoint files: read the tensors of any checkpoint safely, write atomically.

Reading never executes code from the file and trusts no number in it (see
:mod:`jaxlstm.readers`): a ``.pt`` file goes through ``torch.load(..., weights_only=True)``,
and a file that holds Python objects besides tensors is refused, naming what it would import; a
TorchScript archive is read by an unpickler that builds nothing but dicts and numpy arrays
(``torch.jit.load``, which would run the archive's code, is never called); shards and external
data must lie inside the checkpoint's directory. Every failure is a :class:`CheckpointError`.
safetensors files are read and written with ``safetensors.numpy``, so they need no torch. Every
write goes to a temporary file in the target directory that is renamed over the target only once
complete, so a failure never leaves a half-written file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxlstm.arrays import WRAPPER_SEGMENTS, flatten_arrays, to_numpy
from jaxlstm.readers.guard import CheckpointError, confined, name
from jaxlstm.writing import atomic_write, safetensors_bytes, save_safetensors

__all__ = ["SUFFIXES", "Checkpoint", "CheckpointError", "atomic_write", "check_portable",
           "load_state_dict", "read_checkpoint", "safetensors_bytes", "save_safetensors"]

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
KERAS_SUFFIXES = (".h5", ".hdf5", ".keras")
SUFFIXES = (*TORCH_SUFFIXES, ".safetensors", ".index.json", ".onnx", ".npz", *KERAS_SUFFIXES)
"""What :func:`read_checkpoint` reads (other suffixes are told apart by their content)."""
MAX_INDEX_BYTES = 64 << 20
"""Largest sharded-checkpoint index read (real ones are a few hundred kilobytes)."""


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
    """``torch``, ``torchscript``, ``safetensors``, ``sharded``, ``onnx``, ``npz`` or
    ``keras``."""
    lstm_info: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    """What the file states about an LSTM besides its weights, by prefix (``"lstm_1."``):
    Keras files give ``activation``, ``recurrent_activation``, ``batch_first``, ...
    (see :data:`jaxlstm.formats.keras_h5.Info`), ONNX files ``batch_first`` (``layout=1``) and
    ``dequantized``. A ``problem`` entry says why that LSTM cannot be ported (see
    :func:`check_portable`). Empty for torch's own formats."""


def check_portable(checkpoint: Checkpoint, prefix: str) -> None:
    """Raise :class:`CheckpointError` if the file records a reason why the LSTM at ``prefix``
    cannot be ported faithfully (a Keras ``hard_sigmoid`` gate, ``go_backwards``, ...)."""
    problem = checkpoint.lstm_info.get(prefix, {}).get("problem")
    if problem:
        raise CheckpointError(f"{name(checkpoint.path)}: {problem}")


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read every tensor of a checkpoint file, safely (no code from the file runs).

    **Arguments:**

    - ``path``: a ``.pt``/``.pth``/``.bin``/``.ckpt`` file (``torch.save`` of a state dict or
      of a training checkpoint, nested to any depth; or a ``torch.jit.save`` TorchScript
      archive), a ``.safetensors`` file, a sharded checkpoint's ``*.index.json`` (Hugging Face
      layout: its ``weight_map`` names the shard of each key, each inside the index's
      directory), an ``.onnx`` model (its ``LSTM`` nodes in torch's layout, see
      :mod:`jaxlstm.formats.onnx`) or an ``.npz`` (``numpy.savez``, or a jax-rnn file written
      by ``jaxlstm convert``), a Keras ``.h5``/``.hdf5`` (Keras 1, 2, tf.keras, Keras 3
      ``.weights.h5``) or ``.keras`` archive (see :mod:`jaxlstm.formats.keras_h5`; needs h5py).
      Other suffixes are recognised by their content.

    Nested dicts, lists and tuples are flattened to dotted keys; when one container holds every
    tensor (``{'epoch': 3, 'state_dict': {...}}``) its key is dropped and reported in
    ``Checkpoint.wrapper``. Values become numpy arrays of the stored dtype (``bfloat16`` via
    ``ml_dtypes``). Raises :class:`CheckpointError` for a missing, truncated, corrupt, crafted
    or unsafe file, naming the file, the key or member, and what was wrong.
    """
    path = Path(path)
    _check_regular_file(path)
    try:
        return _read(path)
    except CheckpointError:
        raise
    except (ValueError, OSError) as error:  # a format's own check, or the file system's
        message = str(error)
        named = os.fspath(path) in message
        raise CheckpointError(message if named else f"{name(path)}: {message}") from error
    except RecursionError as error:
        raise CheckpointError(f"{name(path)} nests too deeply to be a checkpoint") from error


def _check_regular_file(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError as error:
        raise CheckpointError(f"checkpoint file {name(path)} does not exist") from error
    if not stat.S_ISREG(mode):
        what = "a directory" if stat.S_ISDIR(mode) else "not a regular file (a pipe or device)"
        raise CheckpointError(f"checkpoint file {name(path)} is {what}; give the path of the "
                              "checkpoint file itself")


def _read(path: Path) -> Checkpoint:
    from jaxlstm.readers import hdf5, safetensors, torchscript
    from jaxlstm.readers.torch_pickle import read_torch

    if path.name.endswith(".index.json"):
        return Checkpoint(path, _read_sharded(path), format="sharded")
    if path.suffix == ".onnx":
        from jaxlstm.formats.onnx import read_onnx_checkpoint

        state, info = read_onnx_checkpoint(path)
        return Checkpoint(path, state, format="onnx", lstm_info=info)
    if path.suffix == ".npz":
        return Checkpoint(path, _read_npz(path), format="npz")
    if path.suffix in KERAS_SUFFIXES or hdf5.is_hdf5(path):
        from jaxlstm.formats.keras_h5 import read_keras_file

        state, info = read_keras_file(path)
        return Checkpoint(path, state, format="keras", lstm_info=info)
    if safetensors.is_safetensors(path, TORCH_SUFFIXES):
        return Checkpoint(path, safetensors.read_safetensors(path), format="safetensors")
    if torchscript.is_torchscript(path):
        return _unwrap(path, torchscript.read_torchscript(path), "torchscript")
    return _unwrap(path, read_torch(path), "torch")


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The tensors in ``path`` as ``{dotted key: numpy array}`` (see :func:`read_checkpoint`)."""
    return read_checkpoint(path).state_dict


def _read_sharded(path: Path) -> dict[str, np.ndarray]:
    """A Hugging Face sharded checkpoint: the index maps each key to its shard file, which must
    lie in the index's directory and be a tensor file (not another index)."""
    if path.stat().st_size > MAX_INDEX_BYTES:
        raise CheckpointError(f"{name(path)} is larger than any sharded-checkpoint index "
                              f"({MAX_INDEX_BYTES >> 20} MiB); it is not one")
    try:
        weight_map = json.loads(path.read_bytes())["weight_map"]
        if not isinstance(weight_map, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
            raise TypeError("weight_map is not {key: file name}")
    except (ValueError, KeyError, TypeError, RecursionError) as error:
        raise CheckpointError(
            f"{name(path)} is not a sharded-checkpoint index ({type(error).__name__}: {error}): "
            'expected JSON with a "weight_map" {key: shard file} (as Hugging Face writes '
            "model.safetensors.index.json)"
        ) from error
    arrays: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = confined(path.parent, shard, source=path, what="shard")
        if shard_path.name.endswith(".index.json") or shard_path == path.resolve():
            raise CheckpointError(f"{name(path)} names shard {shard!r}, which is an index, not a "
                                  "tensor file; an index lists the shards themselves")
        if not shard_path.is_file():
            raise CheckpointError(
                f"shard {shard!r} listed in {name(path)} does not exist beside it; copy every "
                "shard file into the index's directory"
            )
        arrays.update(read_checkpoint(shard_path).state_dict)
    missing = sorted(set(weight_map) - set(arrays))
    if missing:
        raise CheckpointError(
            f"{name(path)} lists keys that its shards do not hold: {', '.join(missing[:5])}"
        )
    return arrays


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """A jax-rnn ``.npz`` (as ``jaxlstm convert`` writes it), else a plain ``numpy.savez``."""
    from jaxlstm.formats.jax_rnn import SIZE_KEYS, from_npz_arrays
    from jaxlstm.readers.npz import read_npz

    arrays = read_npz(path)
    if "weights" in arrays and set(arrays) >= set(SIZE_KEYS):
        return from_npz_arrays(arrays, name(path))
    return arrays


def _unwrap(path: Path, obj: Any, fmt: str) -> Checkpoint:
    """The tensors of a loaded object, flattened; a single container of them is dropped."""
    if not isinstance(obj, (Mapping, list, tuple)):
        raise CheckpointError(
            f"{name(path)} holds a {type(obj).__name__}, not a state dict; save "
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
            f"{name(path)} holds no tensors (top-level keys: {listed or 'none'}); save the "
            "model's weights with torch.save(model.state_dict(), path)"
        )
    state = {}
    for key, value in arrays.items():
        try:
            state[key] = to_numpy(value, key)
        except (TypeError, RuntimeError) as error:
            raise CheckpointError(
                f"{name(path)}: tensor {key!r} cannot be read as an array ({error})"
            ) from error
    return Checkpoint(path, state, ".".join(chain) or None, tuple(skipped), fmt)
