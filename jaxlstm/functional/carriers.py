"""The named tuples the loops pass around: a layer's weights and inputs, what the training
loop records, what the derivatives keep, and the :class:`Schedule` a layer runs with.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

Array = jax.Array


State = tuple[Array, Array]


class LayerWeights(NamedTuple):
    """One layer's weights in torch's layout (also the structure of their tangents and
    gradients): ``w_ih`` one (4H, I) array per direction (each direction projects separately,
    so they are never stacked), ``w_hh`` (D, 4H, P), ``bias`` (D, 4H) ``b_ih + b_hh`` or
    ``None``, and the projection transposed, ``w_hr_t`` (D, H, P) or ``None``."""

    w_ih: tuple[Array, ...]
    w_hh: Array
    bias: Array | None
    w_hr_t: Array | None


class LayerInputs(NamedTuple):
    """What a layer is differentiated with respect to; tangents and cotangents have this
    structure. ``x`` (T, N, I), ``h0`` (D, N, P), ``c0`` (D, N, H)."""

    x: Array
    weights: LayerWeights
    h0: Array
    c0: Array


class Saved(NamedTuple):
    """What the training loop records at every step, one (T, N, F) buffer per direction each,
    zero at invalid steps: ``t = tanh(scaled gates)`` (4H; the backward loop overwrites it with
    the gate gradients), the states entering the step ``h_prev`` (P) and ``c_prev`` (H), and
    with a projection the unprojected output ``r`` (H; else ``()``)."""

    t: tuple[Array, ...]
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
    :class:`LayerWeights` per layer (one direction each), ``h0`` (L, N, P), ``c0`` (L, N, H)."""

    x: Array
    weights: tuple[LayerWeights, ...]
    h0: Array
    c0: Array


class StackSaved(NamedTuple):
    """What the wavefront's training loop records, skewed (S = T + L - 1 rows, see above):
    ``t`` (L, S, N, 4H) (overwritten by the gate gradients in the backward loop), ``h_prev``
    (L, S, N, P), ``c_prev`` (L, S, N, H), ``r`` (L, S, N, H) or ``None``, and ``inputs``
    (L - 1, S, N, P): what layers 1 .. L-1 read (the output below, after dropout)."""

    t: Array
    h_prev: Array
    c_prev: Array
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
