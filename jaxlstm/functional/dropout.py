"""Inverted dropout between layers: the masks and their application."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlstm.functional.carriers import Array
from jaxlstm.functional.sharding import explicit_sharding


def drop(x: Array, keep: Array, rate: float) -> Array:
    """:func:`apply_dropout` with its mask given.

    A multiplication by a constant scale, never a division by ``1 - rate``: at ``rate = 1``
    the scale is 0, so values and gradients are zeros as in torch (``x / 0`` in the untaken
    branch of a ``where`` would make the gradient ``0 * inf = nan``)."""
    scale = 0.0 if rate >= 1.0 else 1.0 / (1.0 - rate)
    return jnp.where(keep, x * jnp.asarray(scale, x.dtype), jnp.zeros_like(x))


def dropout_keep(rate: float, key: Array, shape, like: Array) -> Array:
    """Dropout's mask: True (kept) with probability ``1 - rate`` (never, at ``rate >= 1``),
    split over devices as ``like`` (the layer input, same rank) is under Explicit axes; the
    bits drawn do not depend on the split."""
    return jax.random.bernoulli(key, 1.0 - rate, shape, out_sharding=explicit_sharding(like))


def apply_dropout(x: Array, rate: float, key: Array) -> Array:
    return drop(x, dropout_keep(rate, key, x.shape, x), rate)
