"""Random configurations checked against real torch: the case and its runner.

A drawn :class:`PropertyCase` is a parity :class:`~parity.grid.Case` plus explicit per-sequence
lengths and the ``unroll``/``remat`` schedule. :func:`run_property_case` builds the real
``torch.nn.LSTM``/``LSTMCell`` with :func:`parity.runner.torch_module`, runs it with
:func:`jaxlstm.testing.run_torch` (packed input via ``pack_padded_sequence`` when there are
lengths), and compares ``output``, ``h_n``, ``c_n`` and every gradient with
:func:`jaxlstm.functional.lstm` / :func:`~jaxlstm.functional.lstm_cell` run on the torch
``state_dict`` (the parameter dict *is* the state dict, so that is the port). The module shells
and ``from_torch`` are covered by the parity grid; here each example has to be cheap, and
building a module compiles its random initialisation once per new shape. For the same reason
the jitted gradient is compiled with :data:`FAST_COMPILE`. The hypothesis strategies that
draw these cases are in :mod:`parity.strategies`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import torch

from jaxlstm import functional, testing
from jaxlstm.arrays import infer_config, to_numpy
from jaxlstm.config import LSTMCellConfig, LSTMConfig
from parity import runner
from parity.grid import Case

# Each example has new shapes, so compiling is most of its cost. These XLA CPU options cut compile
# time about eightfold; they change how fast the code runs, not what it computes (results agree
# with the default build to float rounding; the parity grid runs the default build).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
DTYPES = ("float32", "float64")


@dataclasses.dataclass(frozen=True)
class PropertyCase(Case):
    """A parity case with explicit lengths: one per sequence, or one for unbatched input.

    ``lengths`` is ``None`` for full-length sequences; ``packed`` is ``lengths is not None``.
    ``unroll``, ``remat`` (a chunk length, 0 for off), ``chunk_rows`` and ``wavefront`` are
    passed to :func:`jaxlstm.functional.lstm`; ``remat`` and ``wavefront`` have their own
    backward passes, and a small ``chunk_rows`` sends the forward pass alone through its chunked
    path.
    """

    lengths: tuple[int, ...] | None = None
    unroll: int = 1
    chunk_rows: int = functional.DEFAULT_CHUNK_ROWS

    @property
    def name(self) -> str:
        name = super().name
        if self.kind == "lstm":  # a cell's name has its sizes already
            name += f" I{self.input_size} H{self.hidden_size}"
        if self.unroll != 1:
            name += f" unroll{self.unroll}"
        if self.chunk_rows != functional.DEFAULT_CHUNK_ROWS:
            name += f" chunk_rows{self.chunk_rows}"
        return name + (f" lengths={list(self.lengths)}" if self.lengths else "")


def make_inputs(case: PropertyCase, dtype: str, seed: int) -> runner.Inputs:
    """The parity runner's inputs for ``case``, with the case's own lengths."""
    inputs = runner.make_inputs(dataclasses.replace(case, packed=False), dtype, seed)
    if case.lengths is not None:
        inputs.seq_lengths = np.asarray(case.lengths, np.int32)
    return inputs


@functools.cache
def compiler_options() -> dict:
    """:data:`FAST_COMPILE` where this XLA backend knows those options, else the defaults."""
    try:
        jax.jit(lambda x: x + 1, compiler_options=FAST_COMPILE).lower(1.0).compile()
    except Exception:  # noqa: BLE001 - an unknown option is reported as a generic XLA error
        return {}
    return FAST_COMPILE


@functools.cache
def _jax_fns(config: LSTMConfig | LSTMCellConfig, unroll: int, remat: int | bool,
             chunk_rows: int, wavefront: bool = False):
    """``jit(grad)`` of the parity loss for one config, and ``jit`` of the forward pass alone
    (a separate code path: it never saves anything for a backward pass); jit's own cache
    handles the shapes. A ``dropout_rng`` turns dropout on (training mode) with that key."""

    def loss_fn(params, x, hx, seq_lengths, cotangents, dropout_rng):
        if isinstance(config, LSTMCellConfig):
            h, c = functional.lstm_cell(params, x, hx, config=config)
            outputs = {"h": h, "c": c}
        else:
            out, (h_n, c_n) = functional.lstm(params, x, hx, config=config,
                                              seq_lengths=seq_lengths, unroll=unroll,
                                              remat=remat, chunk_rows=chunk_rows,
                                              wavefront=wavefront, dropout_rng=dropout_rng,
                                              deterministic=dropout_rng is None)
            outputs = {"output": out, "h_n": h_n, "c_n": c_n}
        loss = sum(jnp.sum(cotangents[k] * v) for k, v in outputs.items())
        return loss, outputs

    grad = jax.jit(jax.grad(loss_fn, argnums=(0, 1, 2), has_aux=True),
                   compiler_options=compiler_options())
    forward = jax.jit(lambda *args: loss_fn(*args)[1], compiler_options=compiler_options())
    return grad, forward


def port(module: torch.nn.Module, case: PropertyCase, inputs: runner.Inputs):
    """What :mod:`jaxlstm.functional` is called with for ``case``: the torch module's weights
    (the params dict *is* its ``state_dict``), its config with the case's layout and dropout
    (which act only when :func:`run_jax` is given a ``dropout_rng``), the input with
    NaN in the padding (torch never sees it, so it must not change anything here either; see
    :func:`jaxlstm.testing.nan_padding`), and the lengths (a scalar for unbatched input).

    **Returns:** ``(params, config, x, seq_lengths)``.
    """
    params = {name: to_numpy(value) for name, value in module.state_dict().items()}
    config = infer_config(params)
    if isinstance(config, LSTMConfig):
        config = dataclasses.replace(config, batch_first=case.batch_first, dropout=case.dropout)
    x = testing.nan_padding(inputs.x, inputs.seq_lengths, case.batch_first)
    seq_lengths = inputs.seq_lengths
    if seq_lengths is not None and case.batch is None:
        seq_lengths = seq_lengths.reshape(())
    return params, config, x, seq_lengths


def run_jax(module: torch.nn.Module, case: PropertyCase, inputs: runner.Inputs,
            dropout_rng: jax.Array | None = None) -> dict:
    """jaxlstm's values and gradients on the torch module's weights, keyed like the runner's;
    with ``dropout_rng``, in training mode with dropout drawn from that key."""
    params, config, x, seq_lengths = port(module, case, inputs)
    grad, forward = _jax_fns(config, case.unroll, case.remat or False, case.chunk_rows,
                             case.wavefront)
    args = (params, x, inputs.hx, seq_lengths, inputs.cotangents, dropout_rng)
    (grad_params, grad_x, grad_hx), outputs = grad(*args)
    values = {k: np.asarray(v) for k, v in outputs.items()}
    values.update({runner.forward_only(k): np.asarray(v) for k, v in forward(*args).items()})
    values["grad input"] = np.asarray(grad_x)
    if inputs.hx is not None:
        values["grad h0"], values["grad c0"] = np.asarray(grad_hx[0]), np.asarray(grad_hx[1])
    values.update({f"grad {k}": np.asarray(v) for k, v in grad_params.items()})
    return values


def _run_torch_unbatched(module: torch.nn.Module, case: PropertyCase, inputs: runner.Inputs,
                         native: bool) -> dict:
    """Torch on an unbatched sequence of length ``l``: the first ``l`` steps, zero after.

    ``pack_padded_sequence`` takes batched input only; for one sequence, packing is exactly
    running the valid prefix, and the padded output and its input gradient are zero.
    """
    (length,) = case.lengths
    cotangents = dict(inputs.cotangents, output=inputs.cotangents["output"][:length])
    prefix = runner.Inputs(inputs.x[:length], inputs.hx, None, cotangents)
    values = testing.run_torch(module, prefix, native=native)
    for key, full in (("output", inputs.cotangents["output"]), ("grad input", inputs.x)):
        padded = np.zeros(full.shape[:1] + values[key].shape[1:], values[key].dtype)
        padded[:length] = values[key]
        values[key] = padded
    return values


def run_property_case(case: PropertyCase, dtype: str, seed: int) -> list[runner.Result]:
    """Compare one drawn case with torch: float32 against oneDNN and native, float64 native."""
    module = runner.torch_module(case, dtype, seed)
    inputs = make_inputs(case, dtype, seed)
    with jax.enable_x64(dtype == "float64"):
        actual = run_jax(module, case, inputs)
    results = []
    for path, expected in run_torch(module, case, dtype, inputs).items():
        found = testing.compare_values(dtype, path, actual, expected)
        results.append(runner.Result(case, dtype, path, found.errors))
    testing.check_against_float64(
        results, actual, module, inputs,
        lambda m, i: run_torch(m, case, "float64", i)["native"],
    )
    return results


def run_torch(module: torch.nn.Module, case: PropertyCase, dtype: str,
              inputs: runner.Inputs) -> dict[str, dict]:
    """Torch's values and gradients on every CPU path it has for ``dtype``: ``{path: values}``.

    float32 runs oneDNN (torch's default, where it applies) and the native ATen path; float64
    runs the native path.
    """
    paths = {"oneDNN": False, "native": True} if dtype == "float32" else {"native": True}
    values = {}
    with single_thread_torch():
        for path, native in paths.items():
            if case.lengths is not None and case.batch is None:
                values[path] = _run_torch_unbatched(module, case, inputs, native)
            else:
                values[path] = testing.run_torch(module, inputs, native=native)
            module.zero_grad(set_to_none=True)
    return values


@contextlib.contextmanager
def single_thread_torch():
    """Run torch on one thread: at these sizes threads only add contention, which on a busy
    2-core machine turns a millisecond torch call into seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def describe_failures(results: list[runner.Result]) -> str:
    """One line per failed result: the case, dtype, torch path and worst tensor."""
    lines = []
    for result in results:
        if not result.passed:
            worst = max(result.errors, key=result.errors.get)
            truth = result.truth_errors.get(worst)
            against_truth = "" if truth is None else f" (against float64: {truth:.2e})"
            lines.append(
                f"{result.name} {result.dtype} vs torch {result.torch_path}: {worst} "
                f"error {result.errors[worst]:.2e} > {result.tolerance:.0e}{against_truth}"
            )
    return "\n".join(lines)
