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
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

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


def cell_activate(scaled_gates: Array, c: Array) -> tuple[Array, Array, Array]:
    """The LSTM state update from scaled pre-activations (..., 4H) and cell state ``c`` (..., H).

    This is the only place the gate equations live. ``scaled_gates`` are torch's
    ``x W_ih^T + b_ih + h W_hh^T + b_hh`` times :func:`gate_scale`. Returns ``(h, c', t)`` with
    ``h`` before any projection and ``t = tanh(scaled_gates)`` (what the backward pass needs).
    """
    t = jnp.tanh(scaled_gates)
    c_new = _cell_state(t, c)
    t_o = jnp.split(t, 4, axis=-1)[3]
    return (0.5 * t_o + 0.5) * jnp.tanh(c_new), c_new, t


def _cell_state(t: Array, c: Array) -> Array:
    """``c' = sigmoid(f) * c + sigmoid(i) * tanh(g)`` from ``t = tanh(scaled_gates)``; the
    backward loop recomputes it from the saved ``t`` rather than saving ``c'``."""
    t_i, t_f, g, _ = jnp.split(t, 4, axis=-1)
    return (0.5 * t_f + 0.5) * c + (0.5 * t_i + 0.5) * g


def _cell_activate_vjp(
    t: Array, c_new: Array, c: Array, dh: Array, dc_new: Array
) -> tuple[Array, Array]:
    """Reverse of :func:`cell_activate`: cotangents of ``(scaled_gates, c)`` from those of
    ``(h, c')``, using the saved ``t = tanh(scaled_gates)``."""
    t_i, t_f, g, t_o = jnp.split(t, 4, axis=-1)
    tanh_c = jnp.tanh(c_new)
    dc_total = dc_new + dh * (0.5 * t_o + 0.5) * (1.0 - tanh_c * tanh_c)
    # d gate = upstream * partner * tanh'(scaled) * scale, written over all 4H columns at once
    # so that the step compiles to one fused loop rather than four pieces and a concatenation.
    upstream = jnp.concatenate([dc_total, dc_total, dc_total, dh], axis=-1)
    partner = jnp.concatenate([g, c, 0.5 * t_i + 0.5, tanh_c], axis=-1)
    scale = gate_scale(c.shape[-1], t.dtype)
    d_scaled = upstream * partner * (1.0 - t * t) * scale
    return d_scaled, dc_total * (0.5 * t_f + 0.5)


@jax.custom_vjp
def cell_update(gates: Array, c: Array) -> State:
    """One LSTM step from torch's pre-activations ``gates`` (..., 4H) and ``c`` (..., H).

    Returns ``(h, c')``: ``c' = sigmoid(f) * c + sigmoid(i) * tanh(g)``,
    ``h = sigmoid(o) * tanh(c')``. Differentiated by the same code as the sequence path.
    """
    return _cell_update_fwd(gates, c)[0]


def _cell_update_fwd(gates: Array, c: Array):
    scale = gate_scale(c.shape[-1], gates.dtype)
    h, c_new, t = cell_activate(gates * scale, c)
    return (h, c_new), (t, c_new, c, scale)


def _cell_update_bwd(residuals, cotangents):
    t, c_new, c, scale = residuals
    d_scaled, d_c = _cell_activate_vjp(t, c_new, c, *cotangents)
    return d_scaled * scale, d_c


cell_update.defvjp(_cell_update_fwd, _cell_update_bwd)


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


