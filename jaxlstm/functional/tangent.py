"""Forward mode: the layer's tangent as a linear recurrence along the recorded activations."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlstm.functional.carriers import LayerWeights, Saved, Schedule, State
from jaxlstm.functional.cells import Cell
from jaxlstm.functional.indexing import batch_zeros, keep_at, masked, read_rows, write_columns
from jaxlstm.functional.sharding import explicit_sharding


def tangent_loop(cell: Cell, saved: Saved, drive, drive_gh, drive_h, weights: LayerWeights,
                 state: State, valid, schedule: Schedule):
    """The layer's tangent: the linear recurrence of ``(dh, dc)`` along :class:`Saved`.

    ``drive`` (one (T, N, GH) buffer per direction) is every tangent of ``gx`` that does not
    come through ``h``: the input's and the weights' contributions, computed by GEMMs over all
    steps before the loop (for a cell with pre-summed biases, those of ``gh`` too); ``drive_gh``
    (likewise, or ``()``) those of ``gh`` for a cell that reads it apart; ``drive_h`` (one
    (T, N, P) buffer per direction, or ``()``) the projection weight's contribution to each
    output. The cell's derivative is :meth:`Cell.activate_jvp`. Returns ``(dy, (dh_T, dc_T))``
    shaped like the layer's outputs.
    """
    steps, batch = saved.h_prev[0].shape[:2]
    h0, _ = state
    w_hh_t = jnp.swapaxes(weights.w_hh, 1, 2)
    dy = batch_zeros(saved.h_prev[0], (steps, batch, len(saved.h_prev) * h0.shape[-1]),
                     h0.dtype)

    def body(step, carry):
        (dh, dc), dy = carry
        keep = keep_at(valid, step, steps)

        def rows(buffers):
            return read_rows(buffers, step, steps) if buffers else None

        d_gh = jnp.einsum("dnp,dpg->dng", dh, w_hh_t, precision=schedule.precision,
                          out_sharding=explicit_sharding(dh))
        if drive_gh:
            d_gh = d_gh + rows(drive_gh)
        dr, dc_new = cell.activate_jvp(tuple(rows(part) for part in saved.record),
                                       rows(saved.h_prev), rows(saved.c_prev), rows(drive), d_gh,
                                       dh, dc)
        dh_new = dr
        if weights.w_hr_t is not None:
            dh_new = jnp.einsum("dnh,dhp->dnp", dr, weights.w_hr_t, precision=schedule.precision)
            if drive_h:
                dh_new = dh_new + rows(drive_h)
        # Select, never multiply by zero (as the backward loop): invalid steps may hold inf.
        if keep is not None:
            dh_new = jnp.where(keep, dh_new, dh)
            dc_new = None if dc is None else jnp.where(keep, dc_new, dc)
        return (dh_new, dc_new), write_columns(dy, masked(dh_new, keep), step)

    state, dy = jax.lax.fori_loop(0, steps, body, (state, dy), unroll=schedule.unroll)
    return dy, state
