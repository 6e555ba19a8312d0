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
from jaxlstm.functional.cells import Cell
from jaxlstm.functional.dropout import drop
from jaxlstm.functional.indexing import (
    batch_zeros,
    flat_rows,
    masked,
    read_skewed,
    row_at,
    skew,
    unskew,
    write_skewed,
)
from jaxlstm.functional.layer import layer_tangent, prune, zeros_as_none
from jaxlstm.functional.recurrence import cell_step, project, step_biases
from jaxlstm.functional.sharding import explicit_sharding, laid_out_as, like_weight


def stack_weights(weights: tuple[LayerWeights, ...]):
    """The per-layer weights stacked along a leading layer axis: ``(w_ih0, w_ih_up, stacked)``
    with ``w_ih0`` (GH, I) layer 0's, ``w_ih_up`` (L-1, GH, P) the others' and ``stacked`` a
    :class:`LayerWeights` of the rest, its layer axis where the direction axis was."""
    w_ih_up = jnp.stack([w.w_ih[0] for w in weights[1:]])
    stacked = jax.tree.map(lambda *parts: jnp.concatenate(parts),
                           *[w._replace(w_ih=()) for w in weights])
    return weights[0].w_ih[0], w_ih_up, stacked


def wavefront_loop(cell: Cell, inputs: StackInputs, valid, keep, rate: float,
                   schedule: Schedule, record: bool):
    """The stack's forward pass in one loop: ``(y, (h_T, c_T), saved)`` with ``y`` (T, N, P) the
    top layer's output, zero at invalid steps, and ``saved`` a :class:`StackSaved` (``None``
    unless ``record``). ``keep`` (L-1, T, N, P) are the dropout masks between layers or
    ``None``."""
    x, weights, h0, c0 = inputs
    steps, batch = x.shape[:2]
    layers, precision, dtype = len(weights), schedule.precision, h0.dtype
    total = steps + layers - 1
    w_ih0, w_ih_up, stacked = stack_weights(weights)
    gates_x = project(x, (w_ih0,), precision)[0]
    w_hh_t, w_up_t = jnp.swapaxes(stacked.w_hh, 1, 2), jnp.swapaxes(w_ih_up, 1, 2)
    w_hr_t, biases = stacked.w_hr_t, step_biases(stacked)
    active = skew(valid, steps, layers, batch)
    drops = None if keep is None else skew(keep, steps, layers - 1, batch)

    def buffer(count, width):
        return batch_zeros(gates_x, (count, total, batch, width), dtype, axis=2)

    saved = None
    if record:
        hidden, out = gates_x.shape[-1] // cell.gates, h0.shape[-1]
        saved = StackSaved(tuple(buffer(layers, w) for w in cell.record_widths(hidden)),
                           buffer(layers, out), buffer(layers, hidden) if cell.memory else None,
                           buffer(layers, hidden) if w_hr_t is not None else None,
                           buffer(layers - 1, out))
    y = batch_zeros(gates_x, (steps, batch, h0.shape[-1]), dtype)
    below = batch_zeros(gates_x, (layers - 1, batch, h0.shape[-1]), dtype)

    def body(s, carry):
        state, below, y, saved = carry
        row0 = row_at(gates_x, jnp.minimum(s, steps - 1))
        row_up = jnp.einsum("lnp,lpg->lng", below, w_up_t, precision=precision,
                            out_sharding=explicit_sharding(below))
        keep_s = row_at(active, s)[:, :, None]
        h_new, new_state, r, rec = cell_step(cell, jnp.concatenate([row0[None], row_up]), state,
                                             keep_s, w_hh_t, w_hr_t, biases, precision)
        out = masked(h_new, keep_s)
        y = jax.lax.dynamic_update_index_in_dim(y, out[-1], jnp.maximum(s - (layers - 1), 0), 0)
        if saved is not None:
            h, c = state
            def write(buf, rows):
                return None if buf is None else write_skewed(buf, rows, s)

            saved = StackSaved(tuple(write(b, part) for b, part in zip(saved.record, rec)),
                               write(saved.h_prev, masked(h, keep_s)),
                               write(saved.c_prev, None if c is None else masked(c, keep_s)),
                               write(saved.r, masked(r, keep_s)), write(saved.inputs, below))
        below = out[:-1]
        if drops is not None:
            below = drop(below, row_at(drops, s), rate)
        return new_state, below, y, saved

    state, _, y, saved = jax.lax.fori_loop(0, total, body, ((h0, c0), below, y, saved),
                                           unroll=schedule.unroll)
    return y, state, saved


