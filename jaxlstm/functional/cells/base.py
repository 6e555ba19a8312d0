"""The interface every cell implements, and one step of any cell, differentiable."""

from __future__ import annotations

import abc
import dataclasses
from functools import partial
from typing import ClassVar

import jax
import jax.numpy as jnp

from jaxlstm._linear import linear_map
from jaxlstm.functional.carriers import Array, State
from jaxlstm.functional.sharding import struct_like


@dataclasses.dataclass(frozen=True)
class Cell(abc.ABC):
    """One recurrence step: ``(gx, gh, h, c) -> (out, c')``, and its derivative.

    The loops compute, for each step, ``gx = x W_ih^T (+ b_ih)`` (the input projection, one GEMM
    over all steps before the loop) and ``gh = h W_hh^T (+ b_hh)`` (one small GEMM per step),
    both (..., gates * H), and leave everything else to the cell. The new ``h`` is ``out``
    (projected by ``W_hr`` where the network has a projection).

    Class attributes:

    - ``gates``: blocks stacked along the weight rows (``weight_ih`` is (gates * H, I)).
    - ``memory``: whether the state holds a memory ``c`` (..., H) besides ``h``; without one,
      the loops carry ``None`` in its place.
    - ``recurrent_bias_inside``: whether the step reads ``gx`` and ``gh`` apart (so ``b_hh``
      belongs to ``gh``); otherwise it depends on ``gx + gh`` only, the loops add ``b_ih +
      b_hh`` to ``gx`` as one bias, and the gradients of ``gx`` and ``gh`` are one buffer.

    Example, torch's ``RNNCell`` (tanh)::

        @dataclasses.dataclass(frozen=True)
        class TanhRNN(Cell):
            gates, memory = 1, False

            def activate(self, gx, gh, h, c):
                out = jnp.tanh(gx + gh)
                return out, None, (out,)

            def activate_vjp(self, record, h, c, d_out, d_c_new):
                d_pre = d_out * (1.0 - record[0] ** 2)
                return d_pre, d_pre, None, None
    """

    gates: ClassVar[int]
    memory: ClassVar[bool]
    recurrent_bias_inside: ClassVar[bool] = False

    def record_widths(self, hidden: int) -> tuple[int, ...]:
        """The widths of the parts of :meth:`activate`'s ``record``. The first is ``gates *
        hidden``: the training loop writes it over the step's row of input projections, and
        the backward loop that row's ``d_gx`` over it in turn."""
        return (self.gates * hidden,)

    def biases(self, b_ih: Array, b_hh: Array) -> tuple[Array, Array | None]:
        """The biases the loops add to ``gx`` and to ``gh``: ``b_ih + b_hh`` and ``None``,
        unless ``recurrent_bias_inside``."""
        return (b_ih, b_hh) if self.recurrent_bias_inside else (b_ih + b_hh, None)

    @abc.abstractmethod
    def activate(self, gx: Array, gh: Array, h: Array,
                 c: Array | None) -> tuple[Array, Array | None, tuple[Array, ...]]:
        """The step: ``(out, c', record)``, ``record`` what :meth:`activate_vjp` needs, parts
        of the widths :meth:`record_widths` gives."""

    @abc.abstractmethod
    def activate_vjp(self, record: tuple[Array, ...], h: Array, c: Array | None, d_out: Array,
                     d_c_new: Array | None) -> tuple[Array, Array, Array | None, Array | None]:
        """The one hand-written derivative of :meth:`activate`: from the cotangents of ``(out,
        c')`` those of ``(gx, gh, h, c)``. ``d_h`` is only the part that does not pass through
        ``gh`` (``None`` where ``h`` enters through ``gh`` alone); ``d_gh`` is ``d_gx`` itself
        unless ``recurrent_bias_inside``."""

    def activate_jvp(self, record: tuple[Array, ...], h: Array, c: Array | None, d_gx: Array,
                     d_gh: Array, d_h: Array, d_c: Array | None) -> tuple[Array, Array | None]:
        """Tangents of ``(out, c')`` from those of ``(gx, gh, h, c)``: the transpose of
        :meth:`activate_vjp` (linear in its cotangents), so the derivative is written once."""
        out = struct_like(record[0], record[0].shape[:-1] + (record[0].shape[-1] // self.gates,))
        memory = None if c is None else struct_like(c, c.shape)
        vjp = partial(self.activate_vjp, record, h, c)
        # Tangents only where the cotangents exist (no d_h for a cell whose h enters via gh).
        shapes = jax.eval_shape(vjp, out, memory)
        tangents = tuple(None if s is None else t
                         for s, t in zip(shapes, (d_gx, d_gh, d_h, d_c)))
        return jax.linear_transpose(vjp, out, memory)(tangents)



@partial(jax.custom_jvp, nondiff_argnums=(0,))
def step(cell: Cell, gx: Array, gh: Array, h: Array | None, c: Array | None) -> State:
    """One step of ``cell`` (what torch's ``*Cell`` modules compute): ``(out, c')`` from ``gx``
    and ``gh`` (..., GH) with their biases, ``h`` (``None`` for a cell that reads it only
    through ``gh``) and ``c`` (``None`` without memory). Differentiated (both modes) by the
    cell's one derivative, as the sequence loops are."""
    out, c_new, _ = cell.activate(gx, gh, h, c)
    return out, c_new


@step.defjvp
def _step_jvp(cell: Cell, primals, tangents):
    gx, gh, h, c = primals
    out, c_new, record = cell.activate(gx, gh, h, c)

    def tangent(residuals, tangents):
        return cell.activate_jvp(*residuals, *tangents)

    def cotangent(residuals, cotangents):
        d_gx, d_gh, d_h, d_c = cell.activate_vjp(*residuals, *cotangents)
        if h is not None and d_h is None:
            d_h = jnp.zeros_like(h)
        return d_gx, d_gh, d_h, d_c

    return (out, c_new), linear_map(tangent, cotangent, (record, h, c), tangents, (out, c_new))
