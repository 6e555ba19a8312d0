"""The LSTM math, once: pure functions of (params dict, inputs, config).

``params`` is a flat mapping from torch's parameter names (``weight_ih_l0``, ``bias_hh_l1_reverse``,
``weight_hr_l0``, ``weight_ih``, ...) to arrays with torch's shapes. Everything else in the package
(modules, porting, the parity suite) is a shell over these functions.

Equations (torch's, gates stacked along ``4H`` in the order i, f, g, o)::

    gates = x W_ih^T + b_ih + h W_hh^T + b_hh
    c'    = sigmoid(f) * c + sigmoid(i) * tanh(g)
    h'    = sigmoid(o) * tanh(c')              (h' <- h' W_hr^T when proj_size > 0)

Schedule: each layer projects the whole input sequence in one GEMM before the recurrence, and
both directions of a bidirectional layer advance together in one ``lax.scan`` (a batched matmul
over the direction axis). Variable lengths follow torch's ``PackedSequence`` semantics: the
reverse direction reads each sequence backwards from its own last valid element, states stop
updating after a sequence's last step, outputs past it are ``padding_value``.
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
# gate once the i, f and o rows are scaled by 1/2. Scaling by a power of two is exact, so the
# fast path folds the scale into the weights once per call instead of once per step.
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
    t_i, t_f, g, t_o = jnp.split(t, 4, axis=-1)
    c_new = (0.5 * t_f + 0.5) * c + (0.5 * t_i + 0.5) * g
    return (0.5 * t_o + 0.5) * jnp.tanh(c_new), c_new, t


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


def _forward_scan(gates_x, bias, h0, c0, w_hh_t, w_hr_t, valid, precision, unroll, save):
    """The recurrence of D directions in one scan; ``save`` also returns (t, c') for each step.

    ``gates_x`` and the returned ``ys`` hold one contiguous (T, N, .) array per direction, so
    the input projection and the output need no transposes; the directions are stacked only
    inside the step, for one batched matmul. The bias is added there too, fused with the step's
    other elementwise work instead of costing a pass over all projections.
    """
    bias = None if bias is None else bias[:, None, :]

    def step(carry: State, inputs):
        h, c = carry
        gx, v = inputs
        gates = jnp.stack(gx) + jnp.einsum("dnp,dpg->dng", h, w_hh_t, precision=precision)
        if bias is not None:
            gates = gates + bias
        h_new, c_new, t = cell_activate(gates, c)
        if w_hr_t is not None:
            h_new = jnp.einsum("dnh,dhp->dnp", h_new, w_hr_t, precision=precision)
        saved = (t, c_new) if save else ()
        if v is None:
            y, carry = h_new, (h_new, c_new)
        else:
            keep = v[None, :, None]
            y = jnp.where(keep, h_new, jnp.zeros_like(h_new))
            carry = (jnp.where(keep, h_new, h), jnp.where(keep, c_new, c))
        return carry, (tuple(y[d] for d in range(len(gx))), saved)

    (h_t, c_t), (ys, saved) = jax.lax.scan(step, (h0, c0), (tuple(gates_x), valid), unroll=unroll)
    return ys, (h_t, c_t), saved


@partial(jax.custom_vjp, nondiff_argnums=(7, 8))
def _recurrence(
    gates_x: tuple[Array, ...],
    bias: Array | None,
    h0: Array,
    c0: Array,
    w_hh_t: Array,
    w_hr_t: Array | None,
    valid: Array | None,
    precision: Any,
    unroll: int,
) -> tuple[tuple[Array, ...], State]:
    """Run D independent directions through time in one scan.

    **Arguments:**

    - ``gates_x``: one (T, N, 4H) array per direction: scaled input projections, each already
      in its direction's reading order; ``bias``: (D, 4H) scaled ``b_ih + b_hh`` or ``None``.
    - ``h0``: (D, N, H_out), ``c0``: (D, N, H) initial states.
    - ``w_hh_t``: (D, H_out, 4H) scaled recurrent weights, transposed; ``w_hr_t``: (D, H, P) or
      ``None``.
    - ``valid``: (T, N) bool, True where step t lies inside sequence n (a prefix of each
      column), or ``None`` (all valid).

    **Returns:** ``(ys, (h_T, c_T))``: ``ys`` one (T, N, H_out) array per direction, zero at
    invalid steps.

    The backward pass is hand-scheduled: its scan carries only ``(dh, dc)`` and does one small
    GEMM per step; the weight gradients are single large GEMMs over all steps after the loop.
    """
    ys, carry, _ = _forward_scan(
        gates_x, bias, h0, c0, w_hh_t, w_hr_t, valid, precision, unroll, False
    )
    return ys, carry


def _recurrence_fwd(gates_x, bias, h0, c0, w_hh_t, w_hr_t, valid, precision, unroll):
    ys, carry, (t, c_new) = _forward_scan(
        gates_x, bias, h0, c0, w_hh_t, w_hr_t, valid, precision, unroll, True
    )
    return (ys, carry), (t, c_new, ys, h0, c0, w_hh_t, w_hr_t, valid, bias is not None)


def _backward_scan(t, c_new, c0, w_hh_t, w_hr_t, valid, d_ys, d_h_last, d_c_last,
                   precision, unroll):
    """Reverse scan carrying only ``(dh, dc)``: the gradient of each step's scaled gates.

    Returns ``(d_gates, dh_cand, d_h0, d_c0)``: ``d_gates`` one (T, N, 4H) array per direction;
    ``dh_cand`` (the cotangent of each projected output, (T, N, P) per direction) only with a
    projection, else ``()``.
    """
    # Valid steps form a prefix of each sequence, so the state entering a valid step t is the
    # candidate of step t - 1 (or the initial state): no carries need saving.
    c_prev = jnp.concatenate([c0[None], c_new[:-1]])
    directions = len(d_ys)

    def step(carry: State, inputs):
        dh, dc = carry
        dy, t_s, c_s, c_p, v = inputs
        dy = jnp.stack(dy)
        if v is None:
            dh_cand, dc_cand = dh + dy, dc
        else:
            keep = v[None, :, None]
            dh_cand = jnp.where(keep, dh + dy, jnp.zeros_like(dh))
            dc_cand = jnp.where(keep, dc, jnp.zeros_like(dc))
        dr = dh_cand
        if w_hr_t is not None:
            dr = jnp.einsum("dnp,dhp->dnh", dh_cand, w_hr_t, precision=precision)
        d_gates, dc_prev = _cell_activate_vjp(t_s, c_s, c_p, dr, dc_cand)
        if v is not None:
            # Select, never multiply by zero: a step past a sequence's end may hold an
            # infinite state, and 0 * inf would turn torch's inf gradients into NaN.
            d_gates = jnp.where(keep, d_gates, jnp.zeros_like(d_gates))
        dh_prev = jnp.einsum("dng,dpg->dnp", d_gates, w_hh_t, precision=precision)
        if v is not None:
            dh_prev = jnp.where(keep, dh_prev, dh)
            dc_prev = jnp.where(keep, dc_prev, dc)
        per_direction = tuple(d_gates[d] for d in range(directions))
        kept = tuple(dh_cand[d] for d in range(directions)) if w_hr_t is not None else ()
        return (dh_prev, dc_prev), (per_direction, kept)

    (d_h0, d_c0), (d_gates, dh_cand) = jax.lax.scan(
        step, (d_h_last, d_c_last), (tuple(d_ys), t, c_new, c_prev, valid), reverse=True,
        unroll=unroll,
    )
    return d_gates, dh_cand, d_h0, d_c0


def _recurrent_weight_grads(t, c_new, ys, h0, d_gates, dh_cand, w_hr_t, valid, precision):
    """``W_hh`` (and ``W_hr``) gradients as one GEMM each over all steps and sequences."""
    d_w_hh_t = jnp.stack([
        jnp.einsum("tnp,tng->pg", jnp.concatenate([h0[d][None], y[:-1]]), dg, precision=precision)
        for d, (y, dg) in enumerate(zip(ys, d_gates))
    ])
    if w_hr_t is None:
        return d_w_hh_t, None
    t_o = jnp.split(t, 4, axis=-1)[3]
    r = (0.5 * t_o + 0.5) * jnp.tanh(c_new)
    if valid is not None:
        r = jnp.where(valid[:, None, :, None], r, jnp.zeros_like(r))
    return d_w_hh_t, jnp.stack([
        jnp.einsum("tnh,tnp->hp", r[:, d], dhc, precision=precision)
        for d, dhc in enumerate(dh_cand)
    ])


def _recurrence_bwd(precision, unroll, residuals, cotangents):
    t, c_new, ys, h0, c0, w_hh_t, w_hr_t, valid, has_bias = residuals
    d_ys, (d_h_last, d_c_last) = cotangents
    d_gates, dh_cand, d_h0, d_c0 = _backward_scan(
        t, c_new, c0, w_hh_t, w_hr_t, valid, d_ys, d_h_last, d_c_last, precision, unroll
    )
    d_w_hh_t, d_w_hr_t = _recurrent_weight_grads(
        t, c_new, ys, h0, d_gates, dh_cand, w_hr_t, valid, precision
    )
    d_bias = _bias_grad(d_gates) if has_bias else None
    return d_gates, d_bias, d_h0, d_c0, d_w_hh_t, d_w_hr_t, None


def _bias_grad(d_gates) -> Array:
    return jnp.stack([jnp.sum(dg, axis=(0, 1)) for dg in d_gates])


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


def _project(readings, w_ih_t: Array, precision: Any) -> tuple[Array, ...]:
    """Each direction's scaled input projections for all steps in one GEMM: (T, N, I) ->
    (T, N, 4H), row-major, so the scan reads them without a transpose."""
    return tuple(jnp.dot(r, w_ih_t[d], precision=precision) for d, r in enumerate(readings))


def _chunked(arrays, valid, chunk):
    """Pad time to a multiple of ``chunk`` (padding is invalid) and split it into chunks:
    each (T, N, F) array becomes (T / chunk, chunk, N, F)."""
    steps, batch = arrays[0].shape[:2]
    chunks = -(-steps // chunk)
    pad = chunks * chunk - steps
    if pad and valid is None:
        valid = jnp.ones((steps, batch), bool)
    arrays = tuple(
        jnp.pad(a, [(0, pad), (0, 0), (0, 0)]).reshape(chunks, chunk, *a.shape[1:])
        for a in arrays
    )
    if valid is not None:
        valid = jnp.pad(valid, [(0, pad), (0, 0)]).reshape(chunks, chunk, batch)
    return arrays, valid


def _unchunked(arrays, steps: int):
    return tuple(a.reshape(-1, *a.shape[2:])[:steps] for a in arrays)


@partial(jax.custom_vjp, nondiff_argnums=(8, 9, 10))
def _remat_layer(readings, w_ih_t, bias, h0, c0, w_hh_t, w_hr_t, valid, precision, unroll, chunk):
    """Projection + recurrence of one layer keeping only chunk-boundary states for the backward
    pass, which recomputes each chunk's forward: activation memory ~ (T / chunk + chunk) steps.

    Arguments as :func:`_recurrence`, with ``readings`` the unprojected (T, N, I) input of each
    direction and ``w_ih_t`` (D, I, 4H).
    """
    gates_x = _project(readings, w_ih_t, precision)
    ys, carry, _ = _forward_scan(
        gates_x, bias, h0, c0, w_hh_t, w_hr_t, valid, precision, unroll, False
    )
    return ys, carry


def _remat_layer_fwd(readings, w_ih_t, bias, h0, c0, w_hh_t, w_hr_t, valid, precision, unroll,
                     chunk):
    chunks, valid_chunks = _chunked(readings, valid, chunk)

    def run_chunk(carry, inputs):
        part, v = inputs
        gates_x = _project(part, w_ih_t, precision)
        ys, new_carry, _ = _forward_scan(gates_x, bias, *carry, w_hh_t, w_hr_t, v, precision,
                                         unroll, False)
        return new_carry, (ys, carry)

    carry, (ys, starts) = jax.lax.scan(run_chunk, (h0, c0), (chunks, valid_chunks))
    ys = _unchunked(ys, readings[0].shape[0])
    return (ys, carry), (readings, w_ih_t, bias, starts, w_hh_t, w_hr_t, valid)


def _remat_layer_bwd(precision, unroll, chunk, residuals, cotangents):
    readings, w_ih_t, bias, starts, w_hh_t, w_hr_t, valid = residuals
    d_ys, (d_h_last, d_c_last) = cotangents
    chunks, valid_chunks = _chunked(readings, valid, chunk)
    d_ys, _ = _chunked(d_ys, None, chunk)

    def run_chunk(carry, inputs):
        (dh, dc), (d_w_ih_t, d_bias, d_w_hh_t, d_w_hr_t) = carry
        part, v, dy, (h_s, c_s) = inputs
        gates_x = _project(part, w_ih_t, precision)
        ys, _, (t, c_new) = _forward_scan(gates_x, bias, h_s, c_s, w_hh_t, w_hr_t, v, precision,
                                          unroll, True)
        d_gates, dh_cand, dh, dc = _backward_scan(
            t, c_new, c_s, w_hh_t, w_hr_t, v, dy, dh, dc, precision, unroll
        )
        hh, hr = _recurrent_weight_grads(t, c_new, ys, h_s, d_gates, dh_cand, w_hr_t, v,
                                         precision)
        d_w_hh_t = d_w_hh_t + hh
        if w_hr_t is not None:
            d_w_hr_t = d_w_hr_t + hr
        d_w_ih_t = d_w_ih_t + jnp.stack([
            jnp.einsum("tni,tng->ig", r, dg, precision=precision)
            for r, dg in zip(part, d_gates)
        ])
        if bias is not None:
            d_bias = d_bias + _bias_grad(d_gates)
        d_part = tuple(
            jnp.dot(dg, w_ih_t[d].T, precision=precision) for d, dg in enumerate(d_gates)
        )
        return ((dh, dc), (d_w_ih_t, d_bias, d_w_hh_t, d_w_hr_t)), d_part

    zeros = (jnp.zeros_like(w_ih_t), None if bias is None else jnp.zeros_like(bias),
             jnp.zeros_like(w_hh_t), None if w_hr_t is None else jnp.zeros_like(w_hr_t))
    ((d_h0, d_c0), (d_w_ih_t, d_bias, d_w_hh_t, d_w_hr_t)), d_chunks = jax.lax.scan(
        run_chunk, ((d_h_last, d_c_last), zeros), (chunks, valid_chunks, d_ys, starts),
        reverse=True,
    )
    d_readings = _unchunked(d_chunks, readings[0].shape[0])
    return d_readings, d_w_ih_t, d_bias, d_h0, d_c0, d_w_hh_t, d_w_hr_t, None


_remat_layer.defvjp(_remat_layer_fwd, _remat_layer_bwd)


def reverse_in_time(x: Array, seq_lengths: Array | None) -> Array:
    """Reverse time-major ``x`` (T, N, ...) along time, each sequence within its own length.

    Steps past a sequence's length stay where they are. The map is its own inverse.
    """
    if seq_lengths is None:
        return x[::-1]
    steps = jnp.arange(x.shape[0])[:, None]
    index = jnp.where(steps < seq_lengths[None, :], seq_lengths[None, :] - 1 - steps, steps)
    index = index.reshape(index.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, index, axis=0)


def _dropout(x: Array, rate: float, key: Array) -> Array:
    if rate >= 1.0:
        return jnp.zeros_like(x)
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros_like(x))


def _layer_weights(params: Mapping[str, Array], config: LSTMConfig, layer: int, dtype: Any):
    """Stack one layer's weights over directions, scaled and arranged once for the scan."""
    sfx = [param_suffix(layer, d) for d in range(config.num_directions)]
    scale = gate_scale(config.hidden_size, dtype)
    w_ih_t = jnp.stack([params[f"weight_ih{s}"].T for s in sfx]).astype(dtype) * scale
    w_hh_t = jnp.stack([params[f"weight_hh{s}"].T for s in sfx]).astype(dtype) * scale
    bias = None
    if config.bias:
        bias = jnp.stack([params[f"bias_ih{s}"] + params[f"bias_hh{s}"] for s in sfx])
        bias = bias.astype(dtype) * scale
    w_hr_t = None
    if config.proj_size:
        w_hr_t = jnp.stack([params[f"weight_hr{s}"].T for s in sfx]).astype(dtype)
    return w_ih_t, w_hh_t, bias, w_hr_t


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
        w_ih_t, w_hh_t, bias, w_hr_t = _layer_weights(params, config, layer, dtype)
        if valid is not None:
            # Zero the padding so that nothing in it (NaN, Inf) reaches a value or a gradient.
            layer_input = jnp.where(valid[:, :, None], layer_input, jnp.zeros_like(layer_input))
        readings = [layer_input]
        if directions == 2:
            readings.append(reverse_in_time(layer_input, seq_lengths))
        if remat:
            ys, (h_last, c_last) = _remat_layer(
                tuple(readings), w_ih_t, bias, h0[layer], c0[layer], w_hh_t, w_hr_t, valid,
                precision, unroll, remat,
            )
        else:
            gates_x = _project(readings, w_ih_t, precision)
            ys, (h_last, c_last) = _recurrence(
                gates_x, bias, h0[layer], c0[layer], w_hh_t, w_hr_t, valid, precision, unroll
            )
        outputs = [ys[0]]
        if directions == 2:
            outputs.append(reverse_in_time(ys[1], seq_lengths))
        layer_input = jnp.concatenate(outputs, axis=-1) if directions == 2 else outputs[0]
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
    - ``unroll``: ``lax.scan`` unroll factor of the recurrence.
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
