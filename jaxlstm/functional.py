"""The LSTM math, once: pure functions of (params dict, inputs, config).

``params`` is a flat mapping from torch's parameter names (``weight_ih_l0``, ``bias_hh_l1_reverse``,
``weight_hr_l0``, ``weight_ih``, ...) to arrays with torch's shapes. Everything else in the package
(modules, porting, the parity suite) is a shell over these functions.

Equations (torch's, gates stacked along ``4H`` in the order i, f, g, o)::

    gates = x W_ih^T + b_ih + h W_hh^T + b_hh
    c'    = sigmoid(f) * c + sigmoid(i) * tanh(g)
    h'    = sigmoid(o) * tanh(c')              (h' <- h' W_hr^T when proj_size > 0)

Schedule: each layer projects its input with one GEMM per direction (the forward pass alone does
so a chunk of steps at a time), and both directions of a bidirectional layer advance together in
one loop (a batched matmul over the direction axis), the reverse one reading every buffer from the
end. Variable lengths follow torch's ``PackedSequence`` semantics: the reverse direction starts
at each sequence's own last valid element, states stop updating after a sequence's last step,
outputs past it are ``padding_value``.

Derivatives: each layer is a ``jax.custom_jvp``. Its tangent is a linear recurrence over the
activations the training loop records (the weights' tangents enter through GEMMs over all steps
before the loop), declared with ``jaxlstm._linear.linear_map`` to have the hand-scheduled
backward loop as its transpose; JAX's reverse mode transposes the tangent, so it runs exactly
that backward pass. Both derivative loops use the cell's one hand-written derivative
(:func:`_cell_activate_vjp`, whose transpose is the cell's JVP).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from jaxlstm._linear import linear_map
from jaxlstm.config import (
    LSTMCellConfig,
    LSTMConfig,
    check_cell_inputs,
    check_lstm_inputs,
    check_params,
    check_seq_lengths,
    param_suffix,
)

Array = jax.Array
State = tuple[Array, Array]


# sigmoid(x) = 0.5 * tanh(x / 2) + 0.5, so one tanh over all 4H pre-activations computes every
# gate once the i, f and o rows are scaled by 1/2. Scaling by a power of two is exact; the
# sequence path applies it inside each step, fused with the step's other elementwise work, so
# that the weights are used as they are (no scaled copies to make, or to differentiate through).
_GATE_SCALE = (0.5, 0.5, 1.0, 0.5)


def gate_scale(hidden_size: int, dtype: Any) -> Array:
    """Per-row factors (4H,) that turn torch's gate pre-activations into :func:`cell_activate`'s."""
    return jnp.repeat(jnp.asarray(_GATE_SCALE, dtype), hidden_size)


def _sigmoid_from_tanh(t: Array) -> Array:
    """``sigmoid(x)`` from ``t = tanh(x / 2)``."""
    return 0.5 * t + 0.5


def cell_activate(scaled_gates: Array, c: Array) -> tuple[Array, Array, Array]:
    """The LSTM state update from scaled pre-activations (..., 4H) and cell state ``c`` (..., H).

    This is the only place the gate equations live. ``scaled_gates`` are torch's
    ``x W_ih^T + b_ih + h W_hh^T + b_hh`` times :func:`gate_scale`. Returns ``(h, c', t)`` with
    ``h`` before any projection and ``t = tanh(scaled_gates)`` (what the derivatives need).
    """
    t = jnp.tanh(scaled_gates)
    c_new = _cell_state(t, c)
    t_o = jnp.split(t, 4, axis=-1)[3]
    return _sigmoid_from_tanh(t_o) * jnp.tanh(c_new), c_new, t


def _cell_state(t: Array, c: Array) -> Array:
    """``c' = sigmoid(f) * c + sigmoid(i) * tanh(g)`` from ``t = tanh(scaled_gates)``; the
    derivative loops recompute it from the saved ``t`` rather than saving ``c'``."""
    t_i, t_f, g, _ = jnp.split(t, 4, axis=-1)
    return _sigmoid_from_tanh(t_f) * c + _sigmoid_from_tanh(t_i) * g


def _cell_activate_vjp(
    t: Array, c_new: Array, c: Array, dh: Array, dc_new: Array
) -> tuple[Array, Array]:
    """Reverse of :func:`cell_activate`: cotangents of ``(scaled_gates, c)`` from those of
    ``(h, c')``, using the saved ``t = tanh(scaled_gates)``. The one hand-written derivative of
    the gate equations: :func:`_cell_activate_jvp` is its transpose."""
    t_i, t_f, g, t_o = jnp.split(t, 4, axis=-1)
    tanh_c = jnp.tanh(c_new)
    dc_total = dc_new + dh * _sigmoid_from_tanh(t_o) * (1.0 - tanh_c * tanh_c)
    # d gate = upstream * partner * tanh'(scaled) * scale, written over all 4H columns at once
    # so that the step compiles to one fused loop rather than four pieces and a concatenation.
    upstream = jnp.concatenate([dc_total, dc_total, dc_total, dh], axis=-1)
    partner = jnp.concatenate([g, c, _sigmoid_from_tanh(t_i), tanh_c], axis=-1)
    scale = gate_scale(c.shape[-1], t.dtype)
    d_scaled = upstream * partner * (1.0 - t * t) * scale
    return d_scaled, dc_total * _sigmoid_from_tanh(t_f)


def _cell_activate_jvp(
    t: Array, c_new: Array, c: Array, d_scaled: Array, dc: Array
) -> tuple[Array, Array]:
    """Forward derivative of :func:`cell_activate`: tangents of ``(h, c')`` from those of
    ``(scaled_gates, c)``, as the transpose of :func:`_cell_activate_vjp` (it is linear in its
    cotangents), so that the derivative of the gate equations is written once."""
    state = jax.ShapeDtypeStruct(c.shape, c.dtype)
    vjp = partial(_cell_activate_vjp, t, c_new, c)
    return jax.linear_transpose(vjp, state, state)((d_scaled, dc))


@jax.custom_jvp
def cell_update(gates: Array, c: Array) -> State:
    """One LSTM step from torch's pre-activations ``gates`` (..., 4H) and ``c`` (..., H).

    Returns ``(h, c')``: ``c' = sigmoid(f) * c + sigmoid(i) * tanh(g)``,
    ``h = sigmoid(o) * tanh(c')``. Differentiated (both modes) by the same code as the
    sequence path.
    """
    h, c_new, _ = cell_activate(gates * gate_scale(c.shape[-1], gates.dtype), c)
    return h, c_new


def _cell_update_tangent(residuals, tangents):
    t, c_new, c = residuals
    d_gates, dc = tangents
    return _cell_activate_jvp(t, c_new, c, d_gates * gate_scale(c.shape[-1], t.dtype), dc)


def _cell_update_cotangent(residuals, cotangents):
    t, c_new, c = residuals
    d_scaled, d_c = _cell_activate_vjp(t, c_new, c, *cotangents)
    return d_scaled * gate_scale(c.shape[-1], t.dtype), d_c


@cell_update.defjvp
def _cell_update_jvp(primals, tangents):
    gates, c = primals
    h, c_new, t = cell_activate(gates * gate_scale(c.shape[-1], gates.dtype), c)
    out = (h, c_new)
    return out, linear_map(_cell_update_tangent, _cell_update_cotangent, (t, c_new, c),
                           tangents, out)


def _time(direction: int, step: Array, steps: int) -> Array:
    """The time a direction works on at loop step ``step``: the forward direction goes
    ``0 .. T-1``, the reverse one ``T-1 .. 0``. Every buffer stays in natural time order, so
    nothing is ever reversed or copied to give the reverse direction its reading order."""
    return step if direction == 0 else steps - 1 - step


def _rows(buffers, step: Array, steps: int) -> Array:
    """Each direction's row at its own time: D buffers (T, N, F) -> (D, N, F)."""
    return jnp.stack([
        jax.lax.dynamic_index_in_dim(b, _time(d, step, steps), keepdims=False)
        for d, b in enumerate(buffers)
    ])


def _put_rows(buffers, rows: Array, step: Array, steps: int) -> tuple[Array, ...]:
    """Write ``rows`` (D, N, F) into each direction's buffer (T, N, F) at its own time."""
    return tuple(
        jax.lax.dynamic_update_index_in_dim(b, rows[d], _time(d, step, steps), 0)
        for d, b in enumerate(buffers)
    )


def _columns(y: Array, step: Array, directions: int) -> Array:
    """Each direction's block of a layer output (T, N, D*P) at its own time -> (D, N, P)."""
    width = y.shape[-1] // directions
    zero = jnp.zeros_like(step)
    return jnp.stack([
        jax.lax.dynamic_slice(y, (_time(d, step, y.shape[0]), zero, zero + d * width),
                              (1, y.shape[1], width))[0]
        for d in range(directions)
    ])


def _put_columns(y: Array, blocks: Array, step: Array) -> Array:
    """Write ``blocks`` (D, N, P) into the layer output (T, N, D*P): direction ``d`` fills
    columns ``d*P .. (d+1)*P`` at its own time, the layout torch's output has."""
    zero = jnp.zeros_like(step)
    for d in range(blocks.shape[0]):
        index = (_time(d, step, y.shape[0]), zero, zero + d * blocks.shape[-1])
        y = jax.lax.dynamic_update_slice(y, blocks[d][None], index)
    return y



def _masked(x: Array, keep: Array | None) -> Array:
    return x if keep is None else jnp.where(keep, x, jnp.zeros_like(x))


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
    pass) and ``wavefront`` (stacked unidirectional layers in one loop, :func:`_stack`)."""

    precision: Any
    unroll: int
    remat: int
    chunk_rows: int
    wavefront: bool = False


def _step(row, state, keep, w_hh_t, w_hr_t, bias, scale, precision):
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


def _keep(valid, step, steps):
    return None if valid is None else _rows(valid, step, steps)[:, :, None]


def _inference_loop(gates_x, weights: LayerWeights, state: State, valid, y, offset,
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
        keep = _keep(valid, step, steps)
        h_new, state, _, _ = _step(_rows(gates_x, step, steps), state, keep, w_hh_t,
                                   weights.w_hr_t, bias, scale, schedule.precision)
        return state, _put_columns(y, _masked(h_new, keep), offset + step)

    state, y = jax.lax.fori_loop(0, steps, body, (state, y), unroll=schedule.unroll)
    return y, state


def _training_loop(gates_x, weights: LayerWeights, state: State, valid, schedule: Schedule):
    """The recurrence as :func:`_inference_loop`, recording :class:`Saved` for the derivatives:
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
        keep = _keep(valid, step, steps)
        h_new, new_state, r, t = _step(_rows(saved.t, step, steps), state, keep, w_hh_t,
                                       weights.w_hr_t, bias, scale, schedule.precision)
        h, c = state
        saved = Saved(
            _put_rows(saved.t, t, step, steps),
            _put_rows(saved.h_prev, _masked(h, keep), step, steps),
            _put_rows(saved.c_prev, _masked(c, keep), step, steps),
            _put_rows(saved.r, _masked(r, keep), step, steps) if saved.r else (),
        )
        return new_state, _put_columns(y, _masked(h_new, keep), step), saved

    state, y, saved = jax.lax.fori_loop(0, steps, body, (state, y, saved),
                                        unroll=schedule.unroll)
    return y, state, saved


