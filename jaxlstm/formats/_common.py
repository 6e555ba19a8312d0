"""What the foreign formats share: reading torch-named weights, the one-bias rule, the checks."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np

from jaxlstm.arrays import check_weights, to_numpy
from jaxlstm.config import LSTMCellConfig, LSTMConfig, param_suffix


class Direction(NamedTuple):
    """One layer in one direction: torch's ``weight_ih``/``weight_hh``/biases of that cell."""

    weight_ih: np.ndarray  # (4H, I_layer)
    weight_hh: np.ndarray  # (4H, H)
    bias_ih: np.ndarray | None  # (4H,) or None without bias
    bias_hh: np.ndarray | None


_CELL_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def directions(
    state_dict: Mapping[str, Any], *, fmt: str
) -> tuple[LSTMConfig | LSTMCellConfig, list[list[Direction]]]:
    """``[layer][direction]`` weights of an ``nn.LSTM`` or ``nn.LSTMCell`` state dict.

    Keys and shapes are checked first. A cell is returned as one layer, one direction. None of
    the foreign formats has torch's projection, so a ``proj_size`` LSTM raises, naming ``fmt``.
    """
    config, arrays = check_weights(state_dict)
    if isinstance(config, LSTMCellConfig):
        return config, [[Direction(*(arrays.get(k) for k in _CELL_NAMES))]]
    if config.proj_size:
        raise ValueError(
            f"{fmt} has no projection (torch's weight_hr_l*, proj_size={config.proj_size}); "
            "this LSTM cannot be exported to it without losing the projection"
        )
    layers = []
    for layer in range(config.num_layers):
        layers.append([
            Direction(*(arrays.get(name + param_suffix(layer, d)) for name in _CELL_NAMES))
            for d in range(config.num_directions)
        ])
    return config, layers


def single_cell(state_dict: Mapping[str, Any], *, fmt: str) -> Direction:
    """The weights of a cell, or of a 1-layer unidirectional LSTM without projection.

    Anything larger raises, naming ``fmt``: a single-cell format holds one layer in one
    direction.
    """
    config, layers = directions(state_dict, fmt=fmt)
    if len(layers) > 1 or len(layers[0]) > 1:
        raise ValueError(
            f"{fmt} holds one LSTM cell (one layer, one direction); this LSTM has "
            f"num_layers={config.num_layers}, bidirectional={config.bidirectional}. Export a "
            "1-layer unidirectional LSTM or an LSTMCell"
        )
    return layers[0][0]


def one_bias(cell: Direction, *, fmt: str, merge_biases: bool) -> np.ndarray | None:
    """The single bias of a one-bias format: ``bias_ih + bias_hh`` (``None`` without bias).

    torch adds both biases, so their sum gives the same outputs but the two cannot be told
    apart afterwards. The sum is taken when ``merge_biases=True`` or when one of them is all
    zeros (nothing is lost then, e.g. weights that came from a one-bias format); otherwise this
    raises, naming ``fmt``.
    """
    if cell.bias_ih is None or cell.bias_hh is None:
        return None
    if merge_biases or not np.any(cell.bias_hh) or not np.any(cell.bias_ih):
        return cell.bias_ih + cell.bias_hh
    raise ValueError(
        f"{fmt} holds one bias per gate, but these torch weights have two (bias_ih and bias_hh, "
        "both non-zero). Pass merge_biases=True to store "
        "their sum, which gives the same outputs; importing it back then yields bias_ih = the "
        "sum and bias_hh = 0"
    )


def split_bias(bias: Any) -> dict[str, np.ndarray]:
    """A one-bias format's bias as torch's pair: ``bias_ih`` = the bias, ``bias_hh`` = zeros."""
    bias_ih = to_numpy(bias, "bias")
    return {"bias_ih": bias_ih, "bias_hh": np.zeros_like(bias_ih)}


def torch_names(cell: Mapping[str, np.ndarray], *, layer: int, direction: int = 0) -> dict:
    """A cell's ``{weight_ih: ...}`` renamed for one layer and direction of an ``nn.LSTM``."""
    return {name + param_suffix(layer, direction): value for name, value in cell.items()}


def one_dtype(arrays: Iterable[Any], *, fmt: str) -> np.dtype:
    """The single dtype of ``arrays``; a format that stores one dtype refuses a mix."""
    dtypes = {str(np.asarray(a).dtype) for a in arrays}
    if len(dtypes) != 1:
        raise ValueError(
            f"{fmt} stores all weights in one dtype, but these mix {', '.join(sorted(dtypes))}; "
            "convert them to one dtype first"
        )
    return np.dtype(dtypes.pop())
