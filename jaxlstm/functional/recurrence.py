"""The forward recurrence: one step of D directions, the loop that saves nothing and the
loop that records what the derivatives need, and the input projection before them.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxlstm.functional.carriers import Array, LayerWeights, Saved, Schedule, State
from jaxlstm.functional.cell import cell_activate, gate_scale
from jaxlstm.functional.indexing import keep_at, masked, read_rows, write_columns, write_rows


def cell_step(row, state, keep, w_hh_t, w_hr_t, bias, scale, precision):
    """One step of D directions from the input projections ``row`` (D, N, 4H) and ``state``:
    returns ``(h_new, carry, r, t)``, ``carry`` holding ``state`` where ``keep`` is False.
    ``bias`` (D, 1, 4H) and ``scale`` (:func:`gate_scale`) come from outside the loop: made
    inside it, they cost the forward pass 17 % on the large CPU benchmark shape)."""
    h, c = state
    gates = row + jnp.einsum("dnp,dpg->dng", h, w_hh_t, precision=precision)
    if bias is not None:
        gates = gates + bias
    r, c_new, t = cell_activate(gates * scale, c)
    h_new = r
    if w_hr_t is not None:
        h_new = jnp.einsum("dnh,dhp->dnp", r, w_hr_t, precision=precision)
    if keep is None:
        return h_new, (h_new, c_new), r, t
    return h_new, (jnp.where(keep, h_new, h), jnp.where(keep, c_new, c)), r, t


def inference_loop(gates_x, weights: LayerWeights, state: State, valid, y, offset,
                    schedule: Schedule):
    """The recurrence of D directions in one loop, saving nothing: ``gates_x`` holds one
    (T, N, 4H) buffer of input projections per direction in natural time order, and the loop
    writes its outputs into ``y`` as steps ``offset .. offset+T-1`` of a longer sequence (a
    chunk of a layer, whose output then needs no assembling). Returns ``(y, (h_T, c_T))``."""
    steps = gates_x[0].shape[0]
    w_hh_t = jnp.swapaxes(weights.w_hh, 1, 2)
    bias = None if weights.bias is None else weights.bias[:, None, :]
    scale = gate_scale(state[1].shape[-1], state[1].dtype)

    def body(step, carry):
        state, y = carry
        keep = keep_at(valid, step, steps)
        h_new, state, _, _ = cell_step(read_rows(gates_x, step, steps), state, keep, w_hh_t,
                                   weights.w_hr_t, bias, scale, schedule.precision)
        return state, write_columns(y, masked(h_new, keep), offset + step)

    state, y = jax.lax.fori_loop(0, steps, body, (state, y), unroll=schedule.unroll)
    return y, state


def training_loop(gates_x, weights: LayerWeights, state: State, valid, schedule: Schedule):
    """The recurrence as :func:`inference_loop`, recording :class:`Saved` for the derivatives:
    each step's row of ``gates_x`` is overwritten in place with its ``t``. Returns ``(y,
    (h_T, c_T), saved)`` with ``y`` the layer output (T, N, D*P), zero at invalid steps."""
    steps, batch = gates_x[0].shape[:2]
    h0, c0 = state
    dtype = h0.dtype
    w_hh_t = jnp.swapaxes(weights.w_hh, 1, 2)
    bias = None if weights.bias is None else weights.bias[:, None, :]
    scale = gate_scale(c0.shape[-1], dtype)

    def buffers(width):
        return tuple(jnp.zeros((steps, batch, width), dtype) for _ in gates_x)

    r_buf = buffers(c0.shape[-1]) if weights.w_hr_t is not None else ()
    saved = Saved(gates_x, buffers(h0.shape[-1]), buffers(c0.shape[-1]), r_buf)
    y = jnp.zeros((steps, batch, len(gates_x) * h0.shape[-1]), dtype)

    def body(step, carry):
        state, y, saved = carry
        keep = keep_at(valid, step, steps)
        h_new, new_state, r, t = cell_step(read_rows(saved.t, step, steps), state, keep, w_hh_t,
                                       weights.w_hr_t, bias, scale, schedule.precision)
        h, c = state
        saved = Saved(
            write_rows(saved.t, t, step, steps),
            write_rows(saved.h_prev, masked(h, keep), step, steps),
            write_rows(saved.c_prev, masked(c, keep), step, steps),
            write_rows(saved.r, masked(r, keep), step, steps) if saved.r else (),
        )
        return new_state, write_columns(y, masked(h_new, keep), step), saved

    state, y, saved = jax.lax.fori_loop(0, steps, body, (state, y, saved),
                                        unroll=schedule.unroll)
    return y, state, saved


def project(inputs, w_ih, precision: Any) -> tuple[Array, ...]:
    """Each direction's input projections for all steps in one GEMM: (T, N, I) -> (T, N, 4H),
    with ``w_ih`` one (4H, I) weight per direction in torch's layout. ``inputs`` is one array
    for all directions, or one per direction."""
    if not isinstance(inputs, tuple):
        inputs = (inputs,) * len(w_ih)
    return tuple(
        jnp.einsum("tni,gi->tng", x, w, precision=precision) for x, w in zip(inputs, w_ih)
    )