def _tangent_loop(saved: Saved, drive, drive_h, weights: LayerWeights, state: State, valid,
                  schedule: Schedule):
    """The layer's tangent: the linear recurrence of ``(dh, dc)`` along :class:`Saved`.

    ``drive`` (one (T, N, 4H) buffer per direction) is every gate tangent that does not come
    through ``h``: the input's and the weights' contributions, computed by GEMMs over all steps
    before the loop; ``drive_h`` (one (T, N, P) buffer per direction, or ``()``) is the
    projection weight's contribution to each output. The cell's derivative is
    :func:`_cell_activate_jvp`. Returns ``(dy, (dh_T, dc_T))`` shaped like the layer's outputs.
    """
    steps, batch = saved.t[0].shape[:2]
    h0, _ = state
    w_hh_t = jnp.swapaxes(weights.w_hh, 1, 2)
    scale = gate_scale(saved.c_prev[0].shape[-1], h0.dtype)
    dy = jnp.zeros((steps, batch, len(saved.t) * h0.shape[-1]), h0.dtype)

    def body(step, carry):
        (dh, dc), dy = carry
        keep = _keep(valid, step, steps)
        t, c_p = _rows(saved.t, step, steps), _rows(saved.c_prev, step, steps)
        d_gates = _rows(drive, step, steps) + jnp.einsum(
            "dnp,dpg->dng", dh, w_hh_t, precision=schedule.precision)
        dr, dc_new = _cell_activate_jvp(t, _cell_state(t, c_p), c_p, d_gates * scale, dc)
        dh_new = dr
        if weights.w_hr_t is not None:
            dh_new = jnp.einsum("dnh,dhp->dnp", dr, weights.w_hr_t, precision=schedule.precision)
            if drive_h:
                dh_new = dh_new + _rows(drive_h, step, steps)
        # Select, never multiply by zero (as the backward loop): invalid steps may hold inf.
        if keep is not None:
            dh_new, dc_new = jnp.where(keep, dh_new, dh), jnp.where(keep, dc_new, dc)
        return (dh_new, dc_new), _put_columns(dy, _masked(dh_new, keep), step)

    state, dy = jax.lax.fori_loop(0, steps, body, (state, dy), unroll=schedule.unroll)
    return dy, state


