"""The LSTM cell's math, once: the gate equations and their one hand-written derivative.

``cell_activate`` is the only place the gate equations live; ``cell_activate_vjp`` is their
only derivative (:meth:`LSTM.activate_jvp` is its transpose). :class:`LSTM` presents them to
the loops as a :class:`~jaxlstm.functional.cells.base.Cell`; :func:`cell_update` is one step.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxlstm.functional.carriers import Array, State
from jaxlstm.functional.cells.base import Cell, step

# sigmoid(x) = 0.5 * tanh(x / 2) + 0.5, so one tanh over all 4H pre-activations computes every
# gate once the i, f and o rows are scaled by 1/2. Scaling by a power of two is exact; the
# sequence path applies it inside each step, fused with the step's other elementwise work, so
# that the weights are used as they are (no scaled copies to make, or to differentiate through).
_GATE_SCALE = (0.5, 0.5, 1.0, 0.5)


def gate_scale(hidden_size: int, dtype: Any) -> Array:
    """Per-row factors (4H,) that turn torch's gate pre-activations into :func:`cell_activate`'s."""
    return jnp.asarray(_scale(hidden_size, dtype))


def _scale(hidden_size: int, dtype: Any) -> np.ndarray:
    """:func:`gate_scale` as a NumPy constant: inside a loop it is a literal of the loop body,
    with nothing to compute or to carry."""
    return np.repeat(np.asarray(_GATE_SCALE), hidden_size).astype(dtype)


def _sigmoid_from_tanh(t: Array) -> Array:
    """``sigmoid(x)`` from ``t = tanh(x / 2)``."""
    return 0.5 * t + 0.5


def cell_activate(scaled_gates: Array, c: Array) -> tuple[Array, Array, Array]:
    """The LSTM state update from scaled pre-activations (..., 4H) and cell state ``c`` (..., H).

    This is the only place the gate equations live. ``scaled_gates`` are torch's
    ``x W_ih^T + b_ih + h W_hh^T + b_hh`` times :func:`gate_scale`. Returns ``(h, c', t)`` with
    ``h`` before any projection and ``t = tanh(scaled_gates)`` (what the derivatives need).
    """
    t = jnp.tanh(scaled_gates)
    c_new = cell_state(t, c)
    t_o = jnp.split(t, 4, axis=-1)[3]
    return _sigmoid_from_tanh(t_o) * jnp.tanh(c_new), c_new, t


def cell_state(t: Array, c: Array) -> Array:
    """``c' = sigmoid(f) * c + sigmoid(i) * tanh(g)`` from ``t = tanh(scaled_gates)``; the
    derivative loops recompute it from the saved ``t`` rather than saving ``c'``."""
    t_i, t_f, g, _ = jnp.split(t, 4, axis=-1)
    return _sigmoid_from_tanh(t_f) * c + _sigmoid_from_tanh(t_i) * g


def cell_activate_vjp(
    t: Array, c_new: Array, c: Array, dh: Array, dc_new: Array
) -> tuple[Array, Array]:
    """Reverse of :func:`cell_activate`: cotangents of ``(scaled_gates, c)`` from those of
    ``(h, c')``, using the saved ``t = tanh(scaled_gates)``. The one hand-written derivative of
    the gate equations (the cell's JVP is its transpose)."""
    t_i, t_f, g, t_o = jnp.split(t, 4, axis=-1)
    tanh_c = jnp.tanh(c_new)
    dc_total = dc_new + dh * _sigmoid_from_tanh(t_o) * (1.0 - tanh_c * tanh_c)
    # d gate = upstream * partner * tanh'(scaled) * scale, written over all 4H columns at once
    # so that the step compiles to one fused loop rather than four pieces and a concatenation.
    upstream = jnp.concatenate([dc_total, dc_total, dc_total, dh], axis=-1)
    partner = jnp.concatenate([g, c, _sigmoid_from_tanh(t_i), tanh_c], axis=-1)
    scale = _scale(c.shape[-1], t.dtype)
    d_scaled = upstream * partner * (1.0 - t * t) * scale
    return d_scaled, dc_total * _sigmoid_from_tanh(t_f)


def cell_update(gates: Array, c: Array) -> State:
    """One LSTM step from torch's pre-activations ``gates`` (..., 4H) and ``c`` (..., H).

    Returns ``(h, c')``: ``c' = sigmoid(f) * c + sigmoid(i) * tanh(g)``,
    ``h = sigmoid(o) * tanh(c')``. Differentiated (both modes) by the same code as the
    sequence path.
    """
    return step(LSTM_CELL, gates, jnp.zeros_like(gates), None, c)


@dataclasses.dataclass(frozen=True)
class LSTM(Cell):
    """torch's LSTM cell: gates i, f, g, o; the memory is ``c``; ``b_ih + b_hh`` pre-summed.
    The record is ``t = tanh(scaled gates)`` (what :func:`cell_activate_vjp` reads)."""

    gates = 4
    memory = True

    def activate(self, gx, gh, h, c):
        out, c_new, t = cell_activate((gx + gh) * _scale(c.shape[-1], gx.dtype), c)
        return out, c_new, (t,)

    def activate_vjp(self, record, h, c, d_out, d_c_new):
        (t,) = record
        d_scaled, d_c = cell_activate_vjp(t, cell_state(t, c), c, d_out, d_c_new)
        d_gates = d_scaled * _scale(c.shape[-1], t.dtype)
        return d_gates, d_gates, None, d_c


LSTM_CELL = LSTM()
