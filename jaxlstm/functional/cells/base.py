"""The interface every cell implements, and what the loops derive from it."""

from __future__ import annotations

import abc
import dataclasses
from functools import partial
from typing import ClassVar

import jax

from jaxlstm.functional.carriers import Array


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
    """

    gates: ClassVar[int]
    memory: ClassVar[bool]
    recurrent_bias_inside: ClassVar[bool] = False

    def record_widths(self, hidden: int) -> tuple[int, ...]:
        """The widths of the parts of :meth:`activate`'s ``record``. The first is ``gates *
        hidden``: the training loop writes it over the step's row of input projections, and
        the backward loop that row's ``d_gx`` over it in turn."""
        return (self.gates * hidden,)

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
        out = jax.ShapeDtypeStruct(record[0].shape[:-1] + (record[0].shape[-1] // self.gates,),
                                   record[0].dtype)
        memory = None if c is None else jax.ShapeDtypeStruct(c.shape, c.dtype)
        vjp = partial(self.activate_vjp, record, h, c)
        # Tangents only where the cotangents exist (no d_h for a cell whose h enters via gh).
        shapes = jax.eval_shape(vjp, out, memory)
        tangents = tuple(None if s is None else t
                         for s, t in zip(shapes, (d_gx, d_gh, d_h, d_c)))
        return jax.linear_transpose(vjp, out, memory)(tangents)