def _backward_step(t, c_p, keep, state, d_out, w_hh, w_hr_t, scale, precision):
    """One step of a reverse loop over a leading axis (directions, or a wavefront's layers):
    from the saved ``t`` and ``c_p`` of the step, the cotangents ``state = (dh, dc)`` of the
    states leaving it and ``d_out`` of its output, returns ``(d_gates, dh_cand, dh_prev,
    dc_prev)``: the gate gradients (what the weight GEMMs take), the cotangent of the
    (projected) output, and those of the states entering the step. Where ``keep`` is False the
    state cotangents pass through unchanged and the rest is zero."""
    dh, dc = state
    dh_cand = _masked(dh + d_out, keep)
    dc_cand = _masked(dc, keep)
    dr = dh_cand
    if w_hr_t is not None:
        dr = jnp.einsum("dnp,dhp->dnh", dh_cand, w_hr_t, precision=precision)
    d_scaled, dc_prev = _cell_activate_vjp(t, _cell_state(t, c_p), c_p, dr, dc_cand)
    # Select, never multiply by zero: a step past a sequence's end may hold an infinite
    # state, and 0 * inf would turn torch's inf gradients into NaN.
    d_gates = _masked(d_scaled * scale, keep)
    dh_prev = jnp.einsum("dng,dgp->dnp", d_gates, w_hh, precision=precision)
    if keep is not None:
        dh_prev = jnp.where(keep, dh_prev, dh)
        dc_prev = jnp.where(keep, dc_prev, dc)
    return d_gates, dh_cand, dh_prev, dc_prev


