"""Forward mode against real torch: ``jax.jvp`` of jaxlstm against ``torch.func.jvp``.

One case (a :class:`~parity.properties.PropertyCase`) draws random tangents for every weight, the
input and ``(h0, c0)``, and pushes them through both sides on the same weights and inputs:
``torch.func.jvp`` of ``torch.func.functional_call`` (weights are arguments, so they get
tangents) on torch's native CPU path, since oneDNN's LSTM has no forward-mode derivative, and
``jax.jvp`` of :func:`jaxlstm.functional.lstm` / :func:`~jaxlstm.functional.lstm_cell`. The
tangents of ``output``, ``h_n`` and ``c_n`` (``h``, ``c`` for the cell) are compared with the
parity tolerances. torch's packed LSTM has no forward mode either; with lengths, torch runs each
sequence on its own, cut to its length, which is what packing computes.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import numpy as np
import torch
from torch.func import functional_call

from jaxlstm import functional, testing
from jaxlstm.arrays import to_numpy
from jaxlstm.config import LSTMCellConfig, LSTMConfig
from parity import properties, runner
from parity.properties import PropertyCase

SMALL = dict(input_size=3, hidden_size=4, seq_len=5, batch=3)


def grid(full: bool = False) -> list[PropertyCase]:
    """The forward-mode cases. The default: layers, directions, ``proj_size``, no bias,
    ``batch_first``, ``seq_lengths``, ``remat``, wavefront, unbatched input and the cell, each at
    least once. The full grid: every configuration on its own, and loop unrolling."""
    if not full:
        return [
            PropertyCase(**SMALL, num_layers=2, bidirectional=True, proj_size=2, bias=False,
                         batch_first=True, packed=True, lengths=(1, 5, 3), remat=3),
            PropertyCase(**SMALL, num_layers=3, proj_size=2, packed=True, lengths=(5, 1, 3),
                         wavefront=True),
            PropertyCase(**SMALL | dict(batch=None), bidirectional=True, packed=True,
                         lengths=(3,), with_hx=False),
            PropertyCase(kind="cell", input_size=3, hidden_size=4, batch=2),
        ]
    return [
        PropertyCase(**SMALL),
        PropertyCase(**SMALL, num_layers=2, bidirectional=True, proj_size=2, batch_first=True),
        PropertyCase(**SMALL, bias=False, with_hx=False, unroll=2),
        PropertyCase(**SMALL, bidirectional=True, proj_size=2, packed=True, lengths=(5, 2, 4)),
        PropertyCase(**SMALL | dict(batch=None), bidirectional=True, packed=True, lengths=(3,)),
        PropertyCase(**SMALL, num_layers=2, bidirectional=True, remat=2),
        PropertyCase(**SMALL, bidirectional=True, batch_first=True, packed=True,
                     lengths=(1, 5, 3), remat=3),
        PropertyCase(**SMALL, num_layers=3, proj_size=2, packed=True, lengths=(5, 1, 3),
                     wavefront=True),
        PropertyCase(kind="cell", input_size=3, hidden_size=4, batch=2),
        PropertyCase(kind="cell", input_size=3, hidden_size=4, batch=None, bias=False,
                     with_hx=False),
    ]


class Tangents(NamedTuple):
    params: dict[str, np.ndarray]
    x: np.ndarray
    hx: tuple[np.ndarray, np.ndarray] | None


def random_tangents(params: dict, inputs: runner.Inputs, seed: int) -> Tangents:
    """Standard normal tangents for every weight, the input and ``(h0, c0)`` when given."""
    rng = np.random.default_rng(seed + 1)

    def like(a):
        return rng.standard_normal(np.shape(a)).astype(np.asarray(a).dtype)

    hx = None if inputs.hx is None else tuple(like(a) for a in inputs.hx)
    return Tangents({k: like(v) for k, v in params.items()}, like(inputs.x), hx)


def _keys(case: PropertyCase) -> tuple[str, ...]:
    return ("h", "c") if case.kind == "cell" else ("output", "h_n", "c_n")


def _torch_call(module: torch.nn.Module, case: PropertyCase, inputs: runner.Inputs,
                tangents: Tangents) -> dict[str, np.ndarray]:
    """``torch.func.jvp`` of the module on the full batch (no lengths)."""
    names = list(tangents.params)
    as_tensor = torch.from_numpy

    def fn(params, x, *hx):
        return functional_call(module, params, (x, tuple(hx)) if hx else (x,))

    weights = dict(module.named_parameters())
    primals = [{k: weights[k].detach() for k in names}, as_tensor(inputs.x)]
    duals = [{k: as_tensor(tangents.params[k]) for k in names}, as_tensor(tangents.x)]
    if inputs.hx is not None:
        primals += [as_tensor(a) for a in inputs.hx]
        duals += [as_tensor(a) for a in tangents.hx]
    with torch.backends.mkldnn.flags(enabled=False):
        _, out = torch.func.jvp(fn, tuple(primals), tuple(duals))
    flat = out if case.kind == "cell" else (out[0], *out[1])
    return {k: v.numpy() for k, v in zip(_keys(case), flat)}


def torch_jvp(module: torch.nn.Module, case: PropertyCase, inputs: runner.Inputs,
              tangents: Tangents) -> dict[str, np.ndarray]:
    """torch's output tangents, keyed ``jvp output`` etc.; with lengths, one sequence at a time
    cut to its length (zero output past it), with its own slice of ``(h0, c0)``."""
    if case.lengths is None:
        values = _torch_call(module, case, inputs, tangents)
        return {f"jvp {k}": v for k, v in values.items()}
    time_axis = 1 if case.batch_first and case.batch is not None else 0
    batch_axis = 1 - time_axis
    result = {k: np.zeros(s.shape, s.dtype) for k, s in inputs.cotangents.items()}
    for n, length in enumerate(case.lengths):
        def cut(a, n=n, length=length):
            if case.batch is None:
                return a[:length]
            a = np.take(a, [n], axis=batch_axis)
            return np.take(a, np.arange(length), axis=time_axis)

        def state(hx, n=n):
            if hx is None or case.batch is None:
                return hx
            return tuple(a[:, n:n + 1] for a in hx)

        one = runner.Inputs(cut(inputs.x), state(inputs.hx), None, {})
        one_tangents = Tangents(tangents.params, cut(tangents.x), state(tangents.hx))
        values = _torch_call(module, case, one, one_tangents)
        if case.batch is None:
            result["output"][:length] = values["output"]
            result["h_n"], result["c_n"] = values["h_n"], values["c_n"]
            continue
        index = [slice(None)] * 3
        index[batch_axis], index[time_axis] = slice(n, n + 1), slice(0, length)
        result["output"][tuple(index)] = values["output"]
        result["h_n"][:, n:n + 1], result["c_n"][:, n:n + 1] = values["h_n"], values["c_n"]
    return {f"jvp {k}": v for k, v in result.items()}


@functools.cache
def _jax_jvp(config: LSTMConfig | LSTMCellConfig, unroll: int, remat: int | bool,
             chunk_rows: int, wavefront: bool = False):
    """``jit(jvp)`` of jaxlstm for one config (fast-compiled, as the property suite's)."""

    def run(params, x, hx, seq_lengths):
        if isinstance(config, LSTMCellConfig):
            return functional.lstm_cell(params, x, hx, config=config)
        out, (h_n, c_n) = functional.lstm(params, x, hx, config=config, seq_lengths=seq_lengths,
                                          unroll=unroll, remat=remat, chunk_rows=chunk_rows,
                                          wavefront=wavefront)
        return out, h_n, c_n

    def pushforward(primals, tangents, seq_lengths):
        return jax.jvp(lambda *a: run(*a, seq_lengths), primals, tangents)[1]

    return jax.jit(pushforward, compiler_options=properties.compiler_options())


def jax_jvp(module: torch.nn.Module, case: PropertyCase, inputs: runner.Inputs,
            tangents: Tangents) -> dict[str, np.ndarray]:
    """jaxlstm's output tangents on the torch module's weights, keyed like :func:`torch_jvp`.
    The padding of the input and of its tangent is NaN: it must not reach anything."""
    params, config, x, seq_lengths = properties.port(module, case, inputs)
    dx = testing.nan_padding(tangents.x, inputs.seq_lengths, case.batch_first)
    pushforward = _jax_jvp(config, case.unroll, case.remat or False, case.chunk_rows,
                           case.wavefront)
    out = pushforward((params, x, inputs.hx), (tangents.params, dx, tangents.hx), seq_lengths)
    return {f"jvp {k}": np.asarray(v) for k, v in zip(_keys(case), out)}


def run_forward_mode_case(case: PropertyCase, dtype: str, seed: int) -> list[runner.Result]:
    """Compare jaxlstm's jvp with torch's on one case; float32 misses are measured against
    torch in float64 on the same weights, inputs and tangents (as the parity runner does)."""
    module = runner.torch_module(case, dtype, seed)
    inputs = properties.make_inputs(case, dtype, seed)
    params = {name: to_numpy(value) for name, value in module.state_dict().items()}
    tangents = random_tangents(params, inputs, seed)
    with jax.enable_x64(dtype == "float64"):
        actual = jax_jvp(module, case, inputs, tangents)
    with properties.single_thread_torch():
        expected = torch_jvp(module, case, inputs, tangents)
        errors = {k: runner.relative_error(actual[k], expected[k]) for k in expected}
        results = [runner.Result(case, dtype, "native", errors, check="jvp")]
        tangents64 = jax.tree.map(lambda a: np.asarray(a, np.float64), tangents)
        testing.check_against_float64(results, actual, module, inputs,
                                      lambda m, i: torch_jvp(m, case, i, tangents64))
    return results