def wavefront_backward(cell: Cell, residuals: StackResiduals, rate: float, d_y, d_h_last,
                       d_c_last, precision):
    """The reverse wavefront: layer ``l`` at time ``t`` in the same iteration as layer ``l + 1``
    at time ``t + 1``, carrying each layer's ``(dh, dc)`` and the gradient of what layers 1 ..
    L-1 read. Returns :class:`StackInputs` of gradients; the weight and input gradients are
    single GEMMs over all steps after the loop."""
    x, weights, valid, keep, saved = residuals
    layers, total, batch = saved.h_prev.shape[:3]
    steps = total - layers + 1
    w_ih0, w_ih_up, stacked = stack_weights(weights)
    w_hr_t = stacked.w_hr_t
    active = skew(valid, steps, layers, batch)
    drops = None if keep is None else skew(keep, steps, layers - 1, batch)
    dh_buf = None if w_hr_t is None else jnp.zeros_like(saved.h_prev)
    gh_buf = jnp.zeros_like(saved.record[0]) if cell.recurrent_bias_inside else None

    def ahead(gx_buf, s):
        return (read_skewed(gx_buf, s),) + tuple(read_skewed(p, s) for p in saved.record[1:])

    def body(i, carry):
        s = total - 1 - i
        (dh, dc), d_below, record, gx_buf, gh_buf, dh_buf = carry
        c_p = None if saved.c_prev is None else read_skewed(saved.c_prev, s)
        keep_s = row_at(active, s)[:, :, None]
        # What reaches each layer's output: from the layer above (read one iteration later,
        # through dropout) and, for the top layer, from ``y``.
        if drops is not None:
            d_below = drop(d_below, row_at(drops, s), rate)
        top = row_at(d_y, jnp.clip(s - (layers - 1), 0, steps - 1))
        d_gx, d_gh, dh_cand, dh_prev, dc_prev = backward_step(
            cell, record, read_skewed(saved.h_prev, s), c_p, keep_s, (dh, dc),
            jnp.concatenate([d_below, top[None]]), stacked.w_hh, w_hr_t, precision)
        d_below = jnp.einsum("lng,lgp->lnp", d_gx[1:], w_ih_up, precision=precision,
                             out_sharding=explicit_sharding(d_gx))
        gx_buf = write_skewed(gx_buf, d_gx, s)
        if gh_buf is not None:
            gh_buf = write_skewed(gh_buf, d_gh, s)
        if dh_buf is not None:
            dh_buf = write_skewed(dh_buf, dh_cand, s)
        # Read one step ahead, after the write (as in ``backward_loop``).
        return (dh_prev, dc_prev), d_below, ahead(gx_buf, s - 1), gx_buf, gh_buf, dh_buf

    d_below = batch_zeros(saved.h_prev, (layers - 1,) + saved.h_prev.shape[2:],
                          saved.h_prev.dtype, like_axis=2)
    carry = ((d_h_last, d_c_last), d_below, ahead(saved.record[0], total - 1), saved.record[0],
             gh_buf, dh_buf)
    (dh0, dc0), _, _, d_gx, d_gh, dh_cand = jax.lax.fori_loop(0, total, body, carry)
    d_gh = d_gx if d_gh is None else d_gh

    # One 2-D GEMM per layer and weight over all of that layer's rows (S x N): on the skewed
    # buffers, einsums over (s, n) or a batched one over the layers make XLA copy them first.
    def gemm(a, b, weight, stacked=False):
        out = like_weight(weight, a, stacked=stacked)
        if out is None:
            return jnp.einsum("ra,rb->ba", flat_rows(a), flat_rows(b), precision=precision)
        # Under Explicit axes rows split over devices do not flatten; summed where they lie.
        return jnp.einsum("...a,...b->ba", a, b, precision=precision, out_sharding=out)

    def bias_grad(bias, grads):
        return None if bias is None else laid_out_as(jnp.sum(grads, axis=(0, 1))[None], bias)

    first = d_gx[0, :steps]
    grads = []
    for layer in range(layers):
        dg = d_gx[layer]
        w = weights[layer]
        w_in = (gemm(x, first, w.w_ih[0]) if layer == 0
                else gemm(saved.inputs[layer - 1], dg, w.w_ih[0]))
        grads.append(LayerWeights(
            (w_in,), gemm(saved.h_prev[layer], d_gh[layer], w.w_hh, True)[None],
            bias_grad(weights[0].bias, dg),
            None if dh_cand is None else gemm(dh_cand[layer], saved.r[layer], w.w_hr_t,
                                              True)[None],
            bias_grad(weights[0].bias_hh, d_gh[layer]),
        ))
    d_x = jnp.einsum("tng,gi->tni", first, w_ih0, precision=precision,
                     out_sharding=explicit_sharding(first))
    return StackInputs(d_x, tuple(grads), dh0, dc0)