def _backward_loop(saved: Saved, w_hh, w_hr_t, valid, d_y, d_h_last, d_c_last, precision,
                   offset=0):
    """Reverse loop carrying only ``(dh, dc)``: the gradient of each step's gates; the
    transpose of :func:`_tangent_loop`.

    ``saved`` is :func:`_training_loop`'s; its ``t`` buffers are overwritten in place by the
    gate gradients. ``w_hh`` is (D, 4H, P), torch's layout. Returns ``(d_gates, dh_cand, d_h0,
    d_c0)``: ``d_gates`` one (T, N, 4H) buffer per direction; ``dh_cand`` (the cotangent of each
    projected output, (T, N, P) per direction) only with a projection, else ``()``. ``d_y``
    may be that of a longer sequence whose steps ``offset ..`` these are, as in
    :func:`_inference_loop`.
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
        c_p = _rows(saved.c_prev, step, steps)
        keep = _keep(valid, step, steps)
        d_gates, dh_cand, dh_prev, dc_prev = _backward_step(
            t, c_p, keep, (dh, dc), _columns(d_y, offset + step, directions), w_hh, w_hr_t,
            scale, precision)
        g_buf = _put_rows(g_buf, d_gates, step, steps)
        if dh_buf:
            dh_buf = _put_rows(dh_buf, dh_cand, step, steps)
        # Read one step ahead, after the write: left to fuse into this step's consumers, the
        # read of the row that is overwritten in place would make XLA copy the whole buffer.
        return (dh_prev, dc_prev), _rows(g_buf, step - 1, steps), g_buf, dh_buf

    state = ((d_h_last, d_c_last), _rows(saved.t, steps - 1, steps), saved.t, dh_buf)
    # Not unrolled: in an unrolled body XLA fuses the reads of the buffer that is overwritten in
    # place into the next step's work, and then copies the whole buffer on every iteration.
    (d_h0, d_c0), _, d_gates, dh_cand = jax.lax.fori_loop(0, steps, body, state)
    return d_gates, dh_cand, d_h0, d_c0


def _layer_grads(parts, weights: LayerWeights, saved: Saved, valid, d_y, state: State,
                 precision, offset=0):
    """Backward of one layer over the steps that ``saved`` covers (all of them, or a chunk).

    ``parts`` holds the layer input each direction read, (T, N, I) each; ``state`` the
    cotangents of the states leaving the last step. Returns ``(d_parts, grads, (dh, dc))``:
    ``grads`` a :class:`LayerWeights` of gradients, ``(dh, dc)`` the cotangents of the states
    entering the first step. The weight gradients are single GEMMs over all steps.
    """
    d_gates, dh_cand, dh, dc = _backward_loop(
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


def _project(inputs, w_ih, precision: Any) -> tuple[Array, ...]:
    """Each direction's input projections for all steps in one GEMM: (T, N, I) -> (T, N, 4H),
    with ``w_ih`` one (4H, I) weight per direction in torch's layout. ``inputs`` is one array
    for all directions, or one per direction."""
    if not isinstance(inputs, tuple):
        inputs = (inputs,) * len(w_ih)
    return tuple(
        jnp.einsum("tni,gi->tng", x, w, precision=precision) for x, w in zip(inputs, w_ih)
    )


def _each(valid: Array | None, directions: int) -> tuple[Array, ...] | None:
    return None if valid is None else (valid,) * directions


def _chunked(x: Array, valid: Array | None, chunk: int) -> tuple[Array, Array | None]:
    """Pad time to a multiple of ``chunk`` (the padding is invalid) and split it into chunks:
    (T, N, F) -> (K, chunk, N, F), valid (T, N) -> (K, chunk, N) (``None`` if it was and no
    padding was needed)."""
    steps, batch = x.shape[:2]
    chunks = -(-steps // chunk)
    pad = chunks * chunk - steps
    if pad and valid is None:
        valid = jnp.ones((steps, batch), bool)
    x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)).reshape(chunks, chunk, *x.shape[1:])
    if valid is not None:
        valid = jnp.pad(valid, [(0, pad), (0, 0)]).reshape(chunks, chunk, batch)
    return x, valid


def _chunk_parts(chunks: Array | None, k: Array, directions: int) -> tuple[Array, ...] | None:
    """The chunk each direction works on at chunk-loop step ``k``: the forward direction goes
    through chunks ``0 .. K-1``, the reverse one through ``K-1 .. 0``."""
    if chunks is None:
        return None
    return tuple(
        jax.lax.dynamic_index_in_dim(chunks, _time(d, k, chunks.shape[0]), keepdims=False)
        for d in range(directions)
    )


def _chunked_forward(inputs: LayerInputs, valid, chunk: int, schedule: Schedule):
    """Projection and recurrence of one layer a chunk of ``chunk`` steps at a time, so that only
    one chunk's projections exist at once. Returns ``(y, (h_T, c_T), starts)``: ``starts`` are
    the states entering each chunk-loop step."""
    x, weights, h0, c0 = inputs
    directions = len(weights.w_ih)
    chunks, valid_chunks = _chunked(x, valid, chunk)
    y = jnp.zeros((chunks.shape[0] * chunk, x.shape[1], directions * h0.shape[-1]), h0.dtype)

    def run_chunk(carry, k):
        state, y = carry
        gates_x = _project(_chunk_parts(chunks, k, directions), weights.w_ih,
                           schedule.precision)
        y, new_state = _inference_loop(gates_x, weights, state,
                                       _chunk_parts(valid_chunks, k, directions), y, k * chunk,
                                       schedule)
        return (new_state, y), state

    (state, y), starts = jax.lax.scan(run_chunk, ((h0, c0), y), jnp.arange(chunks.shape[0]))
    return y[: x.shape[0]], state, starts


# The default of ``lstm(..., chunk_rows=)``.
DEFAULT_CHUNK_ROWS = 1024


def _inference_chunk(steps: int, batch: int, rows: int) -> int:
    """The chunk length of the forward-only pass for about ``rows`` rows (steps x batch) of
    input projection per chunk (``steps``: no chunks), dividing ``steps`` where a near choice
    does so that no step is padding."""
    target = round(steps * batch / rows)
    if target <= 1:
        return steps
    for chunks in range(target, 2 * target + 1):
        if steps % chunks == 0:
            return steps // chunks
    return -(-steps // target)


@partial(jax.custom_jvp, nondiff_argnums=(2,))
def _layer(inputs: LayerInputs, valid: Array | None, schedule: Schedule) -> tuple[Array, State]:
    """One layer, D directions: input projection and recurrence.

    **Arguments:**

    - ``inputs``: :class:`LayerInputs`: ``x`` (T, N, I) the layer input, its
      :class:`LayerWeights`, and the initial states ``h0`` (D, N, P), ``c0`` (D, N, H).
    - ``valid``: (T, N) bool, True where step t lies inside sequence n, or ``None`` (all
      valid). Valid steps are a prefix of each sequence, so the reverse direction, reading
      from the end, holds its initial state until it reaches a sequence's last element:
      torch's ``PackedSequence`` semantics without reversing anything.
    - ``schedule``: :class:`Schedule`.

    **Returns:** ``(y, (h_T, c_T))``: ``y`` the layer output (T, N, D*P), zero at invalid steps.

    The forward-only pass projects the input a chunk at a time (:func:`_inference_chunk`).
    Derivatives go through :func:`_layer_jvp`.
    """
    x, weights, h0, c0 = inputs
    chunk = _inference_chunk(*x.shape[:2], schedule.chunk_rows)
    if chunk < x.shape[0]:
        y, state, _ = _chunked_forward(inputs, valid, chunk, schedule)
        return y, state
    y = jnp.zeros((*x.shape[:2], len(weights.w_ih) * h0.shape[-1]), h0.dtype)
    return _inference_loop(_project(x, weights.w_ih, schedule.precision), weights, (h0, c0),
                           _each(valid, len(weights.w_ih)), y, 0, schedule)


def _layer_forward(inputs: LayerInputs, valid, schedule: Schedule):
    """The forward pass that derivatives start from: ``((y, (h_T, c_T)), residuals)``. With
    remat, the chunk-start states are all it keeps of the recurrence."""
    x, weights, h0, c0 = inputs
    if schedule.remat:
        y, state, starts = _chunked_forward(inputs, valid, schedule.remat, schedule)
        return (y, state), Residuals(x, weights, valid, None, starts)
    gates_x = _project(x, weights.w_ih, schedule.precision)
    y, state, saved = _training_loop(gates_x, weights, (h0, c0),
                                     _each(valid, len(weights.w_ih)), schedule)
    return (y, state), Residuals(x, weights, valid, saved, None)


def _layer_tangent(schedule: Schedule, residuals: Residuals, tangents: LayerInputs):
    """The layer's derivative in the direction ``tangents`` (``None`` leaves are zero):
    ``(dy, (dh_T, dc_T))``. Linear in ``tangents``; its transpose is :func:`_layer_cotangent`."""
    x, weights, valid, saved, starts = residuals
    directions, precision = len(weights.w_ih), schedule.precision
    valid = _each(valid, directions)
    if saved is None:
        # remat kept only the chunk starts; the tangent loop reads every step's activations.
        start = jax.tree.map(lambda s: s[0], starts)
        gates_x = _project(x, weights.w_ih, precision)
        _, _, saved = _training_loop(gates_x, weights, start, valid, schedule)
    dx, dw, dh0, dc0 = tangents
    # Every gate tangent that does not come through h, as GEMMs over all steps at once.
    drive = [jnp.zeros_like(t) for t in saved.t]
    for d in range(directions):
        if dx is not None:
            drive[d] = drive[d] + _project(dx, weights.w_ih[d:d + 1], precision)[0]
        if dw.w_ih[d] is not None:
            drive[d] = drive[d] + _project(x, dw.w_ih[d:d + 1], precision)[0]
        if dw.w_hh is not None:
            drive[d] = drive[d] + jnp.einsum("tnp,gp->tng", saved.h_prev[d], dw.w_hh[d],
                                             precision=precision)
        if dw.bias is not None:
            drive[d] = drive[d] + dw.bias[d]
    drive_h = ()
    if dw.w_hr_t is not None:
        drive_h = tuple(jnp.einsum("tnh,hp->tnp", r, w, precision=precision)
                        for r, w in zip(saved.r, dw.w_hr_t))
    batch = saved.t[0].shape[1]
    if dh0 is None:
        dh0 = jnp.zeros((directions, batch, saved.h_prev[0].shape[-1]), saved.t[0].dtype)
    if dc0 is None:
        dc0 = jnp.zeros((directions, batch, saved.c_prev[0].shape[-1]), saved.t[0].dtype)
    state = (dh0, dc0)
    return _tangent_loop(saved, tuple(drive), drive_h, weights, state, valid, schedule)


def _layer_cotangent(schedule: Schedule, residuals: Residuals, cotangents) -> LayerInputs:
    """The transpose of :func:`_layer_tangent`, hand-scheduled: the backward loop carries only
    ``(dh, dc)`` and does one small GEMM per step, writing the gate gradients over the saved
    activations in place; the weight and input gradients are single large GEMMs over all steps
    after the loop. With remat, each chunk's forward is recomputed from its start state."""
    x, weights, valid, saved, starts = residuals
    d_y, state = cotangents
    directions, precision = len(weights.w_ih), schedule.precision
    if saved is not None:
        d_parts, grads, (dh, dc) = _layer_grads((x,) * directions, weights, saved,
                                                _each(valid, directions), d_y, state, precision)
        d_x = d_parts[0] if directions == 1 else d_parts[0] + d_parts[1]
        return LayerInputs(d_x, grads, dh, dc)

    chunk = schedule.remat
    chunks, valid_chunks = _chunked(x, valid, chunk)
    d_y = jnp.pad(d_y, [(0, chunks.shape[0] * chunk - x.shape[0]), (0, 0), (0, 0)])

    def run_chunk(carry, inputs):
        state, totals = carry
        k, start = inputs
        parts = _chunk_parts(chunks, k, directions)
        v = _chunk_parts(valid_chunks, k, directions)
        _, _, chunk_saved = _training_loop(_project(parts, weights.w_ih, precision), weights,
                                           start, v, schedule)
        d_parts, grads, state = _layer_grads(parts, weights, chunk_saved, v, d_y, state,
                                             precision, k * chunk)
        return (state, jax.tree.map(jnp.add, totals, grads)), d_parts

    zeros = jax.tree.map(jnp.zeros_like, weights)
    ((dh, dc), grads), d_parts = jax.lax.scan(
        run_chunk, (state, zeros), (jnp.arange(chunks.shape[0]), starts), reverse=True
    )
    # Each direction's input gradients come back in the order it visited the chunks.
    d_x = d_parts[0] if directions == 1 else d_parts[0] + d_parts[1][::-1]
    d_x = d_x.reshape(-1, *d_x.shape[2:])[: x.shape[0]]
    return LayerInputs(d_x, grads, dh, dc)


def _prune(tree, like):
    """``tree`` with ``None`` wherever ``like`` has ``None`` (a zero tangent, no cotangent)."""
    if like is None:
        return None
    if isinstance(like, tuple):
        items = [_prune(t, s) for t, s in zip(tree, like)]
        return type(like)(*items) if hasattr(like, "_fields") else tuple(items)
    return tree


def _zeros_as_none(tangents):
    """``tangents`` with ``None`` for every symbolic zero (what the tangent code skips)."""
    return jax.tree.map(lambda t: None if isinstance(t, SymbolicZero) else t, tangents,
                        is_leaf=lambda t: isinstance(t, SymbolicZero))


