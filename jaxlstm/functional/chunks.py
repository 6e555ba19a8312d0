"""Time in chunks: the forward-only pass projects the input a chunk at a time, and remat
recomputes each chunk's activations during the backward pass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlstm.functional.carriers import Array, LayerInputs, Schedule
from jaxlstm.functional.cells import Cell
from jaxlstm.functional.indexing import at_time, batch_zeros
from jaxlstm.functional.recurrence import inference_loop, project


def chunked(x: Array, valid: Array | None, chunk: int) -> tuple[Array, Array | None]:
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


def chunk_parts(chunks: Array | None, k: Array, directions: int) -> tuple[Array, ...] | None:
    """The chunk each direction works on at chunk-loop step ``k``: the forward direction goes
    through chunks ``0 .. K-1``, the reverse one through ``K-1 .. 0``."""
    if chunks is None:
        return None
    return tuple(
        jax.lax.dynamic_index_in_dim(chunks, at_time(d, k, chunks.shape[0]), keepdims=False)
        for d in range(directions)
    )


def chunked_forward(cell: Cell, inputs: LayerInputs, valid, chunk: int, schedule: Schedule):
    """Projection and recurrence of one layer a chunk of ``chunk`` steps at a time, so that only
    one chunk's projections exist at once. Returns ``(y, (h_T, c_T), starts)``: ``starts`` are
    the states entering each chunk-loop step."""
    x, weights, h0, c0 = inputs
    directions = len(weights.w_ih)
    chunks, valid_chunks = chunked(x, valid, chunk)
    y = batch_zeros(x, (chunks.shape[0] * chunk, x.shape[1], directions * h0.shape[-1]),
                    h0.dtype)

    def run_chunk(carry, k):
        state, y = carry
        gates_x = project(chunk_parts(chunks, k, directions), weights.w_ih,
                           schedule.precision)
        y, new_state = inference_loop(cell, gates_x, weights, state,
                                       chunk_parts(valid_chunks, k, directions), y, k * chunk,
                                       schedule)
        return (new_state, y), state

    (state, y), starts = jax.lax.scan(run_chunk, ((h0, c0), y), jnp.arange(chunks.shape[0]))
    return y[: x.shape[0]], state, starts


# The default of ``lstm(..., chunk_rows=)``.
DEFAULT_CHUNK_ROWS = 1024


def inference_chunk(steps: int, batch: int, rows: int) -> int:
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