def _layer_rows(buf, layer, steps):
    return () if buf is None else unskew(buf, layer, steps)


def stack_tangent(cell: Cell, schedule: Schedule, rate: float, residuals: StackResiduals,
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
        rows = partial(_layer_rows, layer=layer, steps=steps)
        layer_saved = Saved(tuple(rows(part) for part in saved.record), rows(saved.h_prev),
                            rows(saved.c_prev), rows(saved.r))
        part = LayerInputs(dy, dw, None if dh0 is None else dh0[layer:layer + 1],
                           None if dc0 is None else dc0[layer:layer + 1])
        dy, (dh, dc) = layer_tangent(cell, schedule,
                                     Residuals(layer_x, w, valid, layer_saved, None), part)
        dh_n.append(dh)
        dc_n.append(dc)
    return dy, (jnp.concatenate(dh_n), None if dc_n[0] is None else jnp.concatenate(dc_n))


@partial(jax.custom_jvp, nondiff_argnums=(3, 4, 5))
def run_stack(inputs: StackInputs, valid: Array | None, keep: Array | None, cell: Cell,
              schedule: Schedule, rate: float) -> tuple[Array, State]:
    """``L >= 2`` unidirectional layers of ``cell`` as a wavefront: the top layer's output
    (T, N, P) and the final states ``(h_T, c_T)`` (L, N, ·) of every layer, as
    :func:`run_layer` applied layer after layer (with dropout at ``rate`` where ``keep``
    (L-1, T, N, P) is given)."""
    y, state, _ = wavefront_loop(cell, inputs, valid, keep, rate, schedule, record=False)
    return y, state


def _stack_jvp(cell: Cell, schedule: Schedule, rate: float, primals, tangents):
    inputs, valid, keep = primals
    tangents = zeros_as_none(tangents[0])
    y, state, saved = wavefront_loop(cell, inputs, valid, keep, rate, schedule, record=True)
    residuals = StackResiduals(inputs.x, inputs.weights, valid, keep, saved)

    def cotangent(residuals, cotangents):
        d_y, (d_h, d_c) = cotangents
        grads = wavefront_backward(cell, residuals, rate, d_y, d_h, d_c, schedule.precision)
        return prune(grads, tangents)

    outputs = (y, state)
    return outputs, linear_map(partial(stack_tangent, cell, schedule, rate), cotangent,
                               residuals, tangents, outputs)


run_stack.defjvp(_stack_jvp, symbolic_zeros=True)
