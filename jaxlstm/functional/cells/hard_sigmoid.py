"""LSTM cells whose gates are a hard sigmoid: Keras 2 / tf.keras, Keras 3 and ONNX
``HardSigmoid``.

The gates i, f, o are ``hard_sigmoid(z) = clip(alpha * z + beta, 0, 1)`` instead of torch's
``sigmoid(z)``; ``g``, the memory update and ``h`` are torch's (tanh)::

    c' = hs(f) * c + hs(i) * tanh(g)
    h' = hs(o) * tanh(c')

Who uses which constants:

- Keras <= 2.x and tf.keras (``recurrent_activation="hard_sigmoid"``, the default of every
  Keras LSTM up to 2.2): ``alpha = 0.2``, ``beta = 0.5`` (:data:`jaxlstm.gates.KERAS2`).
- Keras 3: ``alpha = 1/6``, ``beta = 0.5`` (``relu6(x + 3) / 6``, :data:`jaxlstm.gates.KERAS3`).
- ONNX ``LSTM`` with ``activations=[HardSigmoid, Tanh, Tanh]``: the node's ``activation_alpha``
  and ``activation_beta`` (ONNX's defaults are 0.2 and 0.5).

The derivative at the kinks is TensorFlow's: Keras 2 and tf.keras compute ``hard_sigmoid`` as
``tf.clip_by_value(alpha * x + beta, 0, 1)``, whose gradient passes wherever the clipped value
``u = alpha * x + beta`` is not strictly outside ``[0, 1]`` (TF's ``ClipByValue`` gradient masks
``u < 0`` and ``u > 1`` only). So ``hs'(x) = alpha`` for ``0 <= u <= 1``, the kinks included,
and 0 elsewhere. (Keras 3 on JAX differentiates ``jax.nn.relu6``, which gives 0 at the kinks;
the two differ only on a set of measure zero, never reached by a random input.)

Cost, measured on a 2-core CPU (T=100, N=32, I=128, H=256, float32, fwd+bwd): ~4.5x torch's
sigmoid cell in the same run, almost all in the recording forward loop: XLA fuses the cheap
affine gates into each of their consumers, which then all read the step's row of input
projections that the record overwrites, so XLA copies that buffer every step. The forward pass
alone (no recording) is ~1.25x, the backward loop the same as the sigmoid cell's.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from jaxlstm.functional.cells.base import Cell
from jaxlstm.gates import KERAS2, HardSigmoid


def _gate_columns(hidden: int) -> np.ndarray:
    """True on the i, f, o rows of the 4H pre-activations, False on g (a literal constant)."""
    return np.repeat(np.array([True, True, False, True]), hidden)


@dataclasses.dataclass(frozen=True)
class HardSigmoidLSTM(Cell):
    """An LSTM cell with hard-sigmoid gates i, f, o (gate order, weights and biases torch's).

    The record is ``u`` (..., 4H): ``alpha * z + beta`` on the i, f, o rows (before clipping,
    so the derivative knows which side of a kink each gate is on) and ``tanh(z)`` on the g rows.
    """

    gate: HardSigmoid = KERAS2

    gates = 4
    memory = True

    def _affine(self, hidden: int, dtype) -> tuple[np.ndarray, np.ndarray]:
        """Per-row scale and offset that turn the pre-activations into ``u``'s gate rows."""
        columns = _gate_columns(hidden)
        scale = np.where(columns, self.gate.alpha, 1.0).astype(dtype)
        return scale, np.where(columns, self.gate.beta, 0.0).astype(dtype)

    def _parts(self, u):
        """``(hs(i), hs(f), tanh(g), hs(o))`` from the record ``u``."""
        u_i, u_f, g, u_o = jnp.split(u, 4, axis=-1)
        return (jnp.clip(u_i, 0.0, 1.0), jnp.clip(u_f, 0.0, 1.0), g, jnp.clip(u_o, 0.0, 1.0))

    def activate(self, gx, gh, h, c):
        z = gx + gh
        scale, offset = self._affine(c.shape[-1], z.dtype)
        u = jnp.where(_gate_columns(c.shape[-1]), z * scale + offset, jnp.tanh(z))
        i, f, g, o = self._parts(u)
        c_new = f * c + i * g
        return o * jnp.tanh(c_new), c_new, (u,)

    def activate_vjp(self, record, h, c, d_out, d_c_new):
        (u,) = record
        i, f, g, o = self._parts(u)
        tanh_c = jnp.tanh(f * c + i * g)
        d_c_total = d_c_new + d_out * o * (1.0 - tanh_c * tanh_c)
        upstream = jnp.concatenate([d_c_total, d_c_total, d_c_total, d_out], axis=-1)
        partner = jnp.concatenate([g, c, i, tanh_c], axis=-1)
        # hs'(z) = alpha where 0 <= u <= 1 (TF's clip_by_value gradient), tanh'(z) on g's rows.
        columns = _gate_columns(c.shape[-1])
        inside = (u >= 0.0) & (u <= 1.0)
        slope = jnp.where(columns, jnp.where(inside, self.gate.alpha, 0.0).astype(u.dtype),
                          1.0 - u * u)
        d_gates = upstream * partner * slope
        return d_gates, d_gates, None, d_c_total * f
