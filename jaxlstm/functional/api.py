"""The public functions: :func:`lstm` over a whole sequence, :func:`lstm_cell` for one step,
:func:`init_params`; input checks, layouts, dtypes and the layers' assembly.
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
from jaxlstm.functional.carriers import (
    Array,
    LayerInputs,
    LayerWeights,
    Schedule,
    StackInputs,
    State,
)
from jaxlstm.functional.cells import LSTM_CELL, Cell, lstm_cell_for
from jaxlstm.functional.cells.base import step
from jaxlstm.functional.chunks import DEFAULT_CHUNK_ROWS
from jaxlstm.functional.dropout import apply_dropout, dropout_keep
from jaxlstm.functional.indexing import batch_zeros
from jaxlstm.functional.layer import run_layer
from jaxlstm.functional.schedules import Layered, Strategy, from_arguments, resolve
from jaxlstm.functional.sharding import explicit_sharding, onto_mesh_of, whole
from jaxlstm.functional.wavefront import run_stack


def layer_weights(params: Mapping[str, Array], config: LSTMConfig, layer: int, dtype: Any,
                  cell: Cell = LSTM_CELL) -> LayerWeights:
    """One layer's :class:`LayerWeights` of ``cell`` from torch-named ``params``, in ``dtype``."""
    sfx = [param_suffix(layer, d) for d in range(config.num_directions)]
    w_ih = tuple(params[f"weight_ih{s}"].astype(dtype) for s in sfx)
    w_hh = jnp.stack([params[f"weight_hh{s}"] for s in sfx]).astype(dtype)
    bias = bias_hh = None
    if config.bias:
        bias, bias_hh = cell.biases(*(jnp.stack([params[f"bias_{k}{s}"] for s in sfx])
                                      for k in ("ih", "hh")))
        bias, bias_hh = (None if b is None else b.astype(dtype) for b in (bias, bias_hh))
    w_hr_t = None
    if config.proj_size:
        w_hr_t = jnp.stack([params[f"weight_hr{s}"].T for s in sfx]).astype(dtype)
    return LayerWeights(w_ih, w_hh, bias, w_hr_t, bias_hh)


@partial(
    jax.jit,
    static_argnames=(
        "config", "cell", "deterministic", "dtype", "padding_value", "schedule"
    ),
)
def time_major(
    params: Mapping[str, Array],
    x: Array,
    h0: Array,
    c0: Array | None,
    seq_lengths: Array | None,
    dropout_rng: Array | None,
    *,
    config: LSTMConfig,
    cell: Cell,
    deterministic: bool,
    dtype: Any,
    padding_value: float,
    schedule: Schedule,
) -> tuple[Array, State]:
    """The layers of ``cell`` over a time-major ``x`` (T, N, I), every input checked and laid
    out: ``(output, (h_n, c_n))``, ``c0``/``c_n`` ``None`` for a cell without memory. ``config``
    gives the sizes, layers, directions, bias, projection and dropout."""
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
    if c0 is not None:
        c0 = c0.astype(dtype).reshape(config.num_layers, directions, *c0.shape[1:])
    if schedule.wavefront:
        return _wavefront_time_major(params, layer_input, h0[:, 0],
                                     None if c0 is None else c0[:, 0], valid, dropout_rng,
                                     config=config, cell=cell, deterministic=deterministic,
                                     dtype=dtype, padding_value=padding_value, schedule=schedule)
    h_n, c_n = [], []
    for layer in range(config.num_layers):
        weights = layer_weights(params, config, layer, dtype, cell)
        layer_input, (h_last, c_last) = run_layer(
            LayerInputs(layer_input, weights, h0[layer], None if c0 is None else c0[layer]),
            valid, cell, schedule
        )
        h_n.append(h_last)
        c_n.append(c_last)
        last = layer == config.num_layers - 1
        if not last and not deterministic and config.dropout > 0:
            key = jax.random.fold_in(dropout_rng, layer)
            layer_input = apply_dropout(layer_input, config.dropout, key)
    h_n, c_n = jnp.concatenate(h_n), None if c0 is None else jnp.concatenate(c_n)
    return _padded(layer_input, valid, padding_value), (h_n, c_n)


def _padded(output: Array, valid: Array | None, padding_value: float) -> Array:
    """``output`` with ``padding_value`` past each sequence's length (it holds zeros there)."""
    if valid is None or padding_value == 0:
        return output
    return jnp.where(valid[:, :, None], output, jnp.asarray(padding_value, output.dtype))


