"""Forward mode: the layer's tangent as a linear recurrence along the recorded activations."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlstm.functional.carriers import LayerWeights, Saved, Schedule, State
from jaxlstm.functional.cell import cell_activate_jvp, cell_state, gate_scale
from jaxlstm.functional.indexing import keep_at, masked, read_rows, write_columns


def tangent_loop(saved: Saved, drive, drive_h, weights: LayerWeights, state: State, valid,
                  schedule: Schedule):
    """The layer's tangent: the linear recurrence of ``(dh, dc)`` along :class:`Saved`.

    ``drive`` (one (T, N, 4H) buffer per direction) is every gate tangent that does not come
    through ``h``: the input's and the weights' contributions, computed by GEMMs over all steps
    before the loop; ``drive_h`` (one (T, N, P) buffer per direction, or ``()``) is the
    projection weight's contribution to each output. The cell's derivative is
    :func:`cell_activate_jvp`. Returns ``(dy, (dh_T, dc_T))`` shaped like the layer's outputs.
    """
    steps, batch = saved.t[0].shape[:2]
    h0, _ = state
    w_hh_t = jnp.swapaxes(weights.w_hh, 1, 2)
    scale = gate_scale(saved.c_prev[0].shape[-1], h0.dtype)
    dy = jnp.zeros((steps, batch, len(saved.t) * h0.shape[-1]), h0.dtype)

    def body(step, carry):
        (dh, dc), dy = carry
        keep = keep_at(valid, step, steps)
        t, c_p = read_rows(saved.t, step, steps), read_rows(saved.c_prev, step, steps)
        d_gates = read_rows(drive, step, steps) + jnp.einsum(
            "dnp,dpg->dng", dh, w_hh_t, precision=schedule.precision)
        dr, dc_new = cell_activate_jvp(t, cell_state(t, c_p), c_p, d_gates * scale, dc)
        dh_new = dr
        if weights.w_hr_t is not None:
            dh_new = jnp.einsum("dnh,dhp->dnp", dr, weights.w_hr_t, precision=schedule.precision)
            if drive_h:
                dh_new = dh_new + read_rows(drive_h, step, steps)
        # Select, never multiply by zero (as the backward loop): invalid steps may hold inf.
        if keep is not None:
            dh_new, dc_new = jnp.where(keep, dh_new, dh), jnp.where(keep, dc_new, dc)
        return (dh_new, dc_new), write_columns(dy, masked(dh_new, keep), step)

    state, dy = jax.lax.fori_loop(0, steps, body, (state, dy), unroll=schedule.unroll)
    return dy, state
