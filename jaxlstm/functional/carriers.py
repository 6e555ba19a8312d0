"""The named tuples the loops pass around: a layer's weights and inputs, what the training
loop records, what the derivatives keep, and the :class:`Schedule` a layer runs with.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

Array = jax.Array


# ``(h, c)``; ``c`` is ``None`` for a cell without memory.
State = tuple[Array, Array | None]


class LayerWeights(NamedTuple):
    """One layer's weights in torch's layout (also the structure of their tangents and
    gradients), G the cell's gates: ``w_ih`` one (GH, I) array per direction (each direction
    projects separately, so they are never stacked), ``w_hh`` (D, GH, P), ``bias`` (D, GH)
    ``b_ih + b_hh`` (``b_ih`` alone for a cell whose ``b_hh`` is inside the step, which then
    has it as ``bias_hh``) or ``None``, and the projection transposed, ``w_hr_t`` (D, H, P) or
    ``None``."""

    w_ih: tuple[Array, ...]
    w_hh: Array
    bias: Array | None
    w_hr_t: Array | None
    bias_hh: Array | None = None


class LayerInputs(NamedTuple):
    """What a layer is differentiated with respect to; tangents and cotangents have this
    structure. ``x`` (T, N, I), ``h0`` (D, N, P), ``c0`` (D, N, H) or ``None`` (no memory)."""

    x: Array
    weights: LayerWeights
    h0: Array
    c0: Array | None


class Saved(NamedTuple):
    """What the training loop records at every step, one (T, N, F) buffer per direction each,
    zero at invalid steps: ``record``, one such tuple per part of the cell's record (the first
    part GH wide: the backward loop overwrites it with the gradients of ``gx``), the states
    entering the step ``h_prev`` (P) and ``c_prev`` (H; ``()`` without memory), and with a
    projection the unprojected output ``r`` (H; else ``()``)."""

    record: tuple[tuple[Array, ...], ...]
    h_prev: tuple[Array, ...]
    c_prev: tuple[Array, ...]
    r: tuple[Array, ...]


class Residuals(NamedTuple):
    """What a layer's derivatives keep from its forward pass: the input, weights and valid
    mask, and either every step's :class:`Saved` or, with remat, ``starts``: the states
    entering each chunk (a chunk's activations are recomputed from them)."""

    x: Array
    weights: LayerWeights
    valid: Array | None
    saved: Saved | None
    starts: State | None


class Schedule(NamedTuple):
    """How a layer runs, not what it computes: matmul ``precision``, the forward loop's
    ``unroll``, ``remat`` (0, or the chunk length of the rematerialising backward pass),
    ``chunk_rows`` (rows, steps x batch, of input projection per chunk of the forward-only
    pass) and ``wavefront`` (stacked unidirectional layers in one loop, :func:`run_stack`)."""

    precision: Any
    unroll: int
    remat: int
    chunk_rows: int
    wavefront: bool = False


class StackInputs(NamedTuple):
    """What a wavefront stack is differentiated with respect to: ``x`` (T, N, I), one
    :class:`LayerWeights` per layer (one direction each), ``h0`` (L, N, P), ``c0`` (L, N, H)
    or ``None``."""

    x: Array
    weights: tuple[LayerWeights, ...]
    h0: Array
    c0: Array | None


class StackSaved(NamedTuple):
    """What the wavefront's training loop records, skewed (S = T + L - 1 rows, see above):
    ``record`` one (L, S, N, F) buffer per part of the cell's record (the first overwritten by
    the gradients of ``gx`` in the backward loop), ``h_prev`` (L, S, N, P), ``c_prev``
    (L, S, N, H) or ``None``, ``r`` (L, S, N, H) or ``None``, and ``inputs`` (L - 1, S, N, P):
    what layers 1 .. L-1 read (the output below, after dropout)."""

    record: tuple[Array, ...]
    h_prev: Array
    c_prev: Array | None
    r: Array | None
    inputs: Array


class StackResiduals(NamedTuple):
    """What the stack's derivatives keep from its forward pass: the input, the weights, the
    valid mask and dropout masks as :func:`run_stack` took them, and the :class:`StackSaved`."""

    x: Array
    weights: tuple[LayerWeights, ...]
    valid: Array | None
    keep: Array | None
    saved: StackSaved