def _wavefront_time_major(params, x, h0, c0, valid, dropout_rng, *, config, cell, deterministic,
                          dtype, padding_value, schedule):
    """:func:`time_major`'s layers as one :func:`run_stack`; ``h0``/``c0`` (L, N, ·)."""
    weights = tuple(layer_weights(params, config, layer, dtype, cell)
                    for layer in range(config.num_layers))
    keep = None
    if not deterministic and config.dropout > 0:
        # The masks apply_dropout draws for the same keys and shapes, so both schedules agree.
        shape = (x.shape[0], x.shape[1], config.output_size)
        keep = jnp.stack([
            dropout_keep(config.dropout, jax.random.fold_in(dropout_rng, layer), shape, x)
            for layer in range(config.num_layers - 1)
        ])
    output, state = run_stack(StackInputs(x, weights, h0, c0), valid, keep, cell, schedule,
                              float(config.dropout))
    return _padded(output, valid, padding_value), state


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
    schedule: Strategy | None = None,
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
    - ``padding_value``: value of ``output`` past each sequence's length.
    - ``schedule``: how the layers run (never what they compute), a validated strategy from
      ``jaxlstm.functional``: :class:`Layered` ``(unroll=1, chunk_rows=1024)`` (the
      default), ``Remat(chunk=None, unroll=1)`` or ``Wavefront(unroll=1)``. A schedule that
      cannot apply is an error (a bidirectional wavefront); a one-layer wavefront runs its one
      layer.
    - ``unroll``, ``remat``, ``chunk_rows``, ``wavefront``: shorthand for ``schedule``, as the
      modules take it: ``remat=True`` (chunks of ``~sqrt(L)`` steps) or ``remat=k`` is
      ``Remat(k, unroll)``, ``wavefront=True`` is ``Wavefront(unroll)``, otherwise
      ``Layered(unroll, chunk_rows)``. Give either ``schedule`` or these.

    Every JAX transformation applies: ``jit``, ``vmap``, reverse mode (``grad``, ``vjp``,
    ``jacrev``) through a hand-scheduled backward pass, forward mode (``jvp``, ``jacfwd``,
    ``linearize``) and their compositions (``hessian``).

    **Returns:** ``(output, (h_n, c_n))``: ``output`` is ``(L, N, D*H_out)`` (batch-first or
    unbatched like ``x``), ``h_n`` is ``(D*num_layers, N, H_out)``, ``c_n`` is
    ``(D*num_layers, N, H)``, index ``layer*D + direction``; ``batch_first`` never applies to them.
    """
    check_params(params, config.param_shapes(), what="LSTM")
    h0, c0 = check_lstm_inputs(config, x, hx)
    shorthand = from_arguments(unroll, remat, chunk_rows, wavefront)
    if schedule is not None and shorthand != Layered():
        raise ValueError(f"give either schedule={schedule!r} or the shorthand arguments "
                         "(unroll, remat, chunk_rows, wavefront), not both")
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
    x, h0, c0 = onto_mesh_of((x, h0, c0), params)
    if h0 is None:
        batch = x.shape[1]
        layers = config.num_directions * config.num_layers
        h0 = batch_zeros(x, (layers, batch, config.output_size), dtype)
        c0 = batch_zeros(x, (layers, batch, config.hidden_size), dtype)
    output, (h_n, c_n) = time_major(
        dict(params), x, h0, c0, seq_lengths, dropout_rng,
        config=config, cell=lstm_cell_for(config.gate_activation),
        deterministic=bool(deterministic), dtype=dtype,
        padding_value=float(padding_value),
        schedule=resolve(schedule or shorthand, config, x.shape[0], precision),
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
    x, h, c = onto_mesh_of((x, h, c), params)
    if h is None:
        # Broadcast from ``x``, so that zeros carry its batch sharding (see batch_zeros).
        h = c = jnp.broadcast_to(jnp.zeros_like(x[..., :1], dtype=dtype),
                                 x.shape[:-1] + (config.hidden_size,))
    x, h, c = (jnp.asarray(a).astype(dtype) for a in (x, h, c))
    return cell_step(lstm_cell_for(config.gate_activation), params, x, h, c, bias=config.bias,
                     precision=precision)


def cell_step(cell: Cell, params: Mapping[str, Array], x: Array, h: Array, c: Array | None, *,
              bias: bool, precision: Any) -> State:
    """One step of ``cell`` with torch's ``*Cell`` parameters (``weight_ih``, ``weight_hh``,
    ``bias_ih``, ``bias_hh``), all in ``x``'s dtype: ``(h', c')``."""
    dtype = x.dtype
    # Rows stay split as x is (along the batch), whatever the weights' split (see sharding).
    gx, gh = (jnp.einsum("...i,gi->...g", a, params[w].astype(dtype), precision=precision,
                         out_sharding=explicit_sharding(x))
              for a, w in ((x, "weight_ih"), (h, "weight_hh")))
    if bias:
        bias, bias_hh = cell.biases(whole(params["bias_ih"]), whole(params["bias_hh"]))
        gx = gx + bias.astype(dtype)
        if bias_hh is not None:
            gh = gh + bias_hh.astype(dtype)
    return step(cell, gx, gh, h, c)


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
