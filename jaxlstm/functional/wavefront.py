"""Stacked unidirectional layers as a wavefront: one loop of ``T + L - 1`` iterations, its
reverse, and its tangent layer by layer.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from jaxlstm._linear import linear_map
from jaxlstm.functional.backward import backward_step
from jaxlstm.functional.carriers import (
    Array,
    LayerInputs,
    LayerWeights,
    Residuals,
    Saved,
    Schedule,
    StackInputs,
    StackResiduals,
    StackSaved,
    State,
)
from jaxlstm.functional.cell import gate_scale
from jaxlstm.functional.dropout import drop
from jaxlstm.functional.indexing import (
    flat_rows,
    masked,
    read_skewed,
    row_at,
    skew,
    unskew,
    write_skewed,
)
from jaxlstm.functional.layer import layer_tangent, prune, zeros_as_none
from jaxlstm.functional.recurrence import cell_step, project


def stack_weights(weights: tuple[LayerWeights, ...]):
    """The per-layer weights stacked along a leading layer axis: ``(w_ih0, w_ih_up, w_hh, bias,
    w_hr_t)`` with ``w_ih0`` (4H, I) layer 0's, ``w_ih_up`` (L-1, 4H, P) the others'."""
    w_hh = jnp.concatenate([w.w_hh for w in weights])
    w_ih_up = jnp.stack([w.w_ih[0] for w in weights[1:]])
    bias = None if weights[0].bias is None else jnp.concatenate([w.bias for w in weights])
    w_hr_t = None
    if weights[0].w_hr_t is not None:
        w_hr_t = jnp.concatenate([w.w_hr_t for w in weights])
    return weights[0].w_ih[0], w_ih_up, w_hh, bias, w_hr_t


def wavefront_loop(inputs: StackInputs, valid, keep, rate: float, schedule: Schedule,
                    record: bool):
    """The stack's forward pass in one loop: ``(y, (h_T, c_T), saved)`` with ``y`` (T, N, P) the
    top layer's output, zero at invalid steps, and ``saved`` a :class:`StackSaved` (``None``
    unless ``record``). ``keep`` (L-1, T, N, P) are the dropout masks between layers or
    ``None``."""
    x, weights, h0, c0 = inputs
    steps, batch = x.shape[:2]
    layers, precision, dtype = len(weights), schedule.precision, h0.dtype
    total = steps + layers - 1
    w_ih0, w_ih_up, w_hh, bias, w_hr_t = stack_weights(weights)
    gates_x = project(x, (w_ih0,), precision)[0]
    w_hh_t, w_up_t = jnp.swapaxes(w_hh, 1, 2), jnp.swapaxes(w_ih_up, 1, 2)
    bias = None if bias is None else bias[:, None, :]
    scale = gate_scale(c0.shape[-1], dtype)
    active = skew(valid, steps, layers, batch)
    drops = None if keep is None else skew(keep, steps, layers - 1, batch)

    def buffer(count, width):
        return jnp.zeros((count, total, batch, width), dtype)

    saved = None
    if record:
        hidden, out = c0.shape[-1], h0.shape[-1]
        saved = StackSaved(buffer(layers, 4 * hidden), buffer(layers, out), buffer(layers, hidden),
                           buffer(layers, hidden) if w_hr_t is not None else None,
                           buffer(layers - 1, out))
    y = jnp.zeros((steps, batch, h0.shape[-1]), dtype)
    below = jnp.zeros((layers - 1, batch, h0.shape[-1]), dtype)

    def body(s, carry):
        state, below, y, saved = carry
        row0 = row_at(gates_x, jnp.minimum(s, steps - 1))
        row_up = jnp.einsum("lnp,lpg->lng", below, w_up_t, precision=precision)
        keep_s = row_at(active, s)[:, :, None]
        h_new, new_state, r, t = cell_step(jnp.concatenate([row0[None], row_up]), state, keep_s,
                                       w_hh_t, w_hr_t, bias, scale, precision)
        out = masked(h_new, keep_s)
        y = jax.lax.dynamic_update_index_in_dim(y, out[-1], jnp.maximum(s - (layers - 1), 0), 0)
        if saved is not None:
            h, c = state
            saved = StackSaved(write_skewed(saved.t, t, s),
                               write_skewed(saved.h_prev, masked(h, keep_s), s),
                               write_skewed(saved.c_prev, masked(c, keep_s), s),
                               None if saved.r is None else write_skewed(saved.r,
                                                                        masked(r, keep_s), s),
                               write_skewed(saved.inputs, below, s))
        below = out[:-1]
        if drops is not None:
            below = drop(below, row_at(drops, s), rate)
        return new_state, below, y, saved

    state, _, y, saved = jax.lax.fori_loop(0, total, body, ((h0, c0), below, y, saved),
                                           unroll=schedule.unroll)
    return y, state, saved


def wavefront_backward(residuals: StackResiduals, rate: float, d_y, d_h_last, d_c_last,
                        precision):
    """The reverse wavefront: layer ``l`` at time ``t`` in the same iteration as layer ``l + 1``
    at time ``t + 1``, carrying each layer's ``(dh, dc)`` and the gradient of what layers 1 ..
    L-1 read. Returns :class:`StackInputs` of gradients; the weight and input gradients are
    single GEMMs over all steps after the loop."""
    x, weights, valid, keep, saved = residuals
    layers, total, batch = saved.t.shape[:3]
    steps = total - layers + 1
    w_ih0, w_ih_up, w_hh, _, w_hr_t = stack_weights(weights)
    scale = gate_scale(saved.c_prev.shape[-1], saved.t.dtype)
    active = skew(valid, steps, layers, batch)
    drops = None if keep is None else skew(keep, steps, layers - 1, batch)
    dh_buf = None if w_hr_t is None else jnp.zeros_like(saved.h_prev)

    def body(i, carry):
        s = total - 1 - i
        (dh, dc), d_below, t, g_buf, dh_buf = carry
        c_p = read_skewed(saved.c_prev, s)
        keep_s = row_at(active, s)[:, :, None]
        # What reaches each layer's output: from the layer above (read one iteration later,
        # through dropout) and, for the top layer, from ``y``.
        if drops is not None:
            d_below = drop(d_below, row_at(drops, s), rate)
        top = row_at(d_y, jnp.clip(s - (layers - 1), 0, steps - 1))
        d_gates, dh_cand, dh_prev, dc_prev = backward_step(
            t, c_p, keep_s, (dh, dc), jnp.concatenate([d_below, top[None]]), w_hh, w_hr_t,
            scale, precision)
        d_below = jnp.einsum("lng,lgp->lnp", d_gates[1:], w_ih_up, precision=precision)
        g_buf = write_skewed(g_buf, d_gates, s)
        if dh_buf is not None:
            dh_buf = write_skewed(dh_buf, dh_cand, s)
        # Read one step ahead, after the write (as in ``backward_loop``).
        return (dh_prev, dc_prev), d_below, read_skewed(g_buf, s - 1), g_buf, dh_buf

    d_below = jnp.zeros((layers - 1,) + saved.h_prev.shape[2:], saved.t.dtype)
    carry = ((d_h_last, d_c_last), d_below, read_skewed(saved.t, total - 1), saved.t, dh_buf)
    (dh0, dc0), _, _, d_gates, dh_cand = jax.lax.fori_loop(0, total, body, carry)

    # One 2-D GEMM per layer and weight over all of that layer's rows (S x N): on the skewed
    # buffers, einsums over (s, n) or a batched one over the layers make XLA copy them first.
    def gemm(a, b):
        return jnp.einsum("ra,rb->ba", flat_rows(a), flat_rows(b), precision=precision)

    first = d_gates[0, :steps]
    grads = []
    for layer in range(layers):
        dg = d_gates[layer]
        w_in = gemm(x, first) if layer == 0 else gemm(saved.inputs[layer - 1], dg)
        grads.append(LayerWeights(
            (w_in,), gemm(saved.h_prev[layer], dg)[None],
            None if weights[0].bias is None else jnp.sum(flat_rows(dg), axis=0)[None],
            None if dh_cand is None else gemm(dh_cand[layer], saved.r[layer])[None],
        ))
    d_x = jnp.einsum("tng,gi->tni", first, w_ih0, precision=precision)
    return StackInputs(d_x, tuple(grads), dh0, dc0)


def stack_tangent(schedule: Schedule, rate: float, residuals: StackResiduals,
                   tangents: StackInputs):
    """The stack's derivative in the direction ``tangents``, layer after layer with
    :func:`layer_tangent` (each layer's input tangent is the output tangent of the one below,
    through dropout). Linear in ``tangents``; its transpose is :func:`wavefront_backward`."""
    x, weights, valid, keep, saved = residuals
    steps = x.shape[0]
    dx, dws, dh0, dc0 = tangents
    layer_x, dy, dh_n, dc_n = x, dx, [], []
    for layer, (w, dw) in enumerate(zip(weights, dws)):
        if layer:
            layer_x = saved.inputs[layer - 1, layer:layer + steps]
            dy = dy if keep is None else drop(dy, keep[layer - 1], rate)
        layer_saved = Saved(unskew(saved.t, layer, steps), unskew(saved.h_prev, layer, steps),
                            unskew(saved.c_prev, layer, steps),
                            () if saved.r is None else unskew(saved.r, layer, steps))
        part = LayerInputs(dy, dw, None if dh0 is None else dh0[layer:layer + 1],
                           None if dc0 is None else dc0[layer:layer + 1])
        dy, (dh, dc) = layer_tangent(schedule, Residuals(layer_x, w, valid, layer_saved, None),
                                      part)
        dh_n.append(dh)
        dc_n.append(dc)
    return dy, (jnp.concatenate(dh_n), jnp.concatenate(dc_n))


@partial(jax.custom_jvp, nondiff_argnums=(3, 4))
def run_stack(inputs: StackInputs, valid: Array | None, keep: Array | None, schedule: Schedule,
           rate: float) -> tuple[Array, State]:
    """``L >= 2`` unidirectional layers as a wavefront: the top layer's output (T, N, P) and the
    final states ``(h_T, c_T)`` (L, N, ·) of every layer, as :func:`run_layer` applied layer after
    layer (with dropout at ``rate`` where ``keep`` (L-1, T, N, P) is given)."""
    y, state, _ = wavefront_loop(inputs, valid, keep, rate, schedule, record=False)
    return y, state


def _stack_jvp(schedule: Schedule, rate: float, primals, tangents):
    inputs, valid, keep = primals
    tangents = zeros_as_none(tangents[0])
    y, state, saved = wavefront_loop(inputs, valid, keep, rate, schedule, record=True)
    residuals = StackResiduals(inputs.x, inputs.weights, valid, keep, saved)

    def cotangent(residuals, cotangents):
        d_y, (d_h, d_c) = cotangents
        grads = wavefront_backward(residuals, rate, d_y, d_h, d_c, schedule.precision)
        return prune(grads, tangents)

    outputs = (y, state)
    return outputs, linear_map(partial(stack_tangent, schedule, rate), cotangent, residuals,
                               tangents, outputs)


run_stack.defjvp(_stack_jvp, symbolic_zeros=True)