def _layer_jvp(schedule: Schedule, primals, tangents):
    """Forward mode, and through JAX's transposition reverse mode: the primal runs the
    recording forward pass, and the tangent is one linear map whose transpose is the
    hand-scheduled backward pass, so that reverse mode runs exactly that."""
    inputs, valid = primals
    tangents = _zeros_as_none(tangents[0])
    outputs, residuals = _layer_forward(inputs, valid, schedule)

    def cotangent(residuals, cotangents):
        return _prune(_layer_cotangent(schedule, residuals, cotangents), tangents)

    return outputs, linear_map(partial(_layer_tangent, schedule), cotangent, residuals, tangents,
                               outputs)


_layer.defjvp(_layer_jvp, symbolic_zeros=True)


# --- Stacked unidirectional layers as a wavefront ---------------------------------------------
#
# Loop iteration ``s`` runs layer ``l`` at time ``s - l``: layer ``l + 1`` reads the output that
# layer ``l`` produced one iteration earlier, so all layers advance in one loop of ``T + L - 1``
# iterations (one batched matmul over the layer axis per iteration) instead of ``L`` loops of
# ``T``. Everything the loops record is kept "skewed": layer ``l``'s row for time ``t`` lives at
# index ``t + l`` of an (L, T + L - 1, N, F) buffer, so each iteration reads and writes one
# (L, N, F) slice, and after the loop each layer's rows are contiguous for the GEMMs. Layer 0's
# input projection is one GEMM before the loop; the other layers project their input inside it.
# A layer outside its T steps is masked like a step past a sequence's end, which ``_step``
# already handles.


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
    valid mask and dropout masks as :func:`_stack` took them, and the :class:`StackSaved`."""

    x: Array
    weights: tuple[LayerWeights, ...]
    valid: Array | None
    keep: Array | None
    saved: StackSaved


def _stack_weights(weights: tuple[LayerWeights, ...]):
    """The per-layer weights stacked along a leading layer axis: ``(w_ih0, w_ih_up, w_hh, bias,
    w_hr_t)`` with ``w_ih0`` (4H, I) layer 0's, ``w_ih_up`` (L-1, 4H, P) the others'."""
    w_hh = jnp.concatenate([w.w_hh for w in weights])
    w_ih_up = jnp.stack([w.w_ih[0] for w in weights[1:]])
    bias = None if weights[0].bias is None else jnp.concatenate([w.bias for w in weights])
    w_hr_t = None
    if weights[0].w_hr_t is not None:
        w_hr_t = jnp.concatenate([w.w_hr_t for w in weights])
    return weights[0].w_ih[0], w_ih_up, w_hh, bias, w_hr_t


def _skew(mask: Array | None, steps: int, layers: int, batch: int) -> Array:
    """A (T, ...) per-time mask (``None``: all True) for each of ``layers`` layers, skewed to
    (T + layers - 1, layers, ...), layer ``l``'s time ``t`` at row ``t + l``, with the rows
    outside each layer's T steps False; ``mask`` may also hold one (T, ...) mask per layer (a
    leading layer axis)."""
    total = steps + layers - 1
    time = jnp.arange(total)[:, None] - jnp.arange(layers)[None, :]
    active = (time >= 0) & (time < steps)
    if mask is None:
        return jnp.broadcast_to(active[:, :, None], (total, layers, batch))
    rows = jnp.clip(time, 0, steps - 1)
    skewed = (mask[rows] if mask.ndim == 2
              else mask[jnp.arange(layers)[None, :], rows])
    return skewed & active.reshape(active.shape + (1,) * (skewed.ndim - 2))


def _drop(x: Array, keep: Array, rate: float) -> Array:
    """:func:`_dropout` with its mask given.

    A multiplication by a constant scale, never a division by ``1 - rate``: at ``rate = 1``
    the scale is 0, so values and gradients are zeros as in torch (``x / 0`` in the untaken
    branch of a ``where`` would make the gradient ``0 * inf = nan``)."""
    scale = 0.0 if rate >= 1.0 else 1.0 / (1.0 - rate)
    return jnp.where(keep, x * jnp.asarray(scale, x.dtype), jnp.zeros_like(x))


def _at(buf: Array, s: Array) -> Array:
    """Row ``s`` of ``buf`` (along its first axis)."""
    return jax.lax.dynamic_index_in_dim(buf, s, keepdims=False)


def _skewed_row(buf: Array, s: Array) -> Array:
    """Iteration ``s``'s slice (L, N, F) of a skewed (L, S, N, F) buffer."""
    return jax.lax.dynamic_index_in_dim(buf, s, axis=1, keepdims=False)


def _put_skewed(buf: Array, rows: Array, s: Array) -> Array:
    """Write iteration ``s``'s slice ``rows`` (L, N, F) into a skewed (L, S, N, F) buffer."""
    return jax.lax.dynamic_update_index_in_dim(buf, rows, s, 1)


def _wavefront_loop(inputs: StackInputs, valid, keep, rate: float, schedule: Schedule,
                    record: bool):
    """The stack's forward pass in one loop: ``(y, (h_T, c_T), saved)`` with ``y`` (T, N, P) the
    top layer's output, zero at invalid steps, and ``saved`` a :class:`StackSaved` (``None``
    unless ``record``). ``keep`` (L-1, T, N, P) are the dropout masks between layers or
    ``None``."""
    x, weights, h0, c0 = inputs
    steps, batch = x.shape[:2]
    layers, precision, dtype = len(weights), schedule.precision, h0.dtype
    total = steps + layers - 1
    w_ih0, w_ih_up, w_hh, bias, w_hr_t = _stack_weights(weights)
    gates_x = _project(x, (w_ih0,), precision)[0]
    w_hh_t, w_up_t = jnp.swapaxes(w_hh, 1, 2), jnp.swapaxes(w_ih_up, 1, 2)
    bias = None if bias is None else bias[:, None, :]
    scale = gate_scale(c0.shape[-1], dtype)
    active = _skew(valid, steps, layers, batch)
    drops = None if keep is None else _skew(keep, steps, layers - 1, batch)

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
        row0 = _at(gates_x, jnp.minimum(s, steps - 1))
        row_up = jnp.einsum("lnp,lpg->lng", below, w_up_t, precision=precision)
        keep_s = _at(active, s)[:, :, None]
        h_new, new_state, r, t = _step(jnp.concatenate([row0[None], row_up]), state, keep_s,
                                       w_hh_t, w_hr_t, bias, scale, precision)
        out = _masked(h_new, keep_s)
        y = jax.lax.dynamic_update_index_in_dim(y, out[-1], jnp.maximum(s - (layers - 1), 0), 0)
        if saved is not None:
            h, c = state
            saved = StackSaved(_put_skewed(saved.t, t, s),
                               _put_skewed(saved.h_prev, _masked(h, keep_s), s),
                               _put_skewed(saved.c_prev, _masked(c, keep_s), s),
                               None if saved.r is None else _put_skewed(saved.r,
                                                                        _masked(r, keep_s), s),
                               _put_skewed(saved.inputs, below, s))
        below = out[:-1]
        if drops is not None:
            below = _drop(below, _at(drops, s), rate)
        return new_state, below, y, saved

    state, _, y, saved = jax.lax.fori_loop(0, total, body, ((h0, c0), below, y, saved),
                                           unroll=schedule.unroll)
    return y, state, saved