def _forward_loop(gates_x, bias, h0, c0, w_hh_t, w_hr_t, valid, precision, unroll, save,
                  y=None, offset=0):
    """The recurrence of D directions in one loop.

    ``gates_x`` holds one (T, N, 4H) buffer per direction in natural time order; with ``save``
    the loop overwrites each step's row with ``t = tanh(gates)`` in place and also records the
    state entering each step (zero at invalid steps) and, with a projection, the unprojected
    output: what the backward pass needs, ``(t, h_prev, c_prev, r)`` per direction.
    Returns ``(y, (h_T, c_T), saved)`` with ``y`` the layer output (T, N, D*P), zero at invalid
    steps. The bias is added inside the step, fused with the step's other elementwise work.

    Given ``y``, the loop writes into it instead, as steps ``offset .. offset+T-1`` of a longer
    sequence: a chunk of a layer, whose output then needs no assembling.
    """
    steps, batch = gates_x[0].shape[:2]
    directions = len(gates_x)
    dtype = h0.dtype
    bias = None if bias is None else bias[:, None, :]
    scale = gate_scale(c0.shape[-1], dtype)
    if y is None:
        y = jnp.zeros((steps, batch, directions * h0.shape[-1]), dtype)

    def buffers(width):
        return tuple(jnp.zeros((steps, batch, width), dtype) for _ in range(directions))

    saved = ()
    if save:
        r_buf = buffers(c0.shape[-1]) if w_hr_t is not None else ()
        saved = (gates_x, buffers(h0.shape[-1]), buffers(c0.shape[-1]), r_buf)

    def body(step, state):
        (h, c), y, saved = state
        keep = None if valid is None else _rows(valid, step, steps)[:, :, None]
        row = _rows(saved[0] if save else gates_x, step, steps)
        gates = row + jnp.einsum("dnp,dpg->dng", h, w_hh_t, precision=precision)
        if bias is not None:
            gates = gates + bias
        r, c_new, t = cell_activate(gates * scale, c)
        h_new = r
        if w_hr_t is not None:
            h_new = jnp.einsum("dnh,dhp->dnp", r, w_hr_t, precision=precision)
        if keep is None:
            carry = (h_new, c_new)
        else:
            carry = (jnp.where(keep, h_new, h), jnp.where(keep, c_new, c))
        y = _put_columns(y, _masked(h_new, keep), offset + step)
        if save:
            t_buf, h_prev, c_prev, r_buf = saved
            saved = (
                _put_rows(t_buf, t, step, steps),
                _put_rows(h_prev, _masked(h, keep), step, steps),
                _put_rows(c_prev, _masked(c, keep), step, steps),
                _put_rows(r_buf, _masked(r, keep), step, steps) if r_buf else (),
            )
        return carry, y, saved

    carry, y, saved = jax.lax.fori_loop(0, steps, body, ((h0, c0), y, saved), unroll=unroll)
    return y, carry, saved


def _backward_loop(saved, w_hh, w_hr_t, valid, d_y, d_h_last, d_c_last, precision, offset=0):
    """Reverse loop carrying only ``(dh, dc)``: the gradient of each step's gates.

    ``saved`` is :func:`_forward_loop`'s; its ``t`` buffers are overwritten in place by the
    gate gradients. ``w_hh`` is (D, 4H, P), torch's layout. Returns ``(d_gates, dh_cand, d_h0,
    d_c0)``: ``d_gates`` one (T, N, 4H) buffer per direction; ``dh_cand`` (the cotangent of each
    projected output, (T, N, P) per direction) only with a projection, else ``()``. ``d_y``
    may be that of a longer sequence whose steps ``offset ..`` these are, as in
    :func:`_forward_loop`.
    """
    t_buf, _, c_prev, _ = saved
    steps, batch = t_buf[0].shape[:2]
    directions = len(t_buf)
    scale = gate_scale(c_prev[0].shape[-1], t_buf[0].dtype)
    dh_buf = ()
    if w_hr_t is not None:
        dh_buf = tuple(jnp.zeros((steps, batch, d_h_last.shape[-1]), d_h_last.dtype)
                       for _ in range(directions))

    def body(i, state):
        step = steps - 1 - i
        (dh, dc), t, g_buf, dh_buf = state
        c_p = _rows(c_prev, step, steps)
        keep = None if valid is None else _rows(valid, step, steps)[:, :, None]
        dh_cand = _masked(dh + _columns(d_y, offset + step, directions), keep)
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
        g_buf = _put_rows(g_buf, d_gates, step, steps)
        if dh_buf:
            dh_buf = _put_rows(dh_buf, dh_cand, step, steps)
        # Read one step ahead, after the write: left to fuse into this step's consumers, the
        # read of the row that is overwritten in place would make XLA copy the whole buffer.
        return (dh_prev, dc_prev), _rows(g_buf, step - 1, steps), g_buf, dh_buf

    state = ((d_h_last, d_c_last), _rows(t_buf, steps - 1, steps), t_buf, dh_buf)
    # Not unrolled: in an unrolled body XLA fuses the reads of the buffer that is overwritten in
    # place into the next step's work, and then copies the whole buffer on every iteration.
    (d_h0, d_c0), _, d_gates, dh_cand = jax.lax.fori_loop(0, steps, body, state)
    return d_gates, dh_cand, d_h0, d_c0


