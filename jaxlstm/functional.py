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


def cell_update(gates: Array, c: Array) -> State:
    """One LSTM state update from pre-activation ``gates`` (..., 4H) and cell state ``c`` (..., H).

    Returns ``(h, c')`` before any projection. This is the only place the gate equations live.
    """
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    c_new = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    return jax.nn.sigmoid(o) * jnp.tanh(c_new), c_new


def _recurrence(
    gates_x: Array,
    h0: Array,
    c0: Array,
    w_hh_t: Array,
    w_hr_t: Array | None,
    valid: Array | None,
    precision: Any,
    unroll: int,
) -> tuple[Array, State]:
    """Run D independent directions through time in one scan.

    Arguments:
        gates_x: (T, D, N, 4H) input projections (bias included), already in each direction's
            reading order.
        h0: (D, N, H_out), c0: (D, N, H) initial states.
        w_hh_t: (D, H_out, 4H) recurrent weights, transposed. w_hr_t: (D, H, P) or None.
        valid: (T, N) bool, True where step t is inside sequence n, or None (all valid).

    Returns ``(ys, (h_T, c_T))`` with ``ys`` (T, D, N, H_out), zero at invalid steps.
    """

    def step(carry: State, inputs: tuple[Array, Array | None]) -> tuple[State, Array]:
        h, c = carry
        gx, v = inputs
        gates = gx + jnp.einsum("dnp,dpg->dng", h, w_hh_t, precision=precision)
        h_new, c_new = cell_update(gates, c)
        if w_hr_t is not None:
            h_new = jnp.einsum("dnh,dhp->dnp", h_new, w_hr_t, precision=precision)
        if v is None:
            return (h_new, c_new), h_new
        keep = v[None, :, None]
        y = jnp.where(keep, h_new, jnp.zeros_like(h_new))
        return (jnp.where(keep, h_new, h), jnp.where(keep, c_new, c)), y

    (h_t, c_t), ys = jax.lax.scan(step, (h0, c0), (gates_x, valid), unroll=unroll)
    return ys, (h_t, c_t)


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
    """Stack one layer's weights over directions, arranged once for the scan."""
    sfx = [param_suffix(layer, d) for d in range(config.num_directions)]
    w_ih = jnp.stack([params[f"weight_ih{s}"] for s in sfx]).astype(dtype)
    w_hh_t = jnp.stack([params[f"weight_hh{s}"].T for s in sfx]).astype(dtype)
    bias = None
    if config.bias:
        bias = jnp.stack([params[f"bias_ih{s}"] + params[f"bias_hh{s}"] for s in sfx]).astype(dtype)
    w_hr_t = None
    if config.proj_size:
        w_hr_t = jnp.stack([params[f"weight_hr{s}"].T for s in sfx]).astype(dtype)
    return w_ih, w_hh_t, bias, w_hr_t


@partial(
    jax.jit,
    static_argnames=("config", "deterministic", "precision", "dtype", "unroll", "padding_value"),
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
        w_ih, w_hh_t, bias, w_hr_t = _layer_weights(params, config, layer, dtype)
        if valid is not None:
            # Zero the padding so that nothing in it (NaN, Inf) reaches a value or a gradient.
            layer_input = jnp.where(valid[:, :, None], layer_input, jnp.zeros_like(layer_input))
        readings = [layer_input]
        if directions == 2:
            readings.append(reverse_in_time(layer_input, seq_lengths))
        gates_x = jnp.einsum("dtni,dgi->tdng", jnp.stack(readings), w_ih, precision=precision)
        if bias is not None:
            gates_x = gates_x + bias[None, :, None, :]
        ys, (h_last, c_last) = _recurrence(
            gates_x, h0[layer], c0[layer], w_hh_t, w_hr_t, valid, precision, unroll
        )
        outputs = [ys[:, 0]]
        if directions == 2:
            outputs.append(reverse_in_time(ys[:, 1], seq_lengths))
        layer_input = jnp.concatenate(outputs, axis=-1)
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


def init_params(key: Array, config: LSTMConfig | LSTMCellConfig, dtype: Any = jnp.float32):
    """torch's initialisation: every parameter ~ U(-1/sqrt(hidden_size), 1/sqrt(hidden_size))."""
    bound = 1.0 / np.sqrt(config.hidden_size)
    shapes = config.param_shapes()
    keys = jax.random.split(key, len(shapes))
    return {
        name: jax.random.uniform(k, shape, dtype, minval=-bound, maxval=bound)
        for k, (name, shape) in zip(keys, shapes.items())
    }
