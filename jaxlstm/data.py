"""Padded batches for variable-length sequences, the way ``torch.nn.utils.rnn`` builds them.

A padded batch plus its lengths is what :func:`jaxlstm.functional.lstm` (and the modules) take as
``x, seq_lengths=lengths``; it stands in for torch's ``PackedSequence``:

| torch                                            | jaxlstm                                  |
|--------------------------------------------------|------------------------------------------|
| ``pad_sequence(seqs, batch_first)``              | ``pad_sequences(seqs, batch_first)``     |
| ``lstm(pack_padded_sequence(x, lengths, ...))``  | ``lstm(x, seq_lengths=lengths)``         |
| ``pad_packed_sequence(packed, batch_first)``     | ``from_packed(packed, batch_first)``     |
| ``unpad_sequence(padded, lengths, batch_first)`` | ``unpad_sequences(padded, lengths, ...)``|

``pad_sequences`` and ``from_packed`` return ``(padded, lengths)``.

These run on the host with numpy (input pipelines), so they return numpy arrays.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from jaxlstm.arrays import to_numpy


def pad_sequences(
    sequences: Iterable[Any],
    batch_first: bool = False,
    padding_value: float = 0.0,
    total_length: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Stack sequences of different lengths into one padded array, as torch's ``pad_sequence``.

    **Arguments:**

    - ``sequences``: a non-empty iterable of arrays (numpy, JAX or torch), sequence ``i`` of
      shape ``(L_i, *)``; the trailing dimensions ``*`` and the dtype must agree. An array
      ``(N, L, *)`` is taken as ``N`` sequences of length ``L``, as torch iterates a tensor.
    - ``batch_first``: return ``(N, T, *)`` instead of ``(T, N, *)``.
    - ``padding_value``: the value written past each sequence's end.
    - ``total_length``: pad to this many steps instead of the longest sequence's length (as in
      torch's ``pad_packed_sequence``); a fixed length keeps shapes static under ``jax.jit``.

    **Returns:** ``(padded, lengths)``: ``padded`` of shape ``(T, N, *)`` (or ``(N, T, *)``) with
    ``T = total_length or max L_i``, and ``lengths`` int32 ``(N,)`` holding each ``L_i`` (pass it as
    ``seq_lengths``).
    """
    if hasattr(sequences, "shape") and np.ndim(sequences) > 0:
        # A stacked array of equal-length sequences: torch iterates over its first axis.
        sequences = list(to_numpy(sequences, "sequences"))
    elif not isinstance(sequences, Iterable) or hasattr(sequences, "shape"):
        raise RuntimeError(
            "pad_sequence: Expected iterable for input sequences, but got arg of type: "
            f"{type(sequences)}; pass a list of arrays, one per sequence"
        )
    sequences = list(sequences)
    if len(sequences) == 0:
        raise RuntimeError("received an empty list of sequences; pass at least one sequence")
    arrays = [to_numpy(s, f"sequences[{i}]") for i, s in enumerate(sequences)]
    for i, array in enumerate(arrays):
        if array.ndim == 0:
            raise ValueError(
                f"sequences[{i}] is a scalar; each sequence needs a leading time axis (L_i, *)"
            )
        if array.shape[1:] != arrays[0].shape[1:]:
            raise ValueError(
                f"sequences[{i}] has trailing shape {array.shape[1:]} but sequences[0] has "
                f"{arrays[0].shape[1:]}; all sequences must agree after the time axis"
            )
        if array.dtype != arrays[0].dtype:
            raise TypeError(
                f"sequences[{i}] has dtype {array.dtype} but sequences[0] has {arrays[0].dtype}; "
                "cast them to one dtype first"
            )
    lengths = np.asarray([len(a) for a in arrays], dtype=np.int32)
    num_steps = int(lengths.max())
    if total_length is not None:
        if not isinstance(total_length, (int, np.integer)) or total_length < num_steps:
            raise ValueError(
                f"total_length must be an int at least as large as the longest sequence "
                f"({num_steps}); got {total_length!r}"
            )
        num_steps = int(total_length)
    padded = np.full((len(arrays), num_steps, *arrays[0].shape[1:]), padding_value, arrays[0].dtype)
    for i, array in enumerate(arrays):
        padded[i, : len(array)] = array
    if not batch_first:
        padded = np.ascontiguousarray(np.swapaxes(padded, 0, 1))
    return padded, lengths


def unpad_sequences(padded: Any, lengths: Any, batch_first: bool = False) -> list[np.ndarray]:
    """Split a padded batch back into its sequences, as torch's ``unpad_sequence``.

    **Arguments:**

    - ``padded``: ``(T, N, *)`` (``(N, T, *)`` when ``batch_first``).
    - ``lengths``: int ``(N,)``, each sequence's valid length, at most ``T``.

    **Returns:** a list of ``N`` numpy arrays, sequence ``i`` of shape ``(lengths[i], *)``.
    """
    padded = to_numpy(padded, "padded")
    lengths = to_numpy(lengths, "lengths")
    if padded.ndim < 2:
        raise ValueError(
            f"padded must have a time and a batch axis, (T, N, *) or (N, T, *); got shape "
            f"{padded.shape}"
        )
    if not batch_first:
        padded = np.swapaxes(padded, 0, 1)
    if lengths.shape != (padded.shape[0],) or not np.issubdtype(lengths.dtype, np.integer):
        raise ValueError(
            f"lengths must be an integer array of shape ({padded.shape[0]},), one per sequence; "
            f"got {lengths.dtype} of shape {lengths.shape}"
        )
    bad = [(i, int(n)) for i, n in enumerate(lengths) if not 0 <= n <= padded.shape[1]]
    if bad:
        listed = ", ".join(f"{n} at index {i}" for i, n in bad[:10])
        raise ValueError(f"lengths must lie in [0, {padded.shape[1]}]; got {listed}")
    return [padded[i, : int(n)].copy() for i, n in enumerate(lengths)]


def from_packed(
    packed: Any,
    batch_first: bool = False,
    padding_value: float = 0.0,
    total_length: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A torch ``PackedSequence`` as a padded numpy batch and its lengths.

    Uses torch's own ``pad_packed_sequence``, so the batch comes back in the original
    (unsorted) order of the sequences that were packed.

    **Arguments:**

    - ``packed``: a ``torch.nn.utils.rnn.PackedSequence``.
    - ``batch_first``, ``padding_value``, ``total_length``: as in :func:`pad_sequences`.

    **Returns:** ``(padded, lengths)``: ``(T, N, *)`` (or ``(N, T, *)``) and int32 ``(N,)``.
    """
    from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

    if not isinstance(packed, PackedSequence):
        raise TypeError(
            f"packed must be a torch PackedSequence, got {type(packed).__name__}; build one with "
            "torch.nn.utils.rnn.pack_padded_sequence or pack_sequence"
        )
    padded, lengths = pad_packed_sequence(
        packed, batch_first=batch_first, padding_value=padding_value, total_length=total_length
    )
    return to_numpy(padded), to_numpy(lengths).astype(np.int32)
