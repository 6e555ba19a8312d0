"""Reverse mode: the hand-scheduled backward loop, carrying only ``(dh, dc)``, and the weight
gradients as single GEMMs over all steps after it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlstm.functional.carriers import LayerWeights, Saved, State
from jaxlstm.functional.cells import Cell
from jaxlstm.functional.indexing import keep_at, masked, read_columns, read_rows, write_rows
from jaxlstm.functional.sharding import explicit_sharding, laid_out_as, like_weight


def backward_step(cell: Cell, record, h_p, c_p, keep, state, d_out, w_hh, w_hr_t, precision):
    """One step of a reverse loop over a leading axis (directions, or a wavefront's layers):
    from the step's saved ``record``, ``h_p`` and ``c_p``, the cotangents ``state = (dh, dc)``
    of the states leaving it and ``d_out`` of its output, returns ``(d_gx, d_gh, dh_cand,
    dh_prev, dc_prev)``: the gradients of the step's input projection and recurrent term (what
    the weight GEMMs take; one array for a cell with pre-summed biases), the cotangent of the
    (projected) output, and those of the states entering the step. Where ``keep`` is False the
    state cotangents pass through unchanged and the rest is zero."""
    dh, dc = state
    dh_cand = masked(dh + d_out, keep)
    dr = dh_cand
    if w_hr_t is not None:
        dr = jnp.einsum("dnp,dhp->dnh", dh_cand, w_hr_t, precision=precision)
    d_gx, d_gh, dh_direct, dc_prev = cell.activate_vjp(
        record, h_p, c_p, dr, None if dc is None else masked(dc, keep))
    # Select, never multiply by zero: a step past a sequence's end may hold an infinite
    # state, and 0 * inf would turn torch's inf gradients into NaN.
    d_gx = masked(d_gx, keep)
    d_gh = masked(d_gh, keep) if cell.recurrent_bias_inside else d_gx
    dh_prev = jnp.einsum("dng,dgp->dnp", d_gh, w_hh, precision=precision,
                         out_sharding=explicit_sharding(d_gh))
    if dh_direct is not None:
        dh_prev = dh_prev + dh_direct
    if keep is not None:
        dh_prev = jnp.where(keep, dh_prev, dh)
        dc_prev = None if dc is None else jnp.where(keep, dc_prev, dc)
    return d_gx, d_gh, dh_cand, dh_prev, dc_prev


def backward_loop(cell: Cell, saved: Saved, w_hh, w_hr_t, valid, d_y, d_h_last, d_c_last,
                  precision, offset=0):
    """Reverse loop carrying only ``(dh, dc)``: the gradients of each step's ``gx`` and ``gh``;
    the transpose of :func:`tangent_loop`.

    ``saved`` is :func:`training_loop`'s; the buffers of its record's first part are
    overwritten in place by the gradients of ``gx``. ``w_hh`` is (D, GH, P), torch's layout.
    Returns ``(d_gx, d_gh, dh_cand, d_h0, d_c0)``: ``d_gx`` and ``d_gh`` one (T, N, GH) buffer
    per direction each (the same buffers for a cell with pre-summed biases); ``dh_cand`` (the
    cotangent of each projected output, (T, N, P) per direction) only with a projection, else
    ``()``. ``d_y`` may be that of a longer sequence whose steps ``offset ..`` these are, as in
    :func:`inference_loop`.
    """
    steps, batch = saved.h_prev[0].shape[:2]
    directions = len(saved.h_prev)

    def zeros(like):
        return tuple(jnp.zeros_like(b) for b in like)

    dh_buf = zeros(saved.h_prev) if w_hr_t is not None else ()
    gh_buf = zeros(saved.record[0]) if cell.recurrent_bias_inside else ()

    def ahead(gx_buf, step):
        return (read_rows(gx_buf, step, steps),) + tuple(
            read_rows(part, step, steps) for part in saved.record[1:])

    def body(i, state):
        step = steps - 1 - i
        (dh, dc), record, gx_buf, gh_buf, dh_buf = state
        c_p = read_rows(saved.c_prev, step, steps) if saved.c_prev else None
        keep = keep_at(valid, step, steps)
        d_gx, d_gh, dh_cand, dh_prev, dc_prev = backward_step(
            cell, record, read_rows(saved.h_prev, step, steps), c_p, keep, (dh, dc),
            read_columns(d_y, offset + step, directions), w_hh, w_hr_t, precision)
        gx_buf = write_rows(gx_buf, d_gx, step, steps)
        if gh_buf:
            gh_buf = write_rows(gh_buf, d_gh, step, steps)
        if dh_buf:
            dh_buf = write_rows(dh_buf, dh_cand, step, steps)
        # Read one step ahead, after the write: left to fuse into this step's consumers, the
        # read of the row that is overwritten in place would make XLA copy the whole buffer.
        return (dh_prev, dc_prev), ahead(gx_buf, step - 1), gx_buf, gh_buf, dh_buf

    state = ((d_h_last, d_c_last), ahead(saved.record[0], steps - 1), saved.record[0], gh_buf,
             dh_buf)
    # Not unrolled: in an unrolled body XLA fuses the reads of the buffer that is overwritten in
    # place into the next step's work, and then copies the whole buffer on every iteration.
    (d_h0, d_c0), _, d_gx, d_gh, dh_cand = jax.lax.fori_loop(0, steps, body, state)
    return d_gx, d_gh or d_gx, dh_cand, d_h0, d_c0


def layer_grads(cell: Cell, parts, weights: LayerWeights, saved: Saved, valid, d_y,
                state: State, precision, offset=0):
    """Backward of one layer over the steps that ``saved`` covers (all of them, or a chunk).

    ``parts`` holds the layer input each direction read, (T, N, I) each; ``state`` the
    cotangents of the states leaving the last step. Returns ``(d_parts, grads, (dh, dc))``:
    ``grads`` a :class:`LayerWeights` of gradients, ``(dh, dc)`` the cotangents of the states
    entering the first step. The weight gradients are single GEMMs over all steps.
    """
    d_gx, d_gh, dh_cand, dh, dc = backward_loop(
        cell, saved, weights.w_hh, weights.w_hr_t, valid, d_y, *state, precision, offset
    )
    # Contracted as h^T dG and transposed after: XLA then lays out the narrower operand.
    # Each a sum over the batch, laid out as its weight (``like_weight``).
    d_w_hh = jnp.stack([
        jnp.einsum("tnp,tng->gp", hp, dg, precision=precision,
                   out_sharding=like_weight(weights.w_hh, hp, stacked=True))
        for dg, hp in zip(d_gh, saved.h_prev)
    ])
    d_w_hr_t = None
    if dh_cand:
        d_w_hr_t = jnp.stack([
            jnp.einsum("tnh,tnp->hp", r, dhc, precision=precision,
                       out_sharding=like_weight(weights.w_hr_t, r, stacked=True))
            for r, dhc in zip(saved.r, dh_cand)
        ])
    d_w_ih = tuple(
        jnp.einsum("tng,tni->gi", dg, part, precision=precision,
                   out_sharding=like_weight(w, part))
        for dg, part, w in zip(d_gx, parts, weights.w_ih)
    )

    def bias_grad(bias, grads):
        return None if bias is None else laid_out_as(
            jnp.stack([jnp.sum(g, axis=(0, 1)) for g in grads]), bias)

    d_parts = tuple(
        jnp.einsum("tng,gi->tni", dg, w, precision=precision,
                   out_sharding=explicit_sharding(dg))
        for dg, w in zip(d_gx, weights.w_ih)
    )
    grads = LayerWeights(d_w_ih, d_w_hh, bias_grad(weights.bias, d_gx), d_w_hr_t,
                         bias_grad(weights.bias_hh, d_gh))
    return d_parts, grads, (dh, dc)
