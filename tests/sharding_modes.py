"""Every sharding mode against the unsharded run: the worker that ``test_sharding_modes.py``
starts with 8 fake CPU devices (JAX fixes its device count when it starts).

Each case is one function of ``(params, x)`` returning a pytree (outputs, gradients or
tangents); each mode runs it on a batch split over 4 devices and reports, as JSON, the largest
difference from the same function run unsharded and the sharding spec of every output.
Run alone: ``XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/sharding_modes.py
--mode explicit [CASE ...]``.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxlstm
from jaxlstm import functional, linen

T, N, IN, H = 5, 12, 3, 8  # N appears in no other axis: it marks the batch axis
MODES = ("explicit", "explicit_no_set_mesh", "auto", "shard_map", "model_explicit", "model_auto")
GATE_ROWS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")  # torch's names; 4H rows first
KEY = jax.random.key(7)
LENGTHS = jnp.asarray([5, 1, 3, 4, 2, 5, 3, 1, 2, 4, 5, 3])


def module(**kw) -> jaxlstm.LSTM:
    return jaxlstm.LSTM(IN, H, num_layers=kw.pop("num_layers", 2), rngs=nnx.Rngs(0), **kw)


def loss(out):
    return jnp.sum(out[0] ** 2) + jnp.sum(out[1][0]) + jnp.sum(out[1][1] ** 2)


def run_and_grad(m: jaxlstm.LSTM, **call):
    """``(output, h_n, c_n)`` and the gradients of a loss of them in the inputs and weights."""
    def f(params, x):
        def of(params, x):
            out = functional.lstm(params, x, config=m.config, **call)
            return loss(out), out
        (_, out), grads = jax.value_and_grad(of, argnums=(0, 1), has_aux=True)(params, x)
        return {"out": out, "grads": grads}
    return m.params(), f


def case_forward():
    m = module()
    return m.params(), lambda p, x: functional.lstm(p, x, config=m.config)


def case_grad():
    return run_and_grad(module())


def case_jvp():
    m = module(proj_size=4)
    dp = jax.tree.map(lambda a: jnp.full_like(a, 0.1), m.params())

    def f(params, x):
        return jax.jvp(lambda p, x: functional.lstm(p, x, config=m.config), (params, x),
                       (dp, jnp.ones_like(x)))
    return m.params(), f


def case_seq_lengths(lengths=LENGTHS):
    """Under ``shard_map`` each shard passes its own rows' lengths."""
    m = module(bidirectional=True)

    def f(params, x):
        return run_and_grad(m, seq_lengths=lengths)[1](params, x)
    return m.params(), f


def case_bidirectional():
    return run_and_grad(module(bidirectional=True))


def case_proj_size():
    return run_and_grad(module(proj_size=4))


def case_dropout(key=KEY):
    """Dropout in train mode; under ``shard_map`` each shard draws its own masks from
    ``fold_in(key, shard)`` (one key for all would repeat one mask on every shard)."""
    return run_and_grad(module(dropout=0.5, num_layers=3), dropout_rng=key, deterministic=False)


def case_wavefront():
    return run_and_grad(module(num_layers=3, proj_size=4), wavefront=True)


def case_remat():
    return run_and_grad(module(bidirectional=True), remat=2)


def case_nnx():
    """``nnx.jit`` of ``nnx.grad`` of the module itself."""
    m = module(bidirectional=True)

    @nnx.jit
    def f(m, x):
        out = m(x)
        return out, nnx.grad(lambda m: loss(m(x)))(m)
    return m, f


def case_linen():
    lm = linen.LSTM(IN, H, num_layers=2, proj_size=4)
    variables = lm.init(jax.random.key(0), jnp.zeros((T, N, IN)))

    def f(variables, x):
        return lm.apply(variables, x), jax.grad(lambda v: loss(lm.apply(v, x)))(variables)
    return variables, f


def case_cell():
    cell = jaxlstm.LSTMCell(IN, H, rngs=nnx.Rngs(0))

    def f(params, x):
        return jax.value_and_grad(lambda p, x: jnp.sum(functional.lstm_cell(
            p, x[0], config=cell.config)[0] ** 2), argnums=(0, 1))(params, x)
    return cell.params(), f


CASES = {name[5:]: fn for name, fn in globals().items() if name.startswith("case_")}


def spec(leaf) -> list:
    """The leaf's partition spec, one entry per axis (``None``: not split)."""
    s = leaf.sharding
    entries = list(s.spec) if isinstance(s, NamedSharding) else []
    return [e if isinstance(e, (str, type(None))) else list(e)
            for e in entries + [None] * (leaf.ndim - len(entries))]


def batch_split(x, mesh):
    return jax.device_put(x, NamedSharding(mesh, P(None, "batch")))


def batch_spec(shape) -> P:
    return P(*("batch" if d == N else None for d in shape))


