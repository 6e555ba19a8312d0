"""An independent float64 NumPy LSTM: the reference for gate activations torch has none of.

Plain loops over layers, directions and steps, written from the documented equations, sharing
no code with :mod:`jaxlstm.functional` (whose fused, hand-differentiated loops it checks)::

    z = W_ih x + b_ih + W_hh h + b_hh        (rows i, f, g, o)
    c' = act(f) * c + act(i) * tanh(g);  h' = act(o) * tanh(c')   (h' <- W_hr h' with proj)

``act`` is ``sigmoid`` or ``clip(alpha * z + beta, 0, 1)`` (a ``HardSigmoid``). ``jaxlstm
parity FILE`` compares a hard-sigmoid port with it: the outputs, and the gradient as a
directional derivative against central differences of this reference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def gate_function(gate_activation: Any):
    """``act`` of ``gate_activation`` (``"sigmoid"`` or a ``HardSigmoid``) in NumPy."""
    if gate_activation == "sigmoid":
        return lambda z: 1.0 / (1.0 + np.exp(-z))
    alpha, beta = gate_activation.alpha, gate_activation.beta
    return lambda z: np.clip(alpha * z + beta, 0.0, 1.0)


def lstm(weights: Mapping[str, Any], x: Any, hx: tuple[Any, Any] | None = None, *,
         config: Any, seq_lengths: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(output, h_n, c_n)`` in float64 of the LSTM that ``config`` (an ``LSTMConfig``)
    describes, holding torch-named ``weights``, on batched ``x`` (time-major unless
    ``config.batch_first``); ``seq_lengths`` with torch's ``PackedSequence`` meaning (outputs
    past a length are 0, the reverse direction starts at each sequence's last element)."""
    act = gate_function(config.gate_activation)
    w = {k: np.asarray(v, np.float64) for k, v in weights.items()}
    x = np.asarray(x, np.float64)
    if config.batch_first:
        x = x.transpose(1, 0, 2)
    steps, batch = x.shape[:2]
    lengths = np.full(batch, steps) if seq_lengths is None else np.asarray(seq_lengths)
    layers, directions = config.num_layers, config.num_directions
    out_size, hidden = config.output_size, config.hidden_size
    if hx is None:
        h0 = np.zeros((layers * directions, batch, out_size))
        c0 = np.zeros((layers * directions, batch, hidden))
    else:
        h0, c0 = (np.asarray(a, np.float64) for a in hx)
    h_n, c_n = np.zeros_like(h0), np.zeros_like(c0)
    layer_input = x
    for layer in range(layers):
        output = np.zeros((steps, batch, directions * out_size))
        for d in range(directions):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            index = layer * directions + d
            for n in range(batch):
                h, c = h0[index, n].copy(), c0[index, n].copy()
                order = range(lengths[n]) if d == 0 else reversed(range(lengths[n]))
                for t in order:
                    z = w[f"weight_ih{sfx}"] @ layer_input[t, n] + w[f"weight_hh{sfx}"] @ h
                    if config.bias:
                        z = z + w[f"bias_ih{sfx}"] + w[f"bias_hh{sfx}"]
                    zi, zf, zg, zo = np.split(z, 4)
                    c = act(zf) * c + act(zi) * np.tanh(zg)
                    h = act(zo) * np.tanh(c)
                    if config.proj_size:
                        h = w[f"weight_hr{sfx}"] @ h
                    output[t, n, d * out_size:(d + 1) * out_size] = h
                h_n[index, n], c_n[index, n] = h, c
        layer_input = output
    if config.batch_first:
        layer_input = layer_input.transpose(1, 0, 2)
    return layer_input, h_n, c_n