def _wavefront_backward(residuals: StackResiduals, rate: float, d_y, d_h_last, d_c_last,
                        precision):
    """The reverse wavefront: layer ``l`` at time ``t`` in the same iteration as layer ``l + 1``
    at time ``t + 1``, carrying each layer's ``(dh, dc)`` and the gradient of what layers 1 ..
    L-1 read. Returns :class:`StackInputs` of gradients; the weight and input gradients are
    single GEMMs over all steps after the loop."""
    x, weights, valid, keep, saved = residuals
    layers, total, batch = saved.t.shape[:3]
    steps = total - layers + 1
    w_ih0, w_ih_up, w_hh, _, w_hr_t = _stack_weights(weights)
    scale = gate_scale(saved.c_prev.shape[-1], saved.t.dtype)
    active = _skew(valid, steps, layers, batch)
    drops = None if keep is None else _skew(keep, steps, layers - 1, batch)
    dh_buf = None if w_hr_t is None else jnp.zeros_like(saved.h_prev)

    def body(i, carry):
        s = total - 1 - i
        (dh, dc), d_below, t, g_buf, dh_buf = carry
        c_p = _skewed_row(saved.c_prev, s)
        keep_s = _at(active, s)[:, :, None]
        # What reaches each layer's output: from the layer above (read one iteration later,
        # through dropout) and, for the top layer, from ``y``.
        if drops is not None:
            d_below = _drop(d_below, _at(drops, s), rate)
        top = _at(d_y, jnp.clip(s - (layers - 1), 0, steps - 1))
        d_gates, dh_cand, dh_prev, dc_prev = _backward_step(
            t, c_p, keep_s, (dh, dc), jnp.concatenate([d_below, top[None]]), w_hh, w_hr_t,
            scale, precision)
        d_below = jnp.einsum("lng,lgp->lnp", d_gates[1:], w_ih_up, precision=precision)
        g_buf = _put_skewed(g_buf, d_gates, s)
        if dh_buf is not None:
            dh_buf = _put_skewed(dh_buf, dh_cand, s)
        # Read one step ahead, after the write (as in ``_backward_loop``).
        return (dh_prev, dc_prev), d_below, _skewed_row(g_buf, s - 1), g_buf, dh_buf

    d_below = jnp.zeros((layers - 1,) + saved.h_prev.shape[2:], saved.t.dtype)
    carry = ((d_h_last, d_c_last), d_below, _skewed_row(saved.t, total - 1), saved.t, dh_buf)
    (dh0, dc0), _, _, d_gates, dh_cand = jax.lax.fori_loop(0, total, body, carry)

    # One 2-D GEMM per layer and weight over all of that layer's rows (S x N): on the skewed
    # buffers, einsums over (s, n) or a batched one over the layers make XLA copy them first.
    def gemm(a, b):
        return jnp.einsum("ra,rb->ba", _flat(a), _flat(b), precision=precision)

    first = d_gates[0, :steps]
    grads = []
    for layer in range(layers):
        dg = d_gates[layer]
        w_in = gemm(x, first) if layer == 0 else gemm(saved.inputs[layer - 1], dg)
        grads.append(LayerWeights(
            (w_in,), gemm(saved.h_prev[layer], dg)[None],
            None if weights[0].bias is None else jnp.sum(_flat(dg), axis=0)[None],
            None if dh_cand is None else gemm(dh_cand[layer], saved.r[layer])[None],
        ))
    d_x = jnp.einsum("tng,gi->tni", first, w_ih0, precision=precision)
    return StackInputs(d_x, tuple(grads), dh0, dc0)


def _flat(a: Array) -> Array:
    """(..., F) -> (rows, F)."""
    return a.reshape(-1, a.shape[-1])


def _unskew(buf: Array, layer: int, steps: int) -> tuple[Array]:
    """Layer ``layer``'s (T, N, F) rows of a skewed buffer, as a one-direction tuple."""
    return (buf[layer, layer:layer + steps],)


def _stack_tangent(schedule: Schedule, rate: float, residuals: StackResiduals,
                   tangents: StackInputs):
    """The stack's derivative in the direction ``tangents``, layer after layer with
    :func:`_layer_tangent` (each layer's input tangent is the output tangent of the one below,
    through dropout). Linear in ``tangents``; its transpose is :func:`_wavefront_backward`."""
    x, weights, valid, keep, saved = residuals
    steps = x.shape[0]
    dx, dws, dh0, dc0 = tangents
    layer_x, dy, dh_n, dc_n = x, dx, [], []
    for layer, (w, dw) in enumerate(zip(weights, dws)):
        if layer:
            layer_x = saved.inputs[layer - 1, layer:layer + steps]
            dy = dy if keep is None else _drop(dy, keep[layer - 1], rate)
        layer_saved = Saved(_unskew(saved.t, layer, steps), _unskew(saved.h_prev, layer, steps),
                            _unskew(saved.c_prev, layer, steps),
                            () if saved.r is None else _unskew(saved.r, layer, steps))
        part = LayerInputs(dy, dw, None if dh0 is None else dh0[layer:layer + 1],
                           None if dc0 is None else dc0[layer:layer + 1])
        dy, (dh, dc) = _layer_tangent(schedule, Residuals(layer_x, w, valid, layer_saved, None),
                                      part)
        dh_n.append(dh)
        dc_n.append(dc)
    return dy, (jnp.concatenate(dh_n), jnp.concatenate(dc_n))


@partial(jax.custom_jvp, nondiff_argnums=(3, 4))
def _stack(inputs: StackInputs, valid: Array | None, keep: Array | None, schedule: Schedule,
           rate: float) -> tuple[Array, State]:
    """``L >= 2`` unidirectional layers as a wavefront: the top layer's output (T, N, P) and the
    final states ``(h_T, c_T)`` (L, N, ·) of every layer, as :func:`_layer` applied layer after
    layer (with dropout at ``rate`` where ``keep`` (L-1, T, N, P) is given)."""
    y, state, _ = _wavefront_loop(inputs, valid, keep, rate, schedule, record=False)
    return y, state


def _stack_jvp(schedule: Schedule, rate: float, primals, tangents):
    inputs, valid, keep = primals
    tangents = _zeros_as_none(tangents[0])
    y, state, saved = _wavefront_loop(inputs, valid, keep, rate, schedule, record=True)
    residuals = StackResiduals(inputs.x, inputs.weights, valid, keep, saved)

    def cotangent(residuals, cotangents):
        d_y, (d_h, d_c) = cotangents
        grads = _wavefront_backward(residuals, rate, d_y, d_h, d_c, schedule.precision)
        return _prune(grads, tangents)

    outputs = (y, state)
    return outputs, linear_map(partial(_stack_tangent, schedule, rate), cotangent, residuals,
                               tangents, outputs)


_stack.defjvp(_stack_jvp, symbolic_zeros=True)


