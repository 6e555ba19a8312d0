"""One indexing vocabulary for the loops: a direction's time at a loop step, its rows of the
per-direction buffers, its columns of a layer output, and the skewed buffers of a wavefront.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlstm.functional.carriers import Array


def batch_zeros(like: Array, shape: tuple[int, ...], dtype, *, axis: int = 1,
                like_axis: int = 1) -> Array:
    """Zeros of ``shape`` and ``dtype`` whose axis ``axis`` (the batch) is laid out as axis
    ``like_axis`` of ``like``.

    Every buffer a loop writes batch rows into is made here. Under JAX's Explicit sharding
    (the default of ``jax.make_mesh``) ``jnp.zeros(shape)`` is replicated, and writing rows
    sharded along the batch into it is a type error; zeros broadcast from a slice of ``like``
    carry its batch sharding instead. Without a mesh, or under Auto axes, they are plain
    zeros: XLA folds them to a constant, and nothing of ``like`` is read.
    """
    index = tuple(slice(None) if i == like_axis else 0 for i in range(like.ndim))
    column = jnp.zeros_like(like[index], dtype=dtype)
    others = [i for i in range(len(shape)) if i != axis]
    return jnp.broadcast_to(jnp.expand_dims(column, others), shape)


def at_time(direction: int, step: Array, steps: int) -> Array:
    """The time a direction works on at loop step ``step``: the forward direction goes
    ``0 .. T-1``, the reverse one ``T-1 .. 0``. Every buffer stays in natural time order, so
    nothing is ever reversed or copied to give the reverse direction its reading order."""
    return step if direction == 0 else steps - 1 - step


def read_rows(buffers, step: Array, steps: int) -> Array:
    """Each direction's row at its own time: D buffers (T, N, F) -> (D, N, F)."""
    return jnp.stack([
        jax.lax.dynamic_index_in_dim(b, at_time(d, step, steps), keepdims=False)
        for d, b in enumerate(buffers)
    ])


def write_rows(buffers, rows: Array, step: Array, steps: int) -> tuple[Array, ...]:
    """Write ``rows`` (D, N, F) into each direction's buffer (T, N, F) at its own time."""
    return tuple(
        jax.lax.dynamic_update_index_in_dim(b, rows[d], at_time(d, step, steps), 0)
        for d, b in enumerate(buffers)
    )


def read_columns(y: Array, step: Array, directions: int) -> Array:
    """Each direction's block of a layer output (T, N, D*P) at its own time -> (D, N, P)."""
    width = y.shape[-1] // directions
    zero = jnp.zeros_like(step)
    return jnp.stack([
        jax.lax.dynamic_slice(y, (at_time(d, step, y.shape[0]), zero, zero + d * width),
                              (1, y.shape[1], width))[0]
        for d in range(directions)
    ])


def write_columns(y: Array, blocks: Array, step: Array) -> Array:
    """Write ``blocks`` (D, N, P) into the layer output (T, N, D*P): direction ``d`` fills
    columns ``d*P .. (d+1)*P`` at its own time, the layout torch's output has."""
    zero = jnp.zeros_like(step)
    for d in range(blocks.shape[0]):
        index = (at_time(d, step, y.shape[0]), zero, zero + d * blocks.shape[-1])
        y = jax.lax.dynamic_update_slice(y, blocks[d][None], index)
    return y


def masked(x: Array, keep: Array | None) -> Array:
    return x if keep is None else jnp.where(keep, x, jnp.zeros_like(x))


def keep_at(valid, step, steps):
    return None if valid is None else read_rows(valid, step, steps)[:, :, None]


def per_direction(valid: Array | None, directions: int) -> tuple[Array, ...] | None:
    return None if valid is None else (valid,) * directions


def skew(mask: Array | None, steps: int, layers: int, batch: int) -> Array:
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


def row_at(buf: Array, s: Array) -> Array:
    """Row ``s`` of ``buf`` (along its first axis)."""
    return jax.lax.dynamic_index_in_dim(buf, s, keepdims=False)


def read_skewed(buf: Array, s: Array) -> Array:
    """Iteration ``s``'s slice (L, N, F) of a skewed (L, S, N, F) buffer."""
    return jax.lax.dynamic_index_in_dim(buf, s, axis=1, keepdims=False)


def write_skewed(buf: Array, rows: Array, s: Array) -> Array:
    """Write iteration ``s``'s slice ``rows`` (L, N, F) into a skewed (L, S, N, F) buffer."""
    return jax.lax.dynamic_update_index_in_dim(buf, rows, s, 1)


def flat_rows(a: Array) -> Array:
    """(..., F) -> (rows, F)."""
    return a.reshape(-1, a.shape[-1])


def unskew(buf: Array, layer: int, steps: int) -> tuple[Array]:
    """Layer ``layer``'s (T, N, F) rows of a skewed buffer, as a one-direction tuple."""
    return (buf[layer, layer:layer + steps],)
