"""One layer, D directions, as a ``jax.custom_jvp``: its forward pass, its tangent (a linear
map) and that tangent's hand-scheduled transpose.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from jaxlstm._linear import linear_map
from jaxlstm.functional.backward import layer_grads
from jaxlstm.functional.carriers import Array, LayerInputs, Residuals, Schedule, State
from jaxlstm.functional.cells import Cell
from jaxlstm.functional.chunks import chunk_parts, chunked, chunked_forward, inference_chunk
from jaxlstm.functional.indexing import batch_zeros, per_direction
from jaxlstm.functional.recurrence import inference_loop, project, training_loop
from jaxlstm.functional.sharding import explicit_sharding, varying_like, whole
from jaxlstm.functional.tangent import tangent_loop


@partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def run_layer(inputs: LayerInputs, valid: Array | None, cell: Cell,
              schedule: Schedule) -> tuple[Array, State]:
    """One layer of ``cell``, D directions: input projection and recurrence.

    **Arguments:**

    - ``inputs``: :class:`LayerInputs`: ``x`` (T, N, I) the layer input, its
      :class:`LayerWeights`, and the initial states ``h0`` (D, N, P), ``c0`` (D, N, H) or
      ``None`` (a cell without memory).
    - ``valid``: (T, N) bool, True where step t lies inside sequence n, or ``None`` (all
      valid). Valid steps are a prefix of each sequence, so the reverse direction, reading
      from the end, holds its initial state until it reaches a sequence's last element:
      torch's ``PackedSequence`` semantics without reversing anything.
    - ``cell``: the step's math, a :class:`~jaxlstm.functional.cells.Cell`.
    - ``schedule``: :class:`Schedule`.

    **Returns:** ``(y, (h_T, c_T))``: ``y`` the layer output (T, N, D*P), zero at invalid steps.

    The forward-only pass projects the input a chunk at a time (:func:`inference_chunk`).
    Derivatives go through :func:`_layer_jvp`.
    """
    x, weights, h0, c0 = inputs
    chunk = inference_chunk(*x.shape[:2], schedule.chunk_rows)
    if chunk < x.shape[0]:
        y, state, _ = chunked_forward(cell, inputs, valid, chunk, schedule)
        return y, state
    y = batch_zeros(x, (*x.shape[:2], len(weights.w_ih) * h0.shape[-1]), h0.dtype)
    return inference_loop(cell, project(x, weights.w_ih, schedule.precision), weights, (h0, c0),
                           per_direction(valid, len(weights.w_ih)), y, 0, schedule)


def layer_forward(cell: Cell, inputs: LayerInputs, valid, schedule: Schedule):
    """The forward pass that derivatives start from: ``((y, (h_T, c_T)), residuals)``. With
    remat, the chunk-start states are all it keeps of the recurrence."""
    x, weights, h0, c0 = inputs
    if schedule.remat:
        y, state, starts = chunked_forward(cell, inputs, valid, schedule.remat, schedule)
        return (y, state), Residuals(x, weights, valid, None, starts)
    gates_x = project(x, weights.w_ih, schedule.precision)
    y, state, saved = training_loop(cell, gates_x, weights, (h0, c0),
                                     per_direction(valid, len(weights.w_ih)), schedule)
    return (y, state), Residuals(x, weights, valid, saved, None)


def layer_tangent(cell: Cell, schedule: Schedule, residuals: Residuals, tangents: LayerInputs):
    """The layer's derivative in the direction ``tangents`` (``None`` leaves are zero):
    ``(dy, (dh_T, dc_T))``. Linear in ``tangents``; its transpose is :func:`layer_cotangent`."""
    x, weights, valid, saved, starts = residuals
    directions, precision = len(weights.w_ih), schedule.precision
    valid = per_direction(valid, directions)
    if saved is None:
        # remat kept only the chunk starts; the tangent loop reads every step's activations.
        start = jax.tree.map(lambda s: s[0], starts)
        gates_x = project(x, weights.w_ih, precision)
        _, _, saved = training_loop(cell, gates_x, weights, start, valid, schedule)
    dx, dw, dh0, dc0 = tangents
    # Every tangent of gx and gh that does not come through h, as GEMMs over all steps at
    # once; one buffer for both unless the cell reads them apart.
    drive = [jnp.zeros_like(t) for t in saved.record[0]]
    drive_gh = [jnp.zeros_like(t) for t in drive] if cell.recurrent_bias_inside else drive
    for d in range(directions):
        if dx is not None:
            drive[d] = drive[d] + project(dx, weights.w_ih[d:d + 1], precision)[0]
        if dw.w_ih[d] is not None:
            drive[d] = drive[d] + project(x, dw.w_ih[d:d + 1], precision)[0]
        if dw.w_hh is not None:
            drive_gh[d] = drive_gh[d] + jnp.einsum("tnp,gp->tng", saved.h_prev[d], dw.w_hh[d],
                                                   out_sharding=explicit_sharding(saved.h_prev[d]),
                                                   precision=precision)
        if dw.bias is not None:
            drive[d] = drive[d] + whole(dw.bias[d])
        if dw.bias_hh is not None:
            drive_gh[d] = drive_gh[d] + whole(dw.bias_hh[d])
    drive_h = ()
    if dw.w_hr_t is not None:
        drive_h = tuple(jnp.einsum("tnh,hp->tnp", r, w, precision=precision)
                        for r, w in zip(saved.r, dw.w_hr_t))
    if dh0 is None:
        dh0 = batch_zeros(saved.h_prev[0], (directions,) + saved.h_prev[0].shape[1:],
                          saved.h_prev[0].dtype)
    if dc0 is None and cell.memory:
        dc0 = batch_zeros(saved.c_prev[0], (directions,) + saved.c_prev[0].shape[1:],
                          saved.c_prev[0].dtype)
    drive_gh = tuple(drive_gh) if cell.recurrent_bias_inside else ()
    return tangent_loop(cell, saved, tuple(drive), drive_gh, drive_h, weights, (dh0, dc0), valid,
                        schedule)


def layer_cotangent(cell: Cell, schedule: Schedule, residuals: Residuals,
                    cotangents) -> LayerInputs:
    """The transpose of :func:`layer_tangent`, hand-scheduled: the backward loop carries only
    ``(dh, dc)`` and does one small GEMM per step, writing the gate gradients over the saved
    activations in place; the weight and input gradients are single large GEMMs over all steps
    after the loop. With remat, each chunk's forward is recomputed from its start state."""
    x, weights, valid, saved, starts = residuals
    d_y, state = cotangents
    directions, precision = len(weights.w_ih), schedule.precision
    if saved is not None:
        d_parts, grads, (dh, dc) = layer_grads(cell, (x,) * directions, weights, saved,
                                               per_direction(valid, directions), d_y, state,
                                               precision)
        d_x = d_parts[0] if directions == 1 else d_parts[0] + d_parts[1]
        return LayerInputs(d_x, grads, dh, dc)

    chunk = schedule.remat
    chunks, valid_chunks = chunked(x, valid, chunk)
    d_y = jnp.pad(d_y, [(0, chunks.shape[0] * chunk - x.shape[0]), (0, 0), (0, 0)])

    def run_chunk(carry, inputs):
        state, totals = carry
        k, start = inputs
        parts = chunk_parts(chunks, k, directions)
        v = chunk_parts(valid_chunks, k, directions)
        _, _, chunk_saved = training_loop(cell, project(parts, weights.w_ih, precision),
                                          weights, start, v, schedule)
        d_parts, grads, state = layer_grads(cell, parts, weights, chunk_saved, v, d_y, state,
                                            precision, k * chunk)
        return (state, jax.tree.map(jnp.add, totals, grads)), d_parts

    zeros = varying_like(jax.tree.map(jnp.zeros_like, weights), x)
    ((dh, dc), grads), d_parts = jax.lax.scan(
        run_chunk, (state, zeros), (jnp.arange(chunks.shape[0]), starts), reverse=True
    )
    # Each direction's input gradients come back in the order it visited the chunks.
    d_x = d_parts[0] if directions == 1 else d_parts[0] + d_parts[1][::-1]
    d_x = d_x.reshape(-1, *d_x.shape[2:])[: x.shape[0]]
    return LayerInputs(d_x, grads, dh, dc)


