"""Random configurations checked against real torch: hypothesis strategies and the runner.

A drawn :class:`PropertyCase` is a parity :class:`~parity.grid.Case` plus explicit per-sequence
lengths and the ``unroll``/``remat`` schedule. :func:`run_property_case` builds the real
``torch.nn.LSTM``/``LSTMCell`` with :func:`parity.runner.torch_module`, runs it with
:func:`parity.runner.run_torch` (packed input via ``pack_padded_sequence`` when there are
lengths), and compares ``output``, ``h_n``, ``c_n`` and every gradient with
:func:`jaxlstm.functional.lstm` / :func:`~jaxlstm.functional.lstm_cell` run on the torch
``state_dict`` (the parameter dict *is* the state dict, so that is the port). The module shells
and ``from_torch`` are covered by the parity grid; here each example has to be cheap, and
building a module compiles its random initialisation once per new shape. For the same reason
the jitted gradient is compiled with :data:`FAST_COMPILE`.

Profiles: the tests use :func:`property_settings`, which reads ``HYPOTHESIS_PROFILE``:
unset or ``ci`` is a fixed-seed run of the number of examples each test asks for; ``long`` is a
fresh random run of :data:`LONG_EXAMPLES` examples per test::

    HYPOTHESIS_PROFILE=long python -m pytest -q tests/test_properties.py
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from jaxlstm import functional
from jaxlstm.arrays import infer_config, to_numpy
from jaxlstm.config import LSTMCellConfig, LSTMConfig
from parity import runner
from parity.grid import Case

LONG_EXAMPLES = 5000
# Each example has new shapes, so compiling is most of its cost. These XLA CPU options cut compile
# time about eightfold; they change how fast the code runs, not what it computes (results agree
# with the default build to float rounding; the parity grid runs the default build).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
DTYPES = ("float32", "float64")

settings.register_profile(
    "ci", derandomize=True, deadline=None, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "long", max_examples=LONG_EXAMPLES, derandomize=False, deadline=None, database=None,
    print_blob=True, suppress_health_check=[HealthCheck.too_slow],
)


def property_settings(ci_examples: int) -> settings:
    """Hypothesis settings for one property test.

    **Arguments:**

    - ``ci_examples``: examples per run under the default ``ci`` profile (fixed seed, so every CI
      run checks the same configurations). ``HYPOTHESIS_PROFILE=long`` runs
      :data:`LONG_EXAMPLES` fresh random examples instead.
    """
    name = os.environ.get("HYPOTHESIS_PROFILE", "ci")
    if name not in ("ci", "long"):
        raise ValueError(f"HYPOTHESIS_PROFILE must be 'ci' or 'long', got {name!r}")
    if name == "long":
        return settings(settings.get_profile("long"))
    return settings(settings.get_profile("ci"), max_examples=ci_examples)


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
        name = super().name + f" I{self.input_size} H{self.hidden_size}"
        if self.unroll != 1:
            name += f" unroll{self.unroll}"
        if self.chunk_rows != functional.DEFAULT_CHUNK_ROWS:
            name += f" chunk_rows{self.chunk_rows}"
        return name + (f" lengths={list(self.lengths)}" if self.lengths else "")


@st.composite
def lstm_cases(draw: st.DrawFn, max_seq_len: int = 64, max_batch: int = 8,
               max_size: int = 32) -> PropertyCase:
    """Random ``nn.LSTM`` configurations and input shapes.

    1–3 layers, either direction, ``proj_size`` (0 or 1..H-1), bias on/off, ``batch_first``,
    ``N`` in 1..``max_batch`` (unbatched one time in three), with/without ``(h0, c0)``, ``T`` in
    1..``max_seq_len``, sizes in 1..``max_size``, and half the time random lengths in 1..T;
    scan ``unroll`` 1–3, ``remat`` off or with a chunk length in 1..T+2, and for stacked
    unidirectional layers without remat, ``wavefront`` half the time.
    """
    hidden_size = draw(st.integers(1, max_size))
    proj_size = 0
    if hidden_size > 1 and draw(st.booleans()):
        proj_size = draw(st.integers(1, hidden_size - 1))
    seq_len = draw(st.integers(1, max_seq_len))
    # Batched input two times in three: unbatched input is the rarer case in use.
    batch = draw(st.integers(1, max_batch)) if draw(st.sampled_from([True, True, False])) else None
    lengths = None
    if draw(st.booleans()):
        count = 1 if batch is None else batch
        lengths = tuple(draw(st.lists(st.integers(1, seq_len), min_size=count, max_size=count)))
    remat = draw(st.integers(1, seq_len + 2)) if draw(st.sampled_from([0, 0, 1])) else 0
    num_layers = draw(st.integers(1, 3))
    bidirectional = draw(st.booleans())
    return PropertyCase(
        input_size=draw(st.integers(1, max_size)),
        hidden_size=hidden_size,
        num_layers=num_layers,
        bias=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        bidirectional=bidirectional,
        proj_size=proj_size,
        seq_len=seq_len,
        batch=batch,
        with_hx=draw(st.booleans()),
        packed=lengths is not None,
        lengths=lengths,
        unroll=draw(st.sampled_from([1, 1, 2, 3])),
        remat=remat,
        wavefront=num_layers > 1 and not bidirectional and not remat and draw(st.booleans()),
    )


@st.composite
def cell_cases(draw: st.DrawFn, max_batch: int = 8, max_size: int = 32) -> PropertyCase:
    """Random ``nn.LSTMCell`` configurations: sizes, bias, batched or not, with/without hx."""
    return PropertyCase(
        kind="cell",
        input_size=draw(st.integers(1, max_size)),
        hidden_size=draw(st.integers(1, max_size)),
        bias=draw(st.booleans()),
        batch=draw(st.none() | st.integers(1, max_batch)),
        with_hx=draw(st.booleans()),
    )


seeds = st.integers(0, 2**31 - 1)
dtypes = st.sampled_from(DTYPES)


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
    handles the shapes."""

    def loss_fn(params, x, hx, seq_lengths, cotangents):
        if isinstance(config, LSTMCellConfig):
            h, c = functional.lstm_cell(params, x, hx, config=config)
            outputs = {"h": h, "c": c}
        else:
            out, (h_n, c_n) = functional.lstm(params, x, hx, config=config,
                                              seq_lengths=seq_lengths, unroll=unroll,
                                              remat=remat, chunk_rows=chunk_rows,
                                              wavefront=wavefront)
            outputs = {"output": out, "h_n": h_n, "c_n": c_n}
        loss = sum(jnp.sum(cotangents[k] * v) for k, v in outputs.items())
        return loss, outputs

    grad = jax.jit(jax.grad(loss_fn, argnums=(0, 1, 2), has_aux=True),
                   compiler_options=compiler_options())
    forward = jax.jit(lambda *args: loss_fn(*args)[1], compiler_options=compiler_options())
    return grad, forward