def compare(config: Any, weights: Mapping[str, Any], dtype: str, *, x: Any = None,
            steps: int = 7, batch: int = 3, seed: int = 0) -> dict[str, float]:
    """Relative errors ``max|jaxlstm - reference| / max|reference|`` of ``output``, ``h_n``,
    ``c_n`` of the port computing in ``dtype``, and (float64) of the directional derivative of
    ``sum(output * cotangent)`` along a random direction of the weights, input and state,
    against central differences of the reference (step 1e-6, so expect ~1e-8, not 1e-10)."""
    import jax
    import jax.numpy as jnp

    from jaxlstm.functional import lstm as jax_lstm

    rng = np.random.default_rng(seed)
    if x is None:
        shape = (batch, steps) if config.batch_first else (steps, batch)
        x = rng.standard_normal((*shape, config.input_size))
    x = np.asarray(x, np.float64)
    n = x.shape[0 if config.batch_first else 1]
    states = config.num_layers * config.num_directions
    hx = (rng.standard_normal((states, n, config.output_size)),
          rng.standard_normal((states, n, config.hidden_size)))
    weights = {k: np.asarray(v, np.float64) for k, v in weights.items()}
    expected = dict(zip(("output", "h_n", "c_n"), lstm(weights, x, hx, config=config)))
    errors = {}
    with jax.enable_x64(True):
        def run(params, x, hx):
            params = {k: jnp.asarray(v, dtype) for k, v in params.items()}
            out, (h, c) = jax_lstm(params, jnp.asarray(x, dtype),
                                   tuple(jnp.asarray(a, dtype) for a in hx), config=config)
            return {"output": out, "h_n": h, "c_n": c}

        actual = run(weights, x, hx)
        for key, value in expected.items():
            errors[key] = relative_error(actual[key], value)
        if dtype == "float64":
            cotangent = rng.standard_normal(expected["output"].shape)
            primals = (weights, x, hx)
            direction = jax.tree.map(lambda a: rng.standard_normal(np.shape(a)), primals)

            def loss(params, x, hx):
                return jnp.sum(run(params, x, hx)["output"] * cotangent)

            grads = jax.grad(loss, argnums=(0, 1, 2))(*primals)
            directional = sum(float(np.sum(g * v)) for g, v in zip(
                jax.tree.leaves(grads), jax.tree.leaves(direction)))

            def moved(sign):
                p = jax.tree.map(lambda a, v: a + sign * 1e-6 * v, primals, direction)
                return float(np.sum(lstm(p[0], p[1], p[2], config=config)[0] * cotangent))

            numeric = (moved(1.0) - moved(-1.0)) / 2e-6
            errors["gradient (directional)"] = abs(directional - numeric) / max(abs(numeric),
                                                                                1e-12)
    return errors


TOLERANCE = {"float32": 1e-5, "float64": 1e-10, "gradient (directional)": 1e-6}
"""Relative tolerances of :func:`report`: the outputs per dtype; the float64 gradient against
central differences (step 1e-6, whose own error is ~1e-9)."""


def report(config: Any, weights: Mapping[str, Any], dtypes: Sequence[str], **inputs: Any
           ) -> tuple[str, list[str]]:
    """:func:`compare` in each of ``dtypes`` (``inputs``: its ``x``, ``steps``, ``batch``,
    ``seed``), as ``(table, failures)``: a readable table and one line per tensor outside
    :data:`TOLERANCE`."""
    lines, failures = [], []
    for dtype in dtypes:
        lines.append(f"\n{dtype}:")
        for tensor, error in compare(config, weights, dtype, **inputs).items():
            ok = bool(np.isfinite(error)) and error <= TOLERANCE.get(tensor, TOLERANCE[dtype])
            lines.append(f"{tensor:<24} {error:9.1e}  {'pass' if ok else 'FAIL'}")
            if not ok:
                failures.append(f"{tensor} ({dtype}): relative error {error:.2e}")
    return "\n".join(lines), failures


def relative_error(actual: Any, expected: Any) -> float:
    """``max|actual - expected| / max|expected|`` (the absolute error where ``expected`` is 0;
    infinite for different shapes).

    **Arguments:**

    - ``actual``, ``expected``: arrays of the same shape.
    """
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        return float("inf")
    if actual.size == 0:
        return 0.0
    scale = np.max(np.abs(expected))
    diff = np.max(np.abs(actual - expected))
    return float(diff / scale) if scale > 0 else float(diff)
