"""The forward recurrence: one step of D directions, the loop that saves nothing and the
loop that records what the derivatives need, and the input projection before them.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxlstm.functional.carriers import Array, LayerWeights, Saved, Schedule, State
from jaxlstm.functional.cells import Cell
from jaxlstm.functional.indexing import (
    batch_zeros,
    keep_at,
    masked,
    read_rows,
    write_columns,
    write_rows,
)
from jaxlstm.functional.sharding import explicit_sharding, whole


def step_biases(weights: LayerWeights) -> tuple[Array | None, Array | None]:
    """``(bias, bias_hh)`` shaped (D, 1, GH) for :func:`cell_step`, made outside the loop:
    made inside it, they cost the forward pass 17 % on the large CPU benchmark shape."""
    return tuple(None if b is None else whole(b)[:, None, :]
                 for b in (weights.bias, weights.bias_hh))


def cell_step(cell: Cell, row, state, keep, w_hh_t, w_hr_t, biases, precision):
    """One step of D directions from the input projections ``row`` (D, N, GH) and ``state``:
    returns ``(h_new, carry, r, record)``, ``carry`` holding ``state`` where ``keep`` is
    False, ``r`` the cell's output before any projection and ``record`` what the derivatives
    need (:meth:`Cell.activate`). ``biases``: :func:`step_biases`."""
    h, c = state
    bias, bias_hh = biases
    gh = jnp.einsum("dnp,dpg->dng", h, w_hh_t, precision=precision,
                    out_sharding=explicit_sharding(h))
    if bias_hh is not None:
        gh = gh + bias_hh
    gx = row if bias is None else row + bias
    r, c_new, record = cell.activate(gx, gh, h, c)
    h_new = r
    if w_hr_t is not None:
        h_new = jnp.einsum("dnh,dhp->dnp", r, w_hr_t, precision=precision)
    if keep is None:
        return h_new, (h_new, c_new), r, record
    c_new = None if c is None else jnp.where(keep, c_new, c)
    return h_new, (jnp.where(keep, h_new, h), c_new), r, record


def inference_loop(cell: Cell, gates_x, weights: LayerWeights, state: State, valid, y, offset,
                    schedule: Schedule):
    """The recurrence of D directions in one loop, saving nothing: ``gates_x`` holds one
    (T, N, GH) buffer of input projections per direction in natural time order, and the loop
    writes its outputs into ``y`` as steps ``offset .. offset+T-1`` of a longer sequence (a
    chunk of a layer, whose output then needs no assembling). Returns ``(y, (h_T, c_T))``."""
    steps = gates_x[0].shape[0]
    w_hh_t = jnp.swapaxes(weights.w_hh, 1, 2)
    biases = step_biases(weights)

    def body(step, carry):
        state, y = carry
        keep = keep_at(valid, step, steps)
        h_new, state, _, _ = cell_step(cell, read_rows(gates_x, step, steps), state, keep,
                                       w_hh_t, weights.w_hr_t, biases, schedule.precision)
        return state, write_columns(y, masked(h_new, keep), offset + step)

    state, y = jax.lax.fori_loop(0, steps, body, (state, y), unroll=schedule.unroll)
    return y, state


def training_loop(cell: Cell, gates_x, weights: LayerWeights, state: State, valid,
                  schedule: Schedule):
    """The recurrence as :func:`inference_loop`, recording :class:`Saved` for the derivatives:
    each step's row of ``gates_x`` is overwritten in place with the first part of its record.
    Returns ``(y, (h_T, c_T), saved)`` with ``y`` the layer output (T, N, D*P), zero at invalid
    steps."""
    steps, batch = gates_x[0].shape[:2]
    h0, c0 = state
    dtype, hidden = h0.dtype, gates_x[0].shape[-1] // cell.gates
    w_hh_t = jnp.swapaxes(weights.w_hh, 1, 2)
    biases = step_biases(weights)

    def buffers(width):
        return tuple(batch_zeros(g, (steps, batch, width), dtype) for g in gates_x)

    record = (gates_x,) + tuple(buffers(w) for w in cell.record_widths(hidden)[1:])
    r_buf = buffers(hidden) if weights.w_hr_t is not None else ()
    saved = Saved(record, buffers(h0.shape[-1]), buffers(hidden) if cell.memory else (), r_buf)
    y = batch_zeros(gates_x[0], (steps, batch, len(gates_x) * h0.shape[-1]), dtype)

    def body(step, carry):
        state, y, saved = carry
        keep = keep_at(valid, step, steps)
        h_new, new_state, r, record = cell_step(cell, read_rows(saved.record[0], step, steps),
                                                state, keep, w_hh_t, weights.w_hr_t, biases,
                                                schedule.precision)
        h, c = state

        def write(buf, rows):
            return write_rows(buf, rows, step, steps)

        saved = Saved(
            tuple(write(buf, part) for buf, part in zip(saved.record, record)),
            write(saved.h_prev, masked(h, keep)),
            write(saved.c_prev, masked(c, keep)) if saved.c_prev else (),
            write(saved.r, masked(r, keep)) if saved.r else (),
        )
        return new_state, write_columns(y, masked(h_new, keep), step), saved

    state, y, saved = jax.lax.fori_loop(0, steps, body, (state, y, saved),
                                        unroll=schedule.unroll)
    return y, state, saved


def project(inputs, w_ih, precision: Any) -> tuple[Array, ...]:
    """Each direction's input projections for all steps in one GEMM: (T, N, I) -> (T, N, GH),
    with ``w_ih`` one (GH, I) weight per direction in torch's layout. ``inputs`` is one array
    for all directions, or one per direction."""
    if not isinstance(inputs, tuple):
        inputs = (inputs,) * len(w_ih)
    return tuple(
        jnp.einsum("tni,gi->tng", x, w, precision=precision, out_sharding=explicit_sharding(x))
        for x, w in zip(inputs, w_ih)
    )
