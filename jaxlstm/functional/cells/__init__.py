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

from jaxlstm.functional.cells.base import Cell
from jaxlstm.functional.cells.hard_sigmoid import HardSigmoid, HardSigmoidLSTM
from jaxlstm.functional.cells.lstm import LSTM, LSTM_CELL

__all__ = ["LSTM", "LSTM_CELL", "Cell", "HardSigmoid", "HardSigmoidLSTM"]
