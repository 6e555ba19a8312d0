"""Sharding of the results that sum over the batch, under JAX's Explicit axes.

A weight gradient contracts the batch axis; when that axis is split over a mesh with Explicit
axes (the default of ``jax.make_mesh``), JAX asks where the sum should live. It lives where
the weight does: replicated for data parallelism, split along the gate rows when the weight is
(model parallelism). Under Auto axes, ``shard_map`` or no mesh there is nothing to say, and
``out_sharding`` is ``None``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxlstm.functional.carriers import Array


def _explicit(sharding) -> bool:
    mesh = getattr(sharding, "mesh", None)
    return mesh is not None and not mesh.empty and AxisType.Explicit in mesh.axis_types


def like_weight(weight: Array, operand: Array, *, stacked: bool = False):
    """The ``out_sharding`` of a gradient of ``weight`` summed over ``operand``'s batch axis:
    ``weight``'s own sharding under Explicit axes (without its leading direction axis when
    ``stacked``, the gradient being one direction's), replicated over ``operand``'s mesh when
    the weight is on no mesh, else ``None``."""
    sharding = jax.typeof(weight).sharding
    if _explicit(sharding):
        spec = tuple(sharding.spec) + (None,) * (weight.ndim - len(sharding.spec))
        return NamedSharding(sharding.mesh, P(*spec[1:] if stacked else spec))
    sharding = jax.typeof(operand).sharding
    return NamedSharding(sharding.mesh, P()) if _explicit(sharding) else None


def struct_like(value: Array, shape: tuple[int, ...]) -> jax.ShapeDtypeStruct:
    """A ``ShapeDtypeStruct`` of ``shape`` with ``value``'s full type: dtype, sharding and the
    ``shard_map`` axes it varies over (what ``jax.linear_transpose`` traces with)."""
    aval = jax.typeof(value)
    return jax.ShapeDtypeStruct(shape, aval.dtype, sharding=aval.sharding,
                                manual_axis_type=aval.manual_axis_type)


def varying_like(tree, like: Array):
    """``tree``'s leaves made to vary over the ``shard_map`` axes ``like`` varies over: zeros
    that a loop will sum batch-split gradients into must have the type of those sums."""
    axes = jax.typeof(like).manual_axis_type.varying

    def cast(leaf):
        missing = tuple(sorted(axes - jax.typeof(leaf).manual_axis_type.varying))
        return jax.lax.pcast(leaf, missing, to="varying") if missing else leaf
    return jax.tree.map(cast, tree)


def explicit_sharding(value: Array):
    """``value``'s sharding when it lies on a mesh with Explicit axes, else ``None``: the
    ``out_sharding`` that makes a new array (a dropout mask) split as ``value`` is."""
    sharding = jax.typeof(value).sharding
    return sharding if _explicit(sharding) else None


def whole(value: Array) -> Array:
    """``value`` gathered onto every device under Explicit axes (a bias split along its gate
    rows, added to rows split only along the batch); unchanged otherwise."""
    sharding = jax.typeof(value).sharding
    if not _explicit(sharding):
        return value
    return jax.sharding.reshard(value, NamedSharding(sharding.mesh, P()))


def laid_out_as(value: Array, weight: Array) -> Array:
    """``value`` (a gradient summed over the batch) laid out as ``weight`` under Explicit
    axes; unchanged otherwise."""
    sharding = jax.typeof(weight).sharding
    return jax.sharding.reshard(value, sharding) if _explicit(sharding) else value


def onto_mesh_of(tree, weights):
    """``tree``'s arrays that lie on no mesh put, replicated, on the Explicit mesh that
    ``weights`` lie on (if any): an unsharded input (say, a numpy evaluation batch) meeting
    weights on a mesh, so that every row the loops write has the type of their buffers."""
    meshes = [jax.typeof(w).sharding.mesh for w in jax.tree.leaves(weights)
              if _explicit(jax.typeof(w).sharding)]
    if not meshes:
        return tree
    everywhere = NamedSharding(meshes[0], P())

    def place(a):
        if a is None or _explicit(jax.typeof(a).sharding):
            return a
        return jax.sharding.reshard(jnp.asarray(a), everywhere)
    return jax.tree.map(place, tree, is_leaf=lambda a: a is None)