def run_jax(module: torch.nn.Module, case: PropertyCase, inputs: runner.Inputs) -> dict:
    """jaxlstm's values and gradients on the torch module's weights, keyed like the runner's."""
    params = {name: to_numpy(value) for name, value in module.state_dict().items()}
    config = infer_config(params)
    if isinstance(config, LSTMConfig):
        config = dataclasses.replace(config, batch_first=case.batch_first)
    x = inputs.x
    if inputs.seq_lengths is not None:
        # Poison the padding: torch never sees it, so it must not change anything here either.
        x = x.copy()
        x[runner.padding_mask(case, inputs.seq_lengths)] = np.nan
    seq_lengths = inputs.seq_lengths
    if seq_lengths is not None and case.batch is None:
        seq_lengths = seq_lengths.reshape(())
    grad, forward = _jax_fns(config, case.unroll, case.remat or False, case.chunk_rows,
                             case.wavefront)
    args = (params, x, inputs.hx, seq_lengths, inputs.cotangents)
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
    short = dataclasses.replace(case, seq_len=length, packed=False, lengths=None)
    cotangents = dict(inputs.cotangents, output=inputs.cotangents["output"][:length])
    prefix = runner.Inputs(inputs.x[:length], inputs.hx, None, cotangents)
    values = runner.run_torch(module, short, prefix, native)
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
        results.append(runner.compare(case, dtype, path, actual, expected))
    runner.check_against_float64(
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
                values[path] = runner.run_torch(module, case, inputs, native)
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
                f"{result.case.name} {result.dtype} vs torch {result.torch_path}: {worst} "
                f"error {result.errors[worst]:.2e} > {result.tolerance:.0e}{against_truth}"
            )
    return "\n".join(lines)