def _dropout_keep(rate: float, key: Array, shape) -> Array:
    """Dropout's mask: True (kept) with probability ``1 - rate`` (never, at ``rate >= 1``)."""
    return jax.random.bernoulli(key, 1.0 - rate, shape)


def _dropout(x: Array, rate: float, key: Array) -> Array:
    return _drop(x, _dropout_keep(rate, key, x.shape), rate)


def _layer_weights(params: Mapping[str, Array], config: LSTMConfig, layer: int,
                   dtype: Any) -> LayerWeights:
    """One layer's :class:`LayerWeights` from torch-named ``params``, in ``dtype``."""
    sfx = [param_suffix(layer, d) for d in range(config.num_directions)]
    w_ih = tuple(params[f"weight_ih{s}"].astype(dtype) for s in sfx)
    w_hh = jnp.stack([params[f"weight_hh{s}"] for s in sfx]).astype(dtype)
    bias = None
    if config.bias:
        bias = jnp.stack([params[f"bias_ih{s}"] + params[f"bias_hh{s}"] for s in sfx])
        bias = bias.astype(dtype)
    w_hr_t = None
    if config.proj_size:
        w_hr_t = jnp.stack([params[f"weight_hr{s}"].T for s in sfx]).astype(dtype)
    return LayerWeights(w_ih, w_hh, bias, w_hr_t)


@partial(
    jax.jit,
    static_argnames=(
        "config", "deterministic", "dtype", "padding_value", "schedule"
    ),
)
def _lstm_time_major(
    params: Mapping[str, Array],
    x: Array,
    h0: Array,
    c0: Array,
    seq_lengths: Array | None,
    dropout_rng: Array | None,
    *,
    config: LSTMConfig,
    deterministic: bool,
    dtype: Any,
    padding_value: float,
    schedule: Schedule,
) -> tuple[Array, State]:
    num_steps = x.shape[0]
    directions = config.num_directions
    valid = None
    if seq_lengths is not None:
        seq_lengths = jnp.clip(seq_lengths.astype(jnp.int32), 0, num_steps)
        valid = jnp.arange(num_steps)[:, None] < seq_lengths[None, :]
    layer_input = x.astype(dtype)
    if valid is not None:
        # Zero the padding so that nothing in it (NaN, Inf) reaches a value or a gradient;
        # every layer's output is already zero there.
        layer_input = jnp.where(valid[:, :, None], layer_input, jnp.zeros_like(layer_input))
    h0 = h0.astype(dtype).reshape(config.num_layers, directions, *h0.shape[1:])
    c0 = c0.astype(dtype).reshape(config.num_layers, directions, *c0.shape[1:])
    if _runs_as_wavefront(config, schedule):
        return _wavefront_time_major(params, layer_input, h0[:, 0], c0[:, 0], valid, dropout_rng,
                                     config=config, deterministic=deterministic, dtype=dtype,
                                     padding_value=padding_value, schedule=schedule)
    h_n, c_n = [], []
    for layer in range(config.num_layers):
        weights = _layer_weights(params, config, layer, dtype)
        layer_input, (h_last, c_last) = _layer(
            LayerInputs(layer_input, weights, h0[layer], c0[layer]), valid, schedule
        )
        h_n.append(h_last)
        c_n.append(c_last)
        last = layer == config.num_layers - 1
        if not last and not deterministic and config.dropout > 0:
            key = jax.random.fold_in(dropout_rng, layer)
            layer_input = _dropout(layer_input, config.dropout, key)
    h_n, c_n = jnp.concatenate(h_n), jnp.concatenate(c_n)
    return _padded(layer_input, valid, padding_value), (h_n, c_n)


def _padded(output: Array, valid: Array | None, padding_value: float) -> Array:
    """``output`` with ``padding_value`` past each sequence's length (it holds zeros there)."""
    if valid is None or padding_value == 0:
        return output
    return jnp.where(valid[:, :, None], output, jnp.asarray(padding_value, output.dtype))


def _runs_as_wavefront(config: LSTMConfig, schedule: Schedule) -> bool:
    """Whether :func:`lstm` runs ``config`` as one wavefront (:func:`_stack`): asked for, two or
    more unidirectional layers, and no remat (which runs the layers one after another)."""
    return (schedule.wavefront and config.num_layers > 1 and not config.bidirectional
            and not schedule.remat)


def _wavefront_time_major(params, x, h0, c0, valid, dropout_rng, *, config, deterministic,
                          dtype, padding_value, schedule):
    """:func:`_lstm_time_major`'s layers as one :func:`_stack`; ``h0``/``c0`` (L, N, ·)."""
    weights = tuple(_layer_weights(params, config, layer, dtype)
                    for layer in range(config.num_layers))
    keep = None
    if not deterministic and config.dropout > 0:
        # The masks _dropout draws for the same keys and shapes, so both schedules agree.
        shape = (x.shape[0], x.shape[1], config.output_size)
        keep = jnp.stack([
            _dropout_keep(config.dropout, jax.random.fold_in(dropout_rng, layer), shape)
            for layer in range(config.num_layers - 1)
        ])
    output, state = _stack(StackInputs(x, weights, h0, c0), valid, keep, schedule,
                           float(config.dropout))
    return _padded(output, valid, padding_value), state


def _remat_chunk(remat: bool | int, num_steps: int) -> int:
    """The chunk length for ``remat`` (0: no rematerialisation)."""
    if remat is True:
        return max(1, round(num_steps**0.5))
    if not remat:
        return 0
    if not isinstance(remat, int) or remat < 1:
        raise ValueError(f"remat must be True, False or a positive chunk length, got {remat!r}")
    return remat


def compute_dtype(params: Mapping[str, Array], x: Array, dtype: Any) -> Any:
    """The dtype the math runs in: ``dtype`` if given, else the promotion of input and weights."""
    if dtype is not None:
        return jnp.dtype(dtype)
    return jnp.result_type(x, *params.values())