def prune(tree, like):
    """``tree`` with ``None`` wherever ``like`` has ``None`` (a zero tangent, no cotangent)."""
    if like is None:
        return None
    if isinstance(like, tuple):
        items = [prune(t, s) for t, s in zip(tree, like)]
        return type(like)(*items) if hasattr(like, "_fields") else tuple(items)
    return tree


def zeros_as_none(tangents):
    """``tangents`` with ``None`` for every symbolic zero (what the tangent code skips)."""
    return jax.tree.map(lambda t: None if isinstance(t, SymbolicZero) else t, tangents,
                        is_leaf=lambda t: isinstance(t, SymbolicZero))


def _layer_jvp(cell: Cell, schedule: Schedule, primals, tangents):
    """Forward mode, and through JAX's transposition reverse mode: the primal runs the
    recording forward pass, and the tangent is one linear map whose transpose is the
    hand-scheduled backward pass, so that reverse mode runs exactly that."""
    inputs, valid = primals
    tangents = zeros_as_none(tangents[0])
    outputs, residuals = layer_forward(cell, inputs, valid, schedule)

    def cotangent(residuals, cotangents):
        return prune(layer_cotangent(cell, schedule, residuals, cotangents), tangents)

    return outputs, linear_map(partial(layer_tangent, cell, schedule), cotangent, residuals,
                               tangents, outputs)


run_layer.defjvp(_layer_jvp, symbolic_zeros=True)
