"""``jax.experimental.rnn`` flat LSTM weights <-> torch-named weights.

``jax.experimental.rnn.lstm`` (cuDNN) and ``lstm_ref`` take every weight in one flat vector:
for each pseudo-layer ``layer * D + direction`` its ``W_ih`` then ``W_hh``, and after all of
them each pseudo-layer's ``b_ih`` then ``b_hh`` — torch's shapes, gate order and two biases
(``jax/experimental/rnn.py``, ``unpack_lstm_weights``). Layers and directions carry over; there
is no projection, so ``proj_size`` raises; a bias-free LSTM is exported with zero biases (the
same outputs). The vector alone does not say its sizes: keep ``input_size``, ``hidden_size``,
``num_layers`` and ``bidirectional`` with it (:func:`to_jax_rnn` returns them).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from jaxlstm.arrays import to_numpy
from jaxlstm.config import LSTMCellConfig
from jaxlstm.formats._common import directions, one_dtype, torch_names

if TYPE_CHECKING:  # the modules are built only when asked for, never to read a file
    from jaxlstm.nnx import LSTM

FMT = "jax.experimental.rnn"
SIZE_KEYS = ("input_size", "hidden_size", "num_layers", "bidirectional")
"""The entries of a :func:`write_npz` file besides ``weights``."""


def from_jax_rnn(
    weights: Any, input_size: int, hidden_size: int, num_layers: int = 1,
    bidirectional: bool = False,
) -> dict[str, np.ndarray]:
    """torch ``nn.LSTM`` weights from ``jax.experimental.rnn``'s flat vector.

    **Arguments:**

    - ``weights``: ``(get_num_params_in_lstm(input_size, hidden_size, num_layers,
      bidirectional),)``, e.g. from ``jax.experimental.rnn.init_lstm_weight``.
    - ``input_size``, ``hidden_size``, ``num_layers``, ``bidirectional``: the sizes it was made
      for.
    """
    from jax.experimental import rnn

    flat = to_numpy(weights, "weights")
    expected = rnn.get_num_params_in_lstm(input_size, hidden_size, num_layers, bidirectional)
    if flat.ndim != 1 or flat.size != expected:
        raise ValueError(
            f"{FMT} weights for input_size={input_size}, hidden_size={hidden_size}, "
            f"num_layers={num_layers}, bidirectional={bidirectional} are a vector of {expected} "
            f"values; got shape {flat.shape}. Check the sizes passed with the weights"
        )
    unpacked = rnn.unpack_lstm_weights(flat, input_size, hidden_size, num_layers, bidirectional)
    num_directions = 2 if bidirectional else 1
    state: dict[str, np.ndarray] = {}
    for layer in range(num_layers):
        for direction in range(num_directions):
            pseudo = layer * num_directions + direction
            cell = {name: np.asarray(part[pseudo]) for name, part in
                    zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), unpacked)}
            state.update(torch_names(cell, layer=layer, direction=direction))
    return state


def to_jax_rnn(state_dict: Mapping[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """``jax.experimental.rnn``'s flat weight vector from torch-named weights.

    **Arguments:**

    - ``state_dict``: an ``nn.LSTM`` without projection (any layers and directions), or an
      ``nn.LSTMCell`` (exported as a 1-layer LSTM).

    Returns ``(weights, sizes)`` with ``sizes = dict(input_size=, hidden_size=, num_layers=,
    bidirectional=)``, the keyword arguments ``jax.experimental.rnn.lstm`` needs besides it.
    """
    config, layers = directions(state_dict, fmt=FMT)
    cells = [cell for layer in layers for cell in layer]  # pseudo-layer order
    parts = [w for cell in cells for w in (cell.weight_ih, cell.weight_hh)]
    for cell in cells:
        for bias in (cell.bias_ih, cell.bias_hh):
            # Zero biases compute exactly what a bias-free LSTM computes.
            parts.append(np.zeros_like(cell.weight_ih[:, 0]) if bias is None else bias)
    one_dtype(parts, fmt=FMT)
    weights = np.concatenate([np.ravel(part) for part in parts])
    cell_config = isinstance(config, LSTMCellConfig)
    sizes = {
        "input_size": config.input_size,
        "hidden_size": config.hidden_size,
        "num_layers": 1 if cell_config else config.num_layers,
        "bidirectional": False if cell_config else config.bidirectional,
    }
    return weights, sizes


def jax_rnn_to_jaxlstm(
    weights: Any, input_size: int, hidden_size: int, num_layers: int = 1,
    bidirectional: bool = False, **kwargs: Any,
) -> LSTM:
    """A :class:`jaxlstm.LSTM` with ``jax.experimental.rnn`` weights; ``batch_first=True`` as
    ``jax.experimental.rnn.lstm`` is (``kwargs`` go to :func:`jaxlstm.nnx.from_weights`)."""
    kwargs.setdefault("batch_first", True)
    state = from_jax_rnn(weights, input_size, hidden_size, num_layers, bidirectional)
    from jaxlstm.nnx import LSTM, from_weights

    model = from_weights(state, **kwargs)
    assert isinstance(model, LSTM)
    return model


def write_npz(state_dict: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Save the flat ``weights`` and their sizes in one ``.npz``.

    Read it back with :func:`read_npz`, or ``numpy.load(path)`` and its entries ``weights``,
    ``input_size``, ``hidden_size``, ``num_layers``, ``bidirectional``.
    """
    weights, sizes = to_jax_rnn(state_dict)
    with open(path, "wb") as handle:  # a handle: np.savez would append ".npz" to a path
        np.savez(handle, weights=weights, **{k: np.asarray(v) for k, v in sizes.items()})