def _layer_grads(parts, w_ih, w_hh, w_hr_t, has_bias, saved, valid, d_y, dh, dc, precision,
                 offset=0):
    """Backward of one layer over the steps that ``saved`` covers (all of them, or a chunk).

    ``parts`` holds the layer input each direction read, (T, N, I) each. Returns ``(d_parts,
    (d_w_ih, d_bias, d_w_hh, d_w_hr_t), (dh, dc))``, the last being the cotangents of the
    states entering the first step. The weight gradients are single GEMMs over all steps.
    """
    d_gates, dh_cand, dh, dc = _backward_loop(
        saved, w_hh, w_hr_t, valid, d_y, dh, dc, precision, offset
    )
    _, h_prev, _, r_buf = saved
    # Contracted as h^T dG and transposed after: XLA then lays out the narrower operand.
    d_w_hh = jnp.stack([
        jnp.einsum("tnp,tng->gp", hp, dg, precision=precision) for dg, hp in zip(d_gates, h_prev)
    ])
    d_w_hr_t = None
    if dh_cand:
        d_w_hr_t = jnp.stack([
            jnp.einsum("tnh,tnp->hp", r, dhc, precision=precision)
            for r, dhc in zip(r_buf, dh_cand)
        ])
    d_w_ih = tuple(
        jnp.einsum("tng,tni->gi", dg, part, precision=precision)
        for dg, part in zip(d_gates, parts)
    )
    d_bias = jnp.stack([jnp.sum(dg, axis=(0, 1)) for dg in d_gates]) if has_bias else None
    d_parts = tuple(
        jnp.einsum("tng,gi->tni", dg, w, precision=precision) for dg, w in zip(d_gates, w_ih)
    )
    return d_parts, (d_w_ih, d_bias, d_w_hh, d_w_hr_t), (dh, dc)


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


def _chunked_forward(x, w_ih, bias, h0, c0, w_hh_t, w_hr_t, valid, precision, unroll, chunk):
    """Projection and recurrence of one layer a chunk of ``chunk`` steps at a time, so that only
    one chunk's projections exist at once. Returns ``(y, (h_T, c_T), starts)``: ``starts`` are
    the states entering each chunk-loop step."""
    directions = len(w_ih)
    chunks, valid_chunks = _chunked(x, valid, chunk)
    y = jnp.zeros((chunks.shape[0] * chunk, x.shape[1], directions * h0.shape[-1]), h0.dtype)

    def run_chunk(state, k):
        carry, y = state
        gates_x = _project(_chunk_parts(chunks, k, directions), w_ih, precision)
        y, new_carry, _ = _forward_loop(
            gates_x, bias, *carry, w_hh_t, w_hr_t, _chunk_parts(valid_chunks, k, directions),
            precision, unroll, False, y, k * chunk,
        )
        return (new_carry, y), carry

    (carry, y), starts = jax.lax.scan(run_chunk, ((h0, c0), y), jnp.arange(chunks.shape[0]))
    return y[: x.shape[0]], carry, starts


# Rows (steps x batch) of input projection per chunk of the forward-only pass: enough for the
# GEMM to run at full speed, few enough that the projections of a long sequence do not all have
# to exist at once (fresh memory costs page faults on every call).
_CHUNK_ROWS = 1024


