"""Cells: the math of one recurrence step, the unit of extension.

A cell is a small frozen dataclass (hashable, so it is a static argument of the loops) that
holds the step's equations and their one hand-written derivative; every loop of the package
(recurrence, tangent, backward, wavefront, remat) runs any :class:`Cell`. A new recurrent
network is one new module here.

- ``base``: :class:`Cell`, the interface the loops call.
- ``lstm``: :class:`~jaxlstm.functional.cells.lstm.LSTM`, torch's LSTM gates (i, f, g, o).
- ``hard_sigmoid``: :class:`~jaxlstm.functional.cells.hard_sigmoid.HardSigmoidLSTM`, the same
  LSTM with ``clip(alpha * x + beta, 0, 1)`` gates (Keras, ONNX ``HardSigmoid``).
"""

from typing import Any

from jaxlstm.functional.cells.base import Cell
from jaxlstm.functional.cells.hard_sigmoid import HardSigmoidLSTM
from jaxlstm.functional.cells.lstm import LSTM, LSTM_CELL

__all__ = ["LSTM", "LSTM_CELL", "Cell", "HardSigmoidLSTM", "lstm_cell_for"]


def lstm_cell_for(gate_activation: Any) -> Cell:
    """The LSTM cell whose gates are ``gate_activation`` (a config's): torch's
    :data:`LSTM_CELL` for ``"sigmoid"``, else a :class:`HardSigmoidLSTM`."""
    return LSTM_CELL if gate_activation == "sigmoid" else HardSigmoidLSTM(gate_activation)