def shard_mapped(name, params, x, mesh):
    """The case under ``jax.shard_map``: each of 4 devices runs it on its rows. Gradients of
    the replicated weights come back summed over the devices (JAX's transpose of the implicit
    ``pvary``, which jaxlstm's own backward pass follows); a loss is summed here."""
    build = CASES[name]
    params, f = build()
    graph = None
    if isinstance(params, nnx.Module):
        graph, params = nnx.split(params)
    specs = jax.tree.map(lambda s: batch_spec(s.shape), jax.eval_shape(
        lambda p, x: f(p if graph is None else nnx.merge(graph, p), x), params,
        jax.ShapeDtypeStruct(x.shape, x.dtype)))

    def local(params, x):
        g = f
        shard = jax.lax.axis_index("batch")
        if name == "dropout":
            g = build(jax.random.fold_in(KEY, shard))[1]
        if name == "seq_lengths":
            g = build(jax.lax.dynamic_slice_in_dim(LENGTHS, shard * (N // 4), N // 4))[1]
        out = g(params if graph is None else nnx.merge(graph, params), x)
        return jax.tree.map(lambda o, s: jax.lax.psum(o, "batch") if "batch" not in s
                            and "batch" in jax.typeof(o).manual_axis_type.varying else o,
                            out, specs)

    return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P(None, "batch")),
                                 out_specs=specs))(params, x)


def dropout_per_shard(x):
    """The unsharded reference for dropout under ``shard_map``: shard ``i``'s rows with masks
    from ``fold_in(KEY, i)``, weight gradients summed."""
    parts = [jax.jit(case_dropout(jax.random.fold_in(KEY, i))[1])(
        case_dropout()[0], x[:, 3 * i:3 * i + 3]) for i in range(4)]
    return jax.tree.map(lambda *a: (jnp.concatenate(a, axis=1) if a[0].ndim == 3
                                    else sum(a)), *parts)


def replicated(params, mesh):
    """``params`` (a pytree or an NNX module) on every device of ``mesh``."""
    everywhere = NamedSharding(mesh, P())
    if isinstance(params, nnx.Module):
        graph, state = nnx.split(params)
        return nnx.merge(graph, jax.device_put(state, everywhere))
    return jax.device_put(params, everywhere)


def model_split(params, mesh):
    """``params`` (a pytree or an NNX module) with every weight and bias that has the 4H gate
    rows split along them over the mesh's ``'model'`` axis, the rest replicated."""
    def place(path, leaf):
        rows = any(str(getattr(k, "key", getattr(k, "name", k))).startswith(GATE_ROWS)
                   for k in path)
        return jax.device_put(leaf, NamedSharding(mesh, P("model") if rows else P()))
    if isinstance(params, nnx.Module):
        graph, state = nnx.split(params)
        return nnx.merge(graph, jax.tree_util.tree_map_with_path(place, state))
    return jax.tree_util.tree_map_with_path(place, params)


def in_mode(mode, name, x):
    """Run case ``name`` with ``x`` split along its batch axis over 4 devices (and, in the
    ``model_*`` modes, the gate rows of the weights over 2 more)."""
    explicit = AxisType.Auto if mode.endswith("auto") else AxisType.Explicit
    if mode.startswith("model"):
        mesh = jax.make_mesh((4, 2), ("batch", "model"), axis_types=(explicit, explicit))
    else:
        mesh = jax.make_mesh((4,), ("batch",), devices=jax.devices()[:4], axis_types=(explicit,))
    xs = jax.device_put(x, NamedSharding(mesh, P(None, "batch")))
    params, f = CASES[name]()
    if mode == "shard_map":
        return shard_mapped(name, params, xs, mesh)
    params = model_split(params, mesh) if mode.startswith("model") else replicated(params, mesh)
    run = nnx.jit(f) if isinstance(params, nnx.Module) else jax.jit(f)
    if mode == "explicit_no_set_mesh":
        return run(params, xs)
    with jax.set_mesh(mesh):
        return run(params, xs)


def unsharded(name, x):
    params, f = CASES[name]()
    return (nnx.jit(f) if isinstance(params, nnx.Module) else jax.jit(f))(params, x)


def compare(name, mode, x, reference) -> dict:
    got = in_mode(mode, name, x)
    if mode == "shard_map" and name == "dropout":
        reference = dropout_per_shard(x)
    got_leaves, ref_leaves = jax.tree.leaves(got), jax.tree.leaves(reference)
    assert len(got_leaves) == len(ref_leaves)
    return {
        "diff": max(float(jnp.max(jnp.abs(jnp.asarray(a, jnp.float32)
                                          - jnp.asarray(b, jnp.float32))))
                    for a, b in zip(got_leaves, ref_leaves)),
        "scale": max(float(jnp.max(jnp.abs(b))) for b in ref_leaves),
        "specs": [[list(b.shape), spec(a)] for a, b in zip(got_leaves, ref_leaves)],
    }


def main(mode: str, names=None) -> dict:
    """``{case: result}`` for every case (or those named) in ``mode``."""
    x = jnp.asarray(np.random.default_rng(0).normal(size=(T, N, IN)), jnp.float32)
    results = {}
    for name in names or CASES:
        try:
            results[name] = compare(name, mode, x, unsharded(name, x))
        except Exception as error:  # reported, and the test fails with it
            results[name] = {"error": f"{type(error).__name__}: {error}"[:2000]}
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("cases", nargs="*", choices=[[]] + sorted(CASES))
    args = parser.parse_args()
    print(json.dumps(main(args.mode, args.cases or None)))
