"""Reverse mode: the hand-scheduled backward loop, carrying only ``(dh, dc)``, and the weight
gradients as single GEMMs over all steps after it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlstm.functional.carriers import LayerWeights, Saved, State
from jaxlstm.functional.cell import cell_activate_vjp, cell_state, gate_scale
from jaxlstm.functional.indexing import keep_at, masked, read_columns, read_rows, write_rows


def backward_step(t, c_p, keep, state, d_out, w_hh, w_hr_t, scale, precision):
    """One step of a reverse loop over a leading axis (directions, or a wavefront's layers):
    from the saved ``t`` and ``c_p`` of the step, the cotangents ``state = (dh, dc)`` of the
    states leaving it and ``d_out`` of its output, returns ``(d_gates, dh_cand, dh_prev,
    dc_prev)``: the gate gradients (what the weight GEMMs take), the cotangent of the
    (projected) output, and those of the states entering the step. Where ``keep`` is False the
    state cotangents pass through unchanged and the rest is zero."""
    dh, dc = state
    dh_cand = masked(dh + d_out, keep)
    dc_cand = masked(dc, keep)
    dr = dh_cand
    if w_hr_t is not None:
        dr = jnp.einsum("dnp,dhp->dnh", dh_cand, w_hr_t, precision=precision)
    d_scaled, dc_prev = cell_activate_vjp(t, cell_state(t, c_p), c_p, dr, dc_cand)
    # Select, never multiply by zero: a step past a sequence's end may hold an infinite
    # state, and 0 * inf would turn torch's inf gradients into NaN.
    d_gates = masked(d_scaled * scale, keep)
    dh_prev = jnp.einsum("dng,dgp->dnp", d_gates, w_hh, precision=precision)
    if keep is not None:
        dh_prev = jnp.where(keep, dh_prev, dh)
        dc_prev = jnp.where(keep, dc_prev, dc)
    return d_gates, dh_cand, dh_prev, dc_prev


def backward_loop(saved: Saved, w_hh, w_hr_t, valid, d_y, d_h_last, d_c_last, precision,
                   offset=0):
    """Reverse loop carrying only ``(dh, dc)``: the gradient of each step's gates; the
    transpose of :func:`tangent_loop`.

    ``saved`` is :func:`training_loop`'s; its ``t`` buffers are overwritten in place by the
    gate gradients. ``w_hh`` is (D, 4H, P), torch's layout. Returns ``(d_gates, dh_cand, d_h0,
    d_c0)``: ``d_gates`` one (T, N, 4H) buffer per direction; ``dh_cand`` (the cotangent of each
    projected output, (T, N, P) per direction) only with a projection, else ``()``. ``d_y``
    may be that of a longer sequence whose steps ``offset ..`` these are, as in
    :func:`inference_loop`.
    """
    steps, batch = saved.t[0].shape[:2]
    directions = len(saved.t)
    scale = gate_scale(saved.c_prev[0].shape[-1], saved.t[0].dtype)
    dh_buf = ()
    if w_hr_t is not None:
        dh_buf = tuple(jnp.zeros((steps, batch, d_h_last.shape[-1]), d_h_last.dtype)
                       for _ in range(directions))

    def body(i, state):
        step = steps - 1 - i
        (dh, dc), t, g_buf, dh_buf = state
        c_p = read_rows(saved.c_prev, step, steps)
        keep = keep_at(valid, step, steps)
        d_gates, dh_cand, dh_prev, dc_prev = backward_step(
            t, c_p, keep, (dh, dc), read_columns(d_y, offset + step, directions), w_hh, w_hr_t,
            scale, precision)
        g_buf = write_rows(g_buf, d_gates, step, steps)
        if dh_buf:
            dh_buf = write_rows(dh_buf, dh_cand, step, steps)
        # Read one step ahead, after the write: left to fuse into this step's consumers, the
        # read of the row that is overwritten in place would make XLA copy the whole buffer.
        return (dh_prev, dc_prev), read_rows(g_buf, step - 1, steps), g_buf, dh_buf

    state = ((d_h_last, d_c_last), read_rows(saved.t, steps - 1, steps), saved.t, dh_buf)
    # Not unrolled: in an unrolled body XLA fuses the reads of the buffer that is overwritten in
    # place into the next step's work, and then copies the whole buffer on every iteration.
    (d_h0, d_c0), _, d_gates, dh_cand = jax.lax.fori_loop(0, steps, body, state)
    return d_gates, dh_cand, d_h0, d_c0


def layer_grads(parts, weights: LayerWeights, saved: Saved, valid, d_y, state: State,
                 precision, offset=0):
    """Backward of one layer over the steps that ``saved`` covers (all of them, or a chunk).

    ``parts`` holds the layer input each direction read, (T, N, I) each; ``state`` the
    cotangents of the states leaving the last step. Returns ``(d_parts, grads, (dh, dc))``:
    ``grads`` a :class:`LayerWeights` of gradients, ``(dh, dc)`` the cotangents of the states
    entering the first step. The weight gradients are single GEMMs over all steps.
    """
    d_gates, dh_cand, dh, dc = backward_loop(
        saved, weights.w_hh, weights.w_hr_t, valid, d_y, *state, precision, offset
    )
    # Contracted as h^T dG and transposed after: XLA then lays out the narrower operand.
    d_w_hh = jnp.stack([
        jnp.einsum("tnp,tng->gp", hp, dg, precision=precision)
        for dg, hp in zip(d_gates, saved.h_prev)
    ])
    d_w_hr_t = None
    if dh_cand:
        d_w_hr_t = jnp.stack([
            jnp.einsum("tnh,tnp->hp", r, dhc, precision=precision)
            for r, dhc in zip(saved.r, dh_cand)
        ])
    d_w_ih = tuple(
        jnp.einsum("tng,tni->gi", dg, part, precision=precision)
        for dg, part in zip(d_gates, parts)
    )
    d_bias = None
    if weights.bias is not None:
        d_bias = jnp.stack([jnp.sum(dg, axis=(0, 1)) for dg in d_gates])
    d_parts = tuple(
        jnp.einsum("tng,gi->tni", dg, w, precision=precision)
        for dg, w in zip(d_gates, weights.w_ih)
    )
    return d_parts, LayerWeights(d_w_ih, d_w_hh, d_bias, d_w_hr_t), (dh, dc)