def _inference_chunk(steps: int, batch: int) -> int:
    """The chunk length of the forward-only pass (``steps``: no chunks), dividing ``steps``
    where a near choice does so that no step is padding."""
    target = round(steps * batch / _CHUNK_ROWS)
    if target <= 1:
        return steps
    for chunks in range(target, 2 * target + 1):
        if steps % chunks == 0:
            return steps // chunks
    return -(-steps // target)


@partial(jax.custom_vjp, nondiff_argnums=(8, 9, 10))
def _layer(
    x: Array,
    w_ih: tuple[Array, ...],
    bias: Array | None,
    h0: Array,
    c0: Array,
    w_hh: Array,
    w_hr_t: Array | None,
    valid: Array | None,
    precision: Any,
    unroll: int,
    remat: int,
) -> tuple[Array, State]:
    """One layer, D directions: input projection and recurrence.

    **Arguments:**

    - ``x``: (T, N, I) layer input; ``w_ih``: one (4H, I) weight per direction and ``w_hh``:
      (D, 4H, P), in torch's layout; ``bias``: (D, 4H) ``b_ih + b_hh`` or ``None``;
      ``w_hr_t``: (D, H, P) or ``None``.
    - ``h0``: (D, N, P), ``c0``: (D, N, H) initial states.
    - ``valid``: (T, N) bool, True where step t lies inside sequence n, or ``None`` (all
      valid). Valid steps are a prefix of each sequence, so the reverse direction, reading
      from the end, holds its initial state until it reaches a sequence's last element:
      torch's ``PackedSequence`` semantics without reversing anything.
    - ``remat``: 0 saves every step for the backward pass; a chunk length keeps only the
      states at chunk boundaries and recomputes each chunk's forward in the backward pass.

    **Returns:** ``(y, (h_T, c_T))``: ``y`` the layer output (T, N, D*P), zero at invalid steps.

    The forward-only pass projects the input a chunk at a time (:func:`_inference_chunk`). The
    backward pass is hand-scheduled: its loop carries only ``(dh, dc)`` and does one small GEMM
    per step, writing the gate gradients over the saved activations in place; the weight and
    input gradients are single large GEMMs over all steps after the loop.
    """
    chunk = _inference_chunk(*x.shape[:2])
    y, carry, _ = _layer_forward(x, w_ih, bias, h0, c0, w_hh, w_hr_t, valid, precision, unroll,
                                 chunk if chunk < x.shape[0] else 0, False)
    return y, carry


def _layer_forward(x, w_ih, bias, h0, c0, w_hh, w_hr_t, valid, precision, unroll, chunk, save):
    """The layer's forward: a chunk at a time when ``chunk`` (returning the chunk-start states),
    else over the whole sequence (returning what ``save`` asks :func:`_forward_loop` for)."""
    w_hh_t = jnp.swapaxes(w_hh, 1, 2)
    if chunk:
        return _chunked_forward(
            x, w_ih, bias, h0, c0, w_hh_t, w_hr_t, valid, precision, unroll, chunk
        )
    return _forward_loop(
        _project(x, w_ih, precision), bias, h0, c0, w_hh_t, w_hr_t, _each(valid, len(w_ih)),
        precision, unroll, save,
    )


def _layer_fwd(x, w_ih, bias, h0, c0, w_hh, w_hr_t, valid, precision, unroll, remat):
    # With remat, the chunk-start states are all the backward pass keeps.
    y, carry, saved = _layer_forward(x, w_ih, bias, h0, c0, w_hh, w_hr_t, valid, precision,
                                     unroll, remat, not remat)
    return (y, carry), (x, w_ih, bias, w_hh, w_hr_t, valid, saved)


def _layer_bwd(precision, unroll, remat, residuals, cotangents):
    x, w_ih, bias, w_hh, w_hr_t, valid, saved = residuals
    d_y, (dh, dc) = cotangents
    directions = len(w_ih)
    if not remat:
        d_parts, grads, (dh, dc) = _layer_grads(
            (x,) * directions, w_ih, w_hh, w_hr_t, bias is not None, saved,
            _each(valid, directions), d_y, dh, dc, precision,
        )
        d_x = d_parts[0] if directions == 1 else d_parts[0] + d_parts[1]
        return (d_x, grads[0], grads[1], dh, dc, grads[2], grads[3], None)

    chunks, valid_chunks = _chunked(x, valid, remat)
    d_y = jnp.pad(d_y, [(0, chunks.shape[0] * remat - x.shape[0]), (0, 0), (0, 0)])
    w_hh_t = jnp.swapaxes(w_hh, 1, 2)

    def run_chunk(carry, inputs):
        states, totals = carry
        k, start = inputs
        parts = _chunk_parts(chunks, k, directions)
        v = _chunk_parts(valid_chunks, k, directions)
        _, _, chunk_saved = _forward_loop(
            _project(parts, w_ih, precision), bias, *start, w_hh_t, w_hr_t, v, precision,
            unroll, True,
        )
        d_parts, grads, states = _layer_grads(
            parts, w_ih, w_hh, w_hr_t, bias is not None, chunk_saved, v, d_y, *states,
            precision, k * remat,
        )
        return (states, jax.tree.map(jnp.add, totals, grads)), d_parts

    zeros = (tuple(jnp.zeros_like(w) for w in w_ih), None if bias is None else jnp.zeros_like(bias),
             jnp.zeros_like(w_hh), None if w_hr_t is None else jnp.zeros_like(w_hr_t))
    ((dh, dc), grads), d_parts = jax.lax.scan(
        run_chunk, ((dh, dc), zeros), (jnp.arange(chunks.shape[0]), saved), reverse=True
    )
    # Each direction's input gradients come back in the order it visited the chunks.
    d_x = d_parts[0] if directions == 1 else d_parts[0] + d_parts[1][::-1]
    d_x = d_x.reshape(-1, *d_x.shape[2:])[: x.shape[0]]
    return (d_x, grads[0], grads[1], dh, dc, grads[2], grads[3], None)


_layer.defvjp(_layer_fwd, _layer_bwd)


def _dropout(x: Array, rate: float, key: Array) -> Array:
    if rate >= 1.0:
        return jnp.zeros_like(x)
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros_like(x))


