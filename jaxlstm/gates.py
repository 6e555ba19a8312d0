"""Gate activations: what an LSTM's gates i, f, o compute. torch's is always ``"sigmoid"``;
:class:`HardSigmoid` is Keras' and ONNX's ``clip(alpha * x + beta, 0, 1)``.

A value here is a plain, hashable description (part of ``LSTMConfig``, a static argument of the
loops); the math is the cell's (``jaxlstm.functional.cells.hard_sigmoid``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class HardSigmoid:
    """The gate activation ``clip(alpha * x + beta, 0, 1)``; hashable, a static argument.

    **Arguments:**

    - ``alpha``: the slope (a finite, nonzero number); Keras 2 0.2, Keras 3 1/6.
    - ``beta``: the offset (a finite number); 0.5 in Keras and ONNX's default.

    Use :data:`KERAS2` / :data:`KERAS3` for Keras' two definitions.
    """

    alpha: float
    beta: float = 0.5

    def __post_init__(self) -> None:
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) \
                    or not math.isfinite(value):
                raise ValueError(f"HardSigmoid {name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.alpha == 0:
            raise ValueError("HardSigmoid alpha must be nonzero (alpha=0 makes a constant gate)")

    def __str__(self) -> str:
        return f"hard_sigmoid(alpha={self.alpha:.10g}, beta={self.beta:.10g})"


KERAS2 = HardSigmoid(0.2, 0.5)
"""Keras <= 2.x and tf.keras: ``clip(0.2 x + 0.5, 0, 1)``."""
KERAS3 = HardSigmoid(1.0 / 6.0, 0.5)
"""Keras 3: ``clip(x / 6 + 0.5, 0, 1)``."""


def check_gate_activation(gate_activation: object) -> Any:
    """``gate_activation`` as the config holds it: ``"sigmoid"`` (torch's) or a
    :class:`HardSigmoid`; anything else raises, naming
    the argument and what it takes."""
    if gate_activation == "sigmoid" or isinstance(gate_activation, HardSigmoid):
        return gate_activation
    hint = ""
    if isinstance(gate_activation, str) and "hard" in gate_activation.lower():
        hint = (": Keras 2 (0.2 x + 0.5) and Keras 3 (x / 6 + 0.5) define hard_sigmoid "
                "differently, so name the constants: jaxlstm.HardSigmoid(0.2, 0.5) or "
                "jaxlstm.HardSigmoid(1 / 6, 0.5)")
    raise ValueError(
        f"gate_activation must be 'sigmoid' (torch's) or jaxlstm.HardSigmoid(alpha, beta), "
        f"got {gate_activation!r}{hint}")