def lstm(
    params: Mapping[str, Array],
    x: Array,
    hx: State | None = None,
    *,
    config: LSTMConfig,
    seq_lengths: Array | None = None,
    dropout_rng: Array | None = None,
    deterministic: bool = True,
    precision: Any = None,
    dtype: Any = None,
    unroll: int = 1,
    padding_value: float = 0.0,
    remat: bool | int = False,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    wavefront: bool = False,
) -> tuple[Array, State]:
    """Multi-layer (bi)directional LSTM over a whole sequence, as ``torch.nn.LSTM.forward``.

    **Arguments:**

    - ``params``: torch-named parameters with torch's shapes (see ``config.param_shapes()``).
    - ``x``: ``(L, N, I)``, ``(N, L, I)`` when ``config.batch_first``, or unbatched ``(L, I)``.
    - ``hx``: optional ``(h0, c0)``, ``h0`` of shape ``(D*num_layers, N, H_out)`` and ``c0`` of
      shape ``(D*num_layers, N, H)`` (drop ``N`` for unbatched input); zeros when omitted.
    - ``seq_lengths``: optional int array ``(N,)`` (``()`` for unbatched input): the valid length
      of each sequence, with torch ``PackedSequence`` semantics. Concrete values are checked to
      lie in ``[1, L]``; traced values (under ``jit``) are clipped to ``[0, L]`` (a length of 0
      leaves that sequence's state at ``hx`` and its output at padding); the modules'
      ``check_lengths=True`` checks them when the computation runs.
    - ``dropout_rng``: PRNG key for dropout between layers; needed only when
      ``deterministic=False`` and ``config.dropout > 0``. Layer ``k``'s output (time-major,
      ``(L, N, D*H_out)``) is kept where ``jax.random.bernoulli(jax.random.fold_in(dropout_rng,
      k), 1 - dropout, shape)`` and scaled by ``1 / (1 - dropout)`` there (zeros at
      ``dropout = 1``, gradients included), whatever the schedule.
    - ``deterministic``: ``True`` disables dropout (torch's ``eval()`` mode).
    - ``precision``: ``jax.lax.Precision`` for every matmul; ``None`` uses JAX's default (on
      GPU/TPU that may be TF32/bf16 for float32 inputs, pass ``"highest"`` for full float32).
    - ``dtype``: compute dtype; default is the promotion of ``x`` and the parameters.
    - ``unroll``: unroll factor of the forward recurrence loop (the backward loop is not
      unrolled: it overwrites its buffers in place, which unrolling would make XLA copy).
    - ``padding_value``: value of ``output`` past each sequence's length.
    - ``remat``: bound activation memory for long sequences: the backward pass keeps only the
      states at chunk boundaries and recomputes each chunk's forward. ``True`` picks chunks of
      ``~sqrt(L)`` steps, an int sets the chunk length; ``False`` (default) saves every step.
    - ``chunk_rows``: the forward pass alone (no derivative) projects the input about this many
      rows (steps x batch) at a time: enough for the GEMM to run at full speed, few enough
      that the projections of a long sequence do not all exist at once (fresh memory costs
      page faults on every call).
    - ``wavefront``: run two or more unidirectional layers as one wavefront: layer ``l`` at
      step ``t`` in the same loop iteration as layer ``l + 1`` at step ``t - 1``, one batched
      matmul over the layers per iteration, ``L + T - 1`` sequential steps instead of ``L * T``
      (forward and backward; the same numbers). Layers above the first then project their
      input inside the loop instead of in one GEMM: on CPU that is slower (see
      ``benchmarks/README.md``); it is meant for accelerators, where each step is short. Ignored
      for one layer, bidirectional LSTMs and with ``remat``.

    Every JAX transformation applies: ``jit``, ``vmap``, reverse mode (``grad``, ``vjp``,
    ``jacrev``) through a hand-scheduled backward pass, forward mode (``jvp``, ``jacfwd``,
    ``linearize``) and their compositions (``hessian``).

    **Returns:** ``(output, (h_n, c_n))``: ``output`` is ``(L, N, D*H_out)`` (batch-first or
    unbatched like ``x``), ``h_n`` is ``(D*num_layers, N, H_out)``, ``c_n`` is
    ``(D*num_layers, N, H)``, index ``layer*D + direction``; ``batch_first`` never applies to them.
    """
    check_params(params, config.param_shapes(), what="LSTM")
    h0, c0 = check_lstm_inputs(config, x, hx)
    if not isinstance(wavefront, (bool, np.bool_)):
        raise TypeError(f"wavefront must be True or False, got {wavefront!r}")
    batched = x.ndim == 3
    if not batched:
        x = x[:, None] if not config.batch_first else x[None]
        if h0 is not None:
            h0, c0 = h0[:, None], c0[:, None]
    if config.batch_first:
        x = jnp.swapaxes(x, 0, 1)
    if seq_lengths is not None:
        seq_lengths = check_seq_lengths(seq_lengths, num_steps=x.shape[0], batch=x.shape[1],
                                        batched=batched)
    if not deterministic and config.dropout > 0 and config.num_layers > 1 and dropout_rng is None:
        raise ValueError(
            "dropout_rng is required when deterministic=False and dropout > 0; pass a "
            "jax.random key, or deterministic=True for evaluation"
        )
    dtype = compute_dtype(params, x, dtype)
    if h0 is None:
        batch = x.shape[1]
        layers = config.num_directions * config.num_layers
        h0 = jnp.zeros((layers, batch, config.output_size), dtype)
        c0 = jnp.zeros((layers, batch, config.hidden_size), dtype)
    output, (h_n, c_n) = _lstm_time_major(
        dict(params), x, h0, c0, seq_lengths, dropout_rng,
        config=config, deterministic=bool(deterministic), dtype=dtype,
        padding_value=float(padding_value),
        schedule=Schedule(precision, int(unroll), _remat_chunk(remat, x.shape[0]),
                          int(chunk_rows), bool(wavefront)),
    )
    if config.batch_first:
        output = jnp.swapaxes(output, 0, 1)
    if not batched:
        output = output[:, 0] if not config.batch_first else output[0]
        h_n, c_n = h_n[:, 0], c_n[:, 0]
    return output, (h_n, c_n)


def lstm_cell(
    params: Mapping[str, Array],
    x: Array,
    hx: State | None = None,
    *,
    config: LSTMCellConfig,
    precision: Any = None,
    dtype: Any = None,
) -> State:
    """One LSTM step, as ``torch.nn.LSTMCell.forward``.

    **Arguments:**

    - ``params``: ``weight_ih (4H, I)``, ``weight_hh (4H, H)``, and ``bias_ih``/``bias_hh (4H,)``
      when ``config.bias``.
    - ``x``: ``(N, I)`` or unbatched ``(I,)``.
    - ``hx``: optional ``(h, c)``, each ``(N, H)`` (``(H,)`` unbatched); zeros when omitted.
    - ``precision``, ``dtype``: as in :func:`lstm`.

    **Returns:** ``(h', c')``, each ``(N, H)`` (``(H,)`` unbatched).
    """
    check_params(params, config.param_shapes(), what="LSTMCell")
    h, c = check_cell_inputs(config, x, hx)
    dtype = compute_dtype(params, x, dtype)
    if h is None:
        h = c = jnp.zeros(x.shape[:-1] + (config.hidden_size,), dtype)
    x, h, c = (jnp.asarray(a).astype(dtype) for a in (x, h, c))
    gates = jnp.matmul(x, params["weight_ih"].astype(dtype).T, precision=precision)
    gates = gates + jnp.matmul(h, params["weight_hh"].astype(dtype).T, precision=precision)
    if config.bias:
        gates = gates + (params["bias_ih"] + params["bias_hh"]).astype(dtype)
    return cell_update(gates, c)


@partial(jax.jit, static_argnames=("config", "dtype"))
def init_params(key: Array, config: LSTMConfig | LSTMCellConfig, dtype: Any = jnp.float32):
    """torch's initialisation: every parameter ~ U(-1/sqrt(hidden_size), 1/sqrt(hidden_size))."""
    bound = 1.0 / np.sqrt(config.hidden_size)
    shapes = config.param_shapes()
    sizes = [int(np.prod(shape)) for shape in shapes.values()]
    # One draw for all parameters: a single random kernel compiles far faster than one each.
    flat = jax.random.uniform(key, (sum(sizes),), dtype, minval=-bound, maxval=bound)
    offsets = np.cumsum([0] + sizes)
    return {
        name: flat[start:stop].reshape(shape)
        for (name, shape), start, stop in zip(shapes.items(), offsets[:-1], offsets[1:])
    }
