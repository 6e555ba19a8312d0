"""A linear map with a hand-written transpose, under every JAX transformation.

``jax.custom_jvp`` gives a function forward mode, and JAX derives its reverse mode by
transposing the tangent computation. :func:`linear_map` lets that tangent computation be a
call whose transpose is given, not derived: the LSTM's tangent recurrence runs forward in time,
and its transpose is the hand-scheduled backward loop. (``jax.custom_derivatives.linear_call``
does the same, but cannot be differentiated with respect to its residuals or batched, which
second order and ``vmap`` need.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

linear_map_p = Primitive("jaxlstm_linear_map")
linear_map_p.multiple_results = True


def _aval(out: Any) -> jax.core.ShapedArray:
    if isinstance(out, jax.ShapeDtypeStruct):
        return jax.core.ShapedArray(out.shape, out.dtype)
    return jax.typeof(out).update(weak_type=False)


def linear_map(fun: Callable, transpose: Callable, residuals: Any, operands: Any, out: Any):
    """``fun(residuals, operands)``, linear in ``operands``, transposed by ``transpose``.

    **Arguments:**

    - ``fun(residuals, operands) -> outputs``: linear in ``operands`` (any pytree of arrays).
    - ``transpose(residuals, cotangents) -> operand cotangents``: its transpose, taking a
      pytree like ``out`` and returning one like ``operands``.
    - ``out``: a pytree of arrays (or ``jax.ShapeDtypeStruct``) shaped like the outputs, so
      that staging the call never traces ``fun``.
    """
    res_flat, res_tree = jax.tree.flatten(residuals)
    lin_flat, lin_tree = jax.tree.flatten(operands)
    out_flat, out_tree = jax.tree.flatten(out)

    def flat_fun(*args):
        res = jax.tree.unflatten(res_tree, args[: len(res_flat)])
        return jax.tree.leaves(fun(res, jax.tree.unflatten(lin_tree, args[len(res_flat):])))

    def flat_transpose(*args):
        res = jax.tree.unflatten(res_tree, args[: len(res_flat)])
        cts = jax.tree.unflatten(out_tree, args[len(res_flat):])
        return jax.tree.leaves(transpose(res, cts))

    # The outputs' full types, sharding included (under Explicit axes, a batch-split output).
    avals = tuple(_aval(o) for o in out_flat)
    result = linear_map_p.bind(*res_flat, *lin_flat, fun=flat_fun, transpose=flat_transpose,
                               num_res=len(res_flat), out_avals=avals)
    return jax.tree.unflatten(out_tree, result)


def _impl(*args, fun, transpose, num_res, out_avals):
    del transpose, num_res, out_avals
    return fun(*args)


def _abstract_eval(*args, out_avals, **params):
    return out_avals


def _zeros_if_symbolic(values):
    # Zeros of the symbolic zero's own type: its sharding and, under ``shard_map``, the mesh
    # axes it varies over.
    return [ad.instantiate_zeros(v) for v in values]


def _tangent_of(value, tangent):
    """``tangent`` as ``jax.jvp`` takes it: zeros for a symbolic zero, ``float0`` for an
    integer or boolean ``value`` (a mask, say)."""
    aval = jax.typeof(value)
    if not jnp.issubdtype(aval.dtype, jnp.inexact):
        return np.zeros(aval.shape, jax.dtypes.float0)
    return ad.instantiate_zeros(tangent)


def _jvp(primals, tangents, *, fun, transpose, num_res, out_avals):
    params = dict(fun=fun, transpose=transpose, num_res=num_res, out_avals=out_avals)
    res, lin = primals[:num_res], primals[num_res:]
    res_dot, lin_dot = tangents[:num_res], tangents[num_res:]
    out = linear_map_p.bind(*primals, **params)
    # Linear in the operands: their tangents go through the same map (and keep its transpose).
    lin_dot = _zeros_if_symbolic(lin_dot)
    out_dot = linear_map_p.bind(*res, *lin_dot, **params)
    if any(type(t) is not ad.Zero for t in res_dot):
        # The map's dependence on its residuals (second order): JAX's own derivative of ``fun``.
        res_dot = [_tangent_of(r, t) for r, t in zip(res, res_dot)]
        _, extra = jax.jvp(lambda *r: fun(*r, *lin), tuple(res), tuple(res_dot))
        out_dot = [a + b for a, b in zip(out_dot, extra)]
    return out, out_dot


def _transpose(cts, *args, fun, transpose, num_res, out_avals):
    del fun
    res, lin = args[:num_res], args[num_res:]
    assert not any(ad.is_undefined_primal(r) for r in res)
    cts = _zeros_if_symbolic(cts)
    lin_cts = transpose(*res, *cts)
    return [None] * num_res + [_invariant_like(ct, x.aval) if ad.is_undefined_primal(x) else None
                               for ct, x in zip(lin_cts, lin)]


def _invariant_like(ct, aval):
    """``ct`` summed over the ``shard_map`` axes it varies over and its operand does not (a
    weight gradient over a batch split over devices), as JAX's own transpose of ``pvary``."""
    extra = tuple(sorted(jax.typeof(ct).manual_axis_type.varying
                         - aval.manual_axis_type.varying))
    return jax.lax.psum(ct, extra) if extra else ct


def _batch(args, dims, *, fun, transpose, num_res, out_avals):
    # Every argument gets the batch axis first; the batched map is the vmap of ``fun``, and its
    # transpose the vmap of ``transpose``, so that batching keeps the hand-written transpose.
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    args = [batching.bdim_at_front(a, d, size) for a, d in zip(args, dims)]
    avals = tuple(jax.core.ShapedArray((size, *a.shape), a.dtype) for a in out_avals)
    out = linear_map_p.bind(*args, fun=jax.vmap(fun), transpose=jax.vmap(transpose),
                            num_res=num_res, out_avals=avals)
    return out, [0] * len(out)


linear_map_p.def_impl(_impl)
linear_map_p.def_abstract_eval(_abstract_eval)
ad.primitive_jvps[linear_map_p] = _jvp
ad.primitive_transposes[linear_map_p] = _transpose
batching.primitive_batchers[linear_map_p] = _batch
mlir.register_lowering(linear_map_p, mlir.lower_fun(_impl, multiple_results=True))
