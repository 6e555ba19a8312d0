"""Schedules: how the layers run, never what they compute. Each is a small validated object.

- :class:`Layered` (the default): layer after layer, both directions of a layer in one loop.
- :class:`Remat`: the same, with the backward pass recomputing the forward a chunk of steps at
  a time, so that activation memory grows with the chunk, not with the sequence.
- :class:`Wavefront`: stacked unidirectional layers in one loop of ``T + L - 1`` iterations.

A schedule's knobs are checked where it is built, with errors that name the argument; whether it
applies to an LSTM is checked once more against its configuration (:func:`resolve`). The
modules' ``unroll``, ``remat`` and ``wavefront`` arguments are shorthand for these objects
(:func:`from_arguments`).
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import numpy as np

from jaxlstm.config import LSTMConfig
from jaxlstm.functional.carriers import Schedule
from jaxlstm.functional.chunks import DEFAULT_CHUNK_ROWS


def _positive(name: str, value: Any) -> None:
    """torch's wording for a count argument that is not a positive ``int``."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be greater than zero, got {value}")


@dataclasses.dataclass(frozen=True)
class Layered:
    """Layer after layer; both directions of a bidirectional layer advance in one loop.

    **Arguments:**

    - ``unroll``: unroll factor of the forward recurrence loop (default 1).
    - ``chunk_rows``: the forward pass alone (no derivative) projects the input about this many
      rows (steps x batch) at a time: enough for the GEMM to run at full speed, few enough that
      the projections of a long sequence do not all exist at once (default 1024).
    """

    unroll: int = 1
    chunk_rows: int = DEFAULT_CHUNK_ROWS

    def __post_init__(self) -> None:
        _positive("unroll", self.unroll)
        _positive("chunk_rows", self.chunk_rows)


@dataclasses.dataclass(frozen=True)
class Remat:
    """:class:`Layered`, with the backward pass keeping only the states entering each chunk of
    ``chunk`` steps and recomputing that chunk's activations from them.

    **Arguments:**

    - ``chunk``: steps per chunk; ``None`` (default) for about ``sqrt(T)``.
    - ``unroll``: unroll factor of the forward recurrence loop (default 1).
    """

    chunk: int | None = None
    unroll: int = 1

    def __post_init__(self) -> None:
        if self.chunk is not None:
            _positive("remat chunk", self.chunk)
        _positive("unroll", self.unroll)


@dataclasses.dataclass(frozen=True)
class Wavefront:
    """Two or more stacked unidirectional layers in one loop: layer ``l`` at step ``t`` in the
    same iteration as layer ``l + 1`` at step ``t - 1`` (``T + L - 1`` sequential steps instead
    of ``L * T``; the same numbers). On CPU the layer-by-layer schedule is faster; this one is
    meant for accelerators, where each step is short. A one-layer LSTM runs its one layer (the
    same loop either way); a bidirectional one is an error.

    **Arguments:**

    - ``unroll``: unroll factor of the loop (default 1).
    """

    unroll: int = 1

    def __post_init__(self) -> None:
        _positive("unroll", self.unroll)


Strategy = Layered | Remat | Wavefront


def from_arguments(unroll: int = 1, remat: bool | int = False,
                   chunk_rows: int = DEFAULT_CHUNK_ROWS, wavefront: bool = False) -> Strategy:
    """The schedule that the modules' shorthand arguments name.

    ``remat``: ``True`` (chunks of about ``sqrt(T)`` steps), a chunk length, or ``False``;
    ``wavefront``: ``True`` or ``False``. Both at once is an error: remat runs layer by layer.
    """
    if not isinstance(wavefront, (bool, np.bool_)):
        raise TypeError(f"wavefront must be True or False, got {wavefront!r}")
    if remat is None or (not isinstance(remat, (bool, np.bool_)) and remat == 0):
        remat = False  # 0 and None: off, as False
    if not isinstance(remat, (bool, np.bool_, numbers.Integral)) or remat < 0:
        raise ValueError(f"remat must be True, False or a positive chunk length, got {remat!r}")
    if wavefront and remat is not False:
        raise ValueError("wavefront=True and remat cannot be combined: remat recomputes the "
                         "layers one after another; choose one of them")
    if wavefront:
        return Wavefront(unroll)
    if remat is not False:
        return Remat(None if remat is True else int(remat), unroll)
    return Layered(unroll, chunk_rows)


def resolve(strategy: Strategy, config: LSTMConfig, steps: int, precision: Any) -> Schedule:
    """The loops' :class:`~jaxlstm.functional.carriers.Schedule` for ``strategy`` on an LSTM of
    ``config`` over ``steps`` steps; raises where the strategy cannot apply."""
    if not isinstance(strategy, (Layered, Remat, Wavefront)):
        raise TypeError("schedule must be jaxlstm.functional.Layered(...), Remat(...) or "
                        f"Wavefront(...), got {type(strategy).__name__}")
    if isinstance(strategy, Wavefront):
        if config.bidirectional:
            raise ValueError("the wavefront schedule runs stacked unidirectional layers; this "
                             "LSTM is bidirectional: use the default (layer-by-layer) schedule")
        return Schedule(precision, int(strategy.unroll), 0, DEFAULT_CHUNK_ROWS,
                        config.num_layers > 1)
    if isinstance(strategy, Remat):
        chunk = max(1, round(steps**0.5)) if strategy.chunk is None else int(strategy.chunk)
        return Schedule(precision, int(strategy.unroll), chunk, DEFAULT_CHUNK_ROWS)
    return Schedule(precision, int(strategy.unroll), 0, int(strategy.chunk_rows))