def param_count(input_size: int, hidden_size: int, num_layers: int, bidirectional: bool
                ) -> int:
    """How many values the flat vector holds for these sizes (closed form, no loop)."""
    directions = 2 if bidirectional else 1
    per_gate_row = hidden_size + 2  # W_hh row, b_ih and b_hh
    first = directions * 4 * hidden_size * (input_size + per_gate_row)
    later = directions * 4 * hidden_size * (directions * hidden_size + per_gate_row)
    return first + (num_layers - 1) * later


def from_npz_arrays(arrays: Mapping[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    """torch ``nn.LSTM`` weights from the entries of a :func:`write_npz` file.

    Each size must be a positive integer (``bidirectional`` a bool), and together they must
    account for exactly the values in ``weights``, before anything is unpacked.
    """
    missing = [k for k in ("weights", *SIZE_KEYS) if k not in arrays]
    if missing:
        raise ValueError(f"{source} is not a jax.experimental.rnn .npz written by jaxlstm: "
                         f"missing {', '.join(map(repr, missing))}")
    sizes = {}
    for key in SIZE_KEYS:
        value = np.asarray(arrays[key])
        flag = key == "bidirectional"
        if value.shape != () or value.dtype.kind not in "biu" or (
                value not in (0, 1) if flag else value < 1):
            wanted = "a bool" if flag else "a positive integer"
            raise ValueError(f"{source}: {key!r} must be {wanted}, got {value.dtype} "
                             f"{value.tolist() if value.size < 8 else value.shape}")
        sizes[key] = bool(value) if key == "bidirectional" else int(value)
    weights = np.asarray(arrays["weights"])
    expected = param_count(**sizes)
    if weights.ndim != 1 or weights.size != expected:
        raise ValueError(f"{source}: 'weights' holds {weights.size} values of shape "
                         f"{weights.shape}, but {sizes} need a vector of {expected}")
    return from_jax_rnn(weights, **sizes)


def read_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """torch ``nn.LSTM`` weights from a file written by :func:`write_npz`."""
    from jaxlstm.readers.npz import read_npz as read_arrays

    return from_npz_arrays(read_arrays(Path(path)), repr(os.fspath(path)))