def _layer_weights(params: Mapping[str, Array], config: LSTMConfig, layer: int, dtype: Any):
    """One layer's weights in torch's layout: ``w_ih`` one (4H, I) array per direction (each
    direction projects separately, so they are never stacked), ``w_hh`` (D, 4H, P), ``bias``
    (D, 4H) or ``None``, and the projection transposed, ``w_hr_t`` (D, H, P) or ``None``."""
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
    return w_ih, w_hh, bias, w_hr_t


@partial(
    jax.jit,
    static_argnames=(
        "config", "deterministic", "precision", "dtype", "unroll", "padding_value", "remat"
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
    precision: Any,
    dtype: Any,
    unroll: int,
    padding_value: float,
    remat: int,
) -> tuple[Array, State]:
    num_steps = x.shape[0]
    directions = config.num_directions
    valid = None
    if seq_lengths is not None:
        seq_lengths = jnp.clip(seq_lengths.astype(jnp.int32), 0, num_steps)
        valid = jnp.arange(num_steps)[:, None] < seq_lengths[None, :]
    layer_input = x.astype(dtype)
    h0 = h0.astype(dtype).reshape(config.num_layers, directions, *h0.shape[1:])
    c0 = c0.astype(dtype).reshape(config.num_layers, directions, *c0.shape[1:])
    h_n, c_n = [], []
    for layer in range(config.num_layers):
        w_ih, w_hh, bias, w_hr_t = _layer_weights(params, config, layer, dtype)
        if valid is not None and layer == 0:
            # Zero the padding so that nothing in it (NaN, Inf) reaches a value or a gradient;
            # every layer's output is already zero there.
            layer_input = jnp.where(valid[:, :, None], layer_input, jnp.zeros_like(layer_input))
        layer_input, (h_last, c_last) = _layer(
            layer_input, w_ih, bias, h0[layer], c0[layer], w_hh, w_hr_t, valid, precision,
            unroll, remat,
        )
        h_n.append(h_last)
        c_n.append(c_last)
        last = layer == config.num_layers - 1
        if not last and not deterministic and config.dropout > 0:
            key = jax.random.fold_in(dropout_rng, layer)
            layer_input = _dropout(layer_input, config.dropout, key)
    output = layer_input
    if valid is not None and padding_value != 0:
        output = jnp.where(valid[:, :, None], output, jnp.asarray(padding_value, output.dtype))
    h_n = jnp.concatenate(h_n, axis=0)
    c_n = jnp.concatenate(c_n, axis=0)
    return output, (h_n, c_n)


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
) -> tuple[Array, State]:
    """Multi-layer (bi)directional LSTM over a whole sequence, as ``torch.nn.LSTM.forward``.

    **Arguments:**

    - ``params``: torch-named parameters with torch's shapes (see ``config.param_shapes()``).
    - ``x``: ``(L, N, I)``, ``(N, L, I)`` when ``config.batch_first``, or unbatched ``(L, I)``.
    - ``hx``: optional ``(h0, c0)``, ``h0`` of shape ``(D*num_layers, N, H_out)`` and ``c0`` of
      shape ``(D*num_layers, N, H)`` (drop ``N`` for unbatched input); zeros when omitted.
    - ``seq_lengths``: optional int array ``(N,)`` (``()`` for unbatched input): the valid length
      of each sequence, with torch ``PackedSequence`` semantics. Concrete values are checked to
      lie in ``[1, L]``; traced values (under ``jit``) cannot be checked and are clipped to
      ``[0, L]`` (a length of 0 leaves that sequence's state at ``hx`` and its output at padding).
    - ``dropout_rng``: PRNG key for dropout between layers; needed only when
      ``deterministic=False`` and ``config.dropout > 0``.
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

    **Returns:** ``(output, (h_n, c_n))``: ``output`` is ``(L, N, D*H_out)`` (batch-first or
    unbatched like ``x``), ``h_n`` is ``(D*num_layers, N, H_out)``, ``c_n`` is
    ``(D*num_layers, N, H)``, index ``layer*D + direction``; ``batch_first`` never applies to them.
    """
    check_params(params, config.param_shapes(), what="LSTM")
    h0, c0 = check_lstm_inputs(config, x, hx)
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
        config=config, deterministic=bool(deterministic), precision=precision,
        dtype=dtype, unroll=int(unroll), padding_value=float(padding_value),
        remat=_remat_chunk(remat, x.shape[0]),
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
