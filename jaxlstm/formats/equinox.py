"""Equinox ``eqx.nn.LSTMCell`` <-> torch-named weights.

Equinox's layout (``equinox/nn/_rnn.py``): ``weight_ih (4H, I)`` and ``weight_hh (4H, H)``
exactly like torch, gates i, f, g, o, one ``bias (4H,)`` (``None`` with ``use_bias=False``),
state ``(h, c)``, unbatched (``jax.vmap`` it for a batch).

Equinox keeps one bias: importing puts it in ``bias_ih`` with zeros in ``bias_hh``; exporting
torch's two biases needs ``merge_biases=True`` unless one of them is zero. A cell is one layer
in one direction, so multi-layer, bidirectional and ``proj_size`` LSTMs raise.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlstm.arrays import resolve_param_dtype, to_numpy
from jaxlstm.config import check_params
from jaxlstm.formats._common import one_bias, single_cell, split_bias

if TYPE_CHECKING:  # the modules are built only when asked for, never to read a file
    from jaxlstm.nnx import LSTMCell

FMT = "an Equinox LSTMCell"


def _eqx() -> Any:
    try:
        import equinox
    except ImportError as error:
        raise ImportError("the Equinox format needs equinox: pip install equinox") from error
    return equinox


def from_equinox_cell(cell: Any) -> dict[str, np.ndarray]:
    """torch ``nn.LSTMCell`` weights from an ``equinox.nn.LSTMCell``.

    **Arguments:**

    - ``cell``: the Equinox cell.

    Returns ``weight_ih (4H, I)``, ``weight_hh (4H, H)`` and, with a bias, ``bias_ih`` (Equinox's
    bias) and ``bias_hh`` (zeros).
    """
    eqx = _eqx()
    if not isinstance(cell, eqx.nn.LSTMCell):
        raise TypeError(f"expected an equinox.nn.LSTMCell, got {type(cell).__name__}")
    arrays = {"weight_ih": to_numpy(cell.weight_ih, "weight_ih"),
              "weight_hh": to_numpy(cell.weight_hh, "weight_hh")}
    hidden, input_size = cell.hidden_size, cell.input_size
    expected = {"weight_ih": (4 * hidden, input_size), "weight_hh": (4 * hidden, hidden)}
    if cell.bias is not None:
        arrays["bias"] = to_numpy(cell.bias, "bias")
        expected["bias"] = (4 * hidden,)
    check_params(arrays, expected, what="Equinox LSTMCell")
    if "bias" in arrays:
        arrays.update(split_bias(arrays.pop("bias")))
    return arrays


def to_equinox_cell(state_dict: Mapping[str, Any], *, merge_biases: bool = False) -> Any:
    """An ``equinox.nn.LSTMCell`` holding torch-named weights.

    **Arguments:**

    - ``state_dict``: an ``nn.LSTMCell``, or a 1-layer unidirectional ``nn.LSTM`` without
      projection.
    - ``merge_biases``: store ``bias_ih + bias_hh`` as Equinox's one bias.

    The cell's dtype is the weights' dtype.
    """
    eqx = _eqx()
    cell = single_cell(state_dict, fmt=FMT)
    bias = one_bias(cell, fmt=FMT, merge_biases=merge_biases)
    arrays = {"weight_ih": cell.weight_ih, "weight_hh": cell.weight_hh}
    if bias is not None:
        arrays["bias"] = bias
    dtype = resolve_param_dtype(arrays, None)
    gates, input_size = cell.weight_ih.shape
    template = eqx.nn.LSTMCell(input_size, gates // 4, use_bias=bias is not None, dtype=dtype,
                               key=jax.random.key(0))
    values = {name: jnp.asarray(value, dtype) for name, value in arrays.items()}
    result = eqx.tree_at(lambda c: (c.weight_ih, c.weight_hh), template,
                         (values["weight_ih"], values["weight_hh"]))
    if bias is not None:
        result = eqx.tree_at(lambda c: c.bias, result, values["bias"])
    return result


def equinox_cell_to_jaxlstm(cell: Any, **kwargs: Any) -> LSTMCell:
    """A :class:`jaxlstm.LSTMCell` with an Equinox cell's weights (``kwargs`` go to
    :func:`jaxlstm.nnx.from_weights`)."""
    from jaxlstm.nnx import LSTMCell, from_weights

    model = from_weights(from_equinox_cell(cell), **kwargs)
    assert isinstance(model, LSTMCell)
    return model


def write_equinox(
    state_dict: Mapping[str, Any], path: str | os.PathLike[str], *, merge_biases: bool = False
) -> None:
    """Save with ``eqx.tree_serialise_leaves``.

    Load with ``eqx.tree_deserialise_leaves(path, eqx.nn.LSTMCell(I, H, key=...))`` (same sizes,
    ``use_bias`` and dtype).
    """
    eqx = _eqx()
    eqx.tree_serialise_leaves(os.fspath(path), to_equinox_cell(state_dict,
                                                              merge_biases=merge_biases))
