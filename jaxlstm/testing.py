"""Prove a port: run a torch LSTM and its jaxlstm port on the same inputs and compare everything.

``output``, ``h_n``, ``c_n`` (``h``, ``c`` for a cell) and the gradients of one scalar loss
with respect to every weight, the input and ``(h0, c0)``; the outputs twice on the JAX side (as
computed for the gradient, and from the forward pass alone). The error of each tensor is
``max|jaxlstm - torch| / max|torch|``; tolerances are 1e-5 in float32 and 1e-10 in float64.
float32 is compared against both of torch's CPU paths, oneDNN (the default) and native ATen
(``torch.backends.mkldnn.enabled=False``); where torch's own float32 rounding differs from
jaxlstm's by more than the tolerance, the tensor passes when it is within the tolerance of
torch in float64 on the same weights and inputs (``pass*``).

Use it in your own tests::

    >>> from jaxlstm.testing import assert_matches
    >>> assert_matches(torch_lstm, jaxlstm.from_torch(torch_lstm), x)

Needs torch (``pip install jaxlstm[torch]``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlstm.arrays import to_numpy
from jaxlstm.reference import relative_error

try:
    import torch
except ImportError as error:  # pragma: no cover - exercised in an environment without torch
    raise ImportError(
        "jaxlstm.testing compares against real torch, which is not installed: "
        "pip install 'jaxlstm[torch]'"
    ) from error


@contextlib.contextmanager
def quiet_torch():
    """Hides torch's warnings that say nothing about a comparison: its oneDNN path falling back
    for ``proj_size`` (or warning about TF32 on Intel GPUs), and dropout with one layer, which
    torch's constructor warns about."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*oneDNN.*", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*dropout.*num_layers.*", category=UserWarning)
        yield


@contextlib.contextmanager
def native_path():
    """torch's native ATen path for the block (oneDNN off). torch's flag switch warns about
    Intel-GPU TF32, which is noise here (nothing runs on an Intel GPU): that warning is hidden."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TF32 acceleration on top of oneDNN.*")
        with torch.backends.mkldnn.flags(enabled=False):
            yield


TOLERANCE = {"float32": 1e-5, "float64": 1e-10}
"""Relative tolerance per dtype."""


@dataclasses.dataclass
class Inputs:
    """What one comparison feeds both sides. The loss is ``sum(cotangent * tensor)`` over the
    outputs named in ``cotangents``."""

    x: np.ndarray
    hx: tuple[np.ndarray, np.ndarray] | None
    seq_lengths: np.ndarray | None
    cotangents: dict[str, np.ndarray]


def forward_only(name: str) -> str:
    """The key of an output computed by the forward pass alone, without any gradient."""
    return f"{name} (forward only)"


def with_forward_only(values: dict) -> dict:
    """torch's values, each output also under its forward-only key."""
    outputs = {forward_only(k): v for k, v in values.items() if not k.startswith("grad ")}
    return {**values, **outputs}


def _is_cell(module: Any) -> bool:
    return not hasattr(module, "num_layers")


def _time_axis(x: np.ndarray, batch_first: bool) -> int:
    return 1 if batch_first and x.ndim == 3 else 0


def padding_mask(x: np.ndarray, seq_lengths: Any, batch_first: bool) -> np.ndarray:
    """True at the padded steps of ``x`` (shaped like ``x`` without its feature axis).

    **Arguments:**

    - ``x``: the padded batch ``(L, N, I)`` (``(N, L, I)`` with ``batch_first``), or one
      unbatched sequence ``(L, I)``.
    - ``seq_lengths``: ``(N,)`` valid lengths (one length for unbatched ``x``).
    - ``batch_first``: the layout of ``x``.
    """
    steps = x.shape[_time_axis(x, batch_first)]
    mask = np.arange(steps)[:, None] >= np.reshape(np.asarray(seq_lengths), (1, -1))  # (T, N)
    if x.ndim == 2:
        return mask[:, 0]
    return mask.T if batch_first else mask


def nan_padding(x: np.ndarray, seq_lengths: Any, batch_first: bool) -> np.ndarray:
    """A copy of ``x`` with NaN at its padded steps (``x`` itself when ``seq_lengths`` is None).

    torch's packed sequences never read the padding, so a port must give the same results with
    NaN there: any leak shows. **Arguments:** as :func:`padding_mask`.
    """
    if seq_lengths is None:
        return x
    x = np.array(x, copy=True)
    x[padding_mask(x, seq_lengths, batch_first)] = np.nan
    return x


def run_torch(module: Any, inputs: Inputs, *, native: bool) -> dict[str, np.ndarray]:
    """torch's outputs and gradients (``grad <name>``) for ``inputs``.

    **Arguments:**

    - ``module``: a ``torch.nn.LSTM``/``LSTMCell``; its gradients are reset afterwards.
    - ``inputs``: the input, state, lengths (run packed) and loss cotangents.
    - ``native``: run torch's native ATen path (oneDNN off) instead of its default.
    """
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    x = torch.tensor(inputs.x, requires_grad=True)
    hx = None
    if inputs.hx is not None:
        hx = tuple(torch.tensor(a, requires_grad=True) for a in inputs.hx)
    flags = native_path() if native else contextlib.nullcontext()
    with flags:
        if _is_cell(module):
            h, c = module(x, hx)
            outputs = {"h": h, "c": c}
        elif inputs.seq_lengths is not None:
            batch_first = module.batch_first
            packed = pack_padded_sequence(x, torch.as_tensor(inputs.seq_lengths),
                                          batch_first=batch_first, enforce_sorted=False)
            out, (h_n, c_n) = module(packed, hx)
            out, _ = pad_packed_sequence(out, batch_first=batch_first,
                                         total_length=inputs.x.shape[_time_axis(inputs.x,
                                                                               batch_first)])
            outputs = {"output": out, "h_n": h_n, "c_n": c_n}
        else:
            out, (h_n, c_n) = module(x, hx)
            outputs = {"output": out, "h_n": h_n, "c_n": c_n}
        values = backward(outputs, inputs.cotangents, x, hx, module.named_parameters())
    module.zero_grad(set_to_none=True)
    return values


def backward(outputs: dict[str, Any], cotangents: dict[str, np.ndarray], x: Any, hx: Any,
             parameters: Iterable[tuple[str, Any]]) -> dict[str, np.ndarray]:
    """torch's ``outputs`` and the gradients of ``sum(cotangent * output)``, keyed as
    :func:`run_torch` keys them: ``grad input``, ``grad h0``, ``grad c0``, ``grad <name>``.

    **Arguments:**

    - ``outputs``: ``{name: tensor}``; ``cotangents``: ``{name: array}`` of the same shapes.
    - ``x``, ``hx``: the input and ``(h0, c0)`` (or ``None``) tensors that require gradients.
    - ``parameters``: ``(torch name, parameter)`` pairs, the names the gradients are keyed by.
    """
    loss = sum((torch.from_numpy(cotangents[k]) * v).sum() for k, v in outputs.items())
    loss.backward()
    values = {k: v.detach().numpy() for k, v in outputs.items()}
    values["grad input"] = x.grad.numpy()
    if hx is not None:
        values["grad h0"], values["grad c0"] = hx[0].grad.numpy(), hx[1].grad.numpy()
    for name, param in parameters:
        values[f"grad {name}"] = param.grad.numpy()
    return values


def run_jax(model: Any, inputs: Inputs) -> dict[str, np.ndarray]:
    """jaxlstm's outputs (also from the forward pass alone) and gradients for ``inputs``.

    **Arguments:**

    - ``model``: a :class:`jaxlstm.LSTM` / :class:`jaxlstm.LSTMCell`.
    - ``inputs``: as for :func:`run_torch`; with ``seq_lengths`` the padding is set to NaN
      first (torch never sees it, so it must not change anything here either).
    """
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    is_cell = not hasattr(model.config, "num_layers")
    x = inputs.x
    if inputs.seq_lengths is not None:  # an LSTM's (a cell takes no lengths)
        x = nan_padding(x, inputs.seq_lengths, model.config.batch_first)
    seq_lengths = None if inputs.seq_lengths is None else jnp.asarray(inputs.seq_lengths)
    cotangents = inputs.cotangents

    @jax.jit
    def loss_fn(params, x, hx):
        model = nnx.merge(graphdef, params, rest)
        if is_cell:
            h, c = model(x, hx)
            outputs = {"h": h, "c": c}
        else:
            out, (h_n, c_n) = model(x, hx, seq_lengths=seq_lengths)
            outputs = {"output": out, "h_n": h_n, "c_n": c_n}
        loss = sum(jnp.sum(cotangents[k] * v) for k, v in outputs.items())
        return loss, outputs

    grad_fn = jax.grad(loss_fn, argnums=(0, 1, 2), has_aux=True)
    (grad_params, grad_x, grad_hx), outputs = grad_fn(params, x, inputs.hx)
    values = {k: np.asarray(v) for k, v in outputs.items()}
    # The forward pass alone takes its own path (nothing saved for a backward pass): check it too.
    forward = jax.jit(lambda params, x, hx: loss_fn(params, x, hx)[1])
    values.update({forward_only(k): np.asarray(v)
                   for k, v in forward(params, x, inputs.hx).items()})
    values["grad input"] = np.asarray(grad_x)
    if inputs.hx is not None:
        values["grad h0"], values["grad c0"] = np.asarray(grad_hx[0]), np.asarray(grad_hx[1])
    for name, value in nnx.to_pure_dict(grad_params).items():
        values[f"grad {name}"] = to_numpy(value, name)
    return values


@dataclasses.dataclass
class Comparison:
    """One dtype against one torch path: the relative error of every tensor."""

    dtype: str
    torch_path: str
    """``"oneDNN"`` (torch's default CPU float32 path) or ``"native"`` (ATen)."""
    errors: dict[str, float]
    """Tensor name -> ``max|jaxlstm - torch| / max|torch|``."""
    truth_errors: dict[str, float] = dataclasses.field(default_factory=dict)
    """For float32 tensors outside the tolerance against torch float32: the error against
    torch in float64 on the same weights and inputs (the exact answer, to float32)."""

    @property
    def tolerance(self) -> float:
        return TOLERANCE[self.dtype]

    def _within(self, error: float) -> bool:
        return bool(np.isfinite(error) and error <= self.tolerance)

    @property
    def failing_against_torch(self) -> list[str]:
        """Tensors outside the tolerance of torch in the same dtype."""
        return [k for k, e in self.errors.items() if not self._within(e)]

    @property
    def failing(self) -> list[str]:
        """Tensors that fail: outside the tolerance of torch and (float32) of float64 torch."""
        return [k for k in self.failing_against_torch
                if not (k in self.truth_errors and self._within(self.truth_errors[k]))]

    @property
    def passed(self) -> bool:
        return not self.failing


def compare_values(dtype: str, path: str, actual: dict, expected: dict) -> Comparison:
    """Every tensor's error; one that only one side has counts as an infinite error. Each torch
    output is also the expected value of the same output computed by the forward pass alone.

    **Arguments:**

    - ``dtype``: ``"float32"`` or ``"float64"``; ``path``: the torch path measured.
    - ``actual``: :func:`run_jax`'s values; ``expected``: :func:`run_torch`'s.
    """
    expected = with_forward_only(expected)
    errors = {k: relative_error(actual[k], expected[k]) for k in expected if k in actual}
    errors.update({f"{k} (missing)": float("inf") for k in set(expected) ^ set(actual)})
    return Comparison(dtype, path, errors)


def check_against_float64(
    comparisons: Sequence[Comparison], actual: dict, module: Any, inputs: Inputs,
    run: Callable[[Any, Inputs], dict] | None = None,
) -> None:
    """Float32 tensors that miss the tolerance against torch float32 are measured against
    torch float64 on the same weights and inputs (filled into ``truth_errors``).

    **Arguments:**

    - ``comparisons``: the float32 comparisons; ``actual``: jaxlstm's values.
    - ``module``, ``inputs``: the torch module and inputs they were measured on.
    - ``run``: ``run(module64, inputs64)`` runs torch (default: :func:`run_torch`, native).
    """
    if all(not c.failing_against_torch or c.dtype != "float32" for c in comparisons):
        return
    run = run or (lambda m, i: run_torch(m, i, native=True))
    module64 = copy.deepcopy(module).double()
    inputs64 = Inputs(
        inputs.x.astype(np.float64),
        None if inputs.hx is None else tuple(a.astype(np.float64) for a in inputs.hx),
        inputs.seq_lengths,
        {k: v.astype(np.float64) for k, v in inputs.cotangents.items()},
    )
    truth = with_forward_only(run(module64, inputs64))
    for comparison in comparisons:
        for key in comparison.failing_against_torch:
            if key in truth:
                comparison.truth_errors[key] = relative_error(actual[key], truth[key])


def torch_paths(dtype: str) -> dict[str, bool]:
    """The torch CPU paths to compare against: ``{name: native}``."""
    return {"oneDNN": False, "native": True} if dtype == "float32" else {"native": True}


def run_both(module: Any, model: Any, inputs: Inputs, dtype: str,
             run: Callable[[Any, Inputs, bool], dict] | None = None) -> list[Comparison]:
    """jaxlstm against every torch path of ``dtype``, with the float64 check for float32.

    **Arguments:**

    - ``module``: the torch module; ``model``: the jaxlstm port; ``inputs``: shared inputs.
    - ``dtype``: ``"float32"`` or ``"float64"`` (JAX runs with x64 for float64).
    - ``run``: ``run(module, inputs, native)`` runs torch (default :func:`run_torch`).
    """
    run = run or (lambda m, i, native: run_torch(m, i, native=native))
    with jax.enable_x64(dtype == "float64"):
        actual = run_jax(model, inputs)
    comparisons = [compare_values(dtype, path, actual, run(module, inputs, native))
                   for path, native in torch_paths(dtype).items()]
    check_against_float64(comparisons, actual, module, inputs, lambda m, i: run(m, i, True))
    return comparisons


@dataclasses.dataclass
class Report:
    """The result of :func:`compare`: one :class:`Comparison` per torch path."""

    comparisons: list[Comparison]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.comparisons)

    @property
    def failures(self) -> list[tuple[str, str, float]]:
        """``(torch path, tensor, error)`` of every failing tensor."""
        return [(f"{c.dtype} {c.torch_path}", k, c.errors[k])
                for c in self.comparisons for k in c.failing]

    def table(self) -> str:
        """A readable table: one row per tensor, one column per dtype and torch path."""
        columns = [f"{c.dtype} {c.torch_path}" for c in self.comparisons]
        names = list(dict.fromkeys(k for c in self.comparisons for k in c.errors))
        width = max([len("tensor"), *map(len, names)])
        lines = [f"{'tensor':<{width}}  " + "  ".join(f"{c:>15}" for c in columns) + "  status"]
        lines.append("-" * len(lines[0]))
        for name in names:
            cells, status = [], "pass"
            for c in self.comparisons:
                error = c.errors.get(name, float("nan"))
                cells.append(f"{error:>15.1e}")
                if name in c.failing:
                    status = "FAIL"
                elif name in c.failing_against_torch and status == "pass":
                    status = "pass*"
            lines.append(f"{name:<{width}}  " + "  ".join(cells) + f"  {status}")
        tolerances = ", ".join(f"{d} {TOLERANCE[d]:.0e}"
                               for d in dict.fromkeys(c.dtype for c in self.comparisons))
        lines.append(f"error = max|jaxlstm - torch| / max|torch|; tolerance {tolerances}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def random_inputs(
    module: Any, x: Any = None, hx: Any = None, seq_lengths: Any = None, *, steps: int = 7,
    batch: int = 3, seed: int = 0, with_hx: bool = True,
) -> Inputs:
    """Inputs for ``module`` in its own dtype: ``x``/``hx`` as given, else standard normal.

    **Arguments:**

    - ``module``: a ``torch.nn.LSTM``/``LSTMCell`` (its sizes, layout and dtype are used).
    - ``x``, ``hx``, ``seq_lengths``: given values (converted to the module's dtype).
    - ``steps``, ``batch``: the shape of a random ``x`` (``steps`` unused for a cell).
    - ``seed``: seeds ``x``, ``hx`` and the loss cotangents.
    - ``with_hx``: draw a random ``(h0, c0)`` when ``hx`` is not given (else zeros are used).
    """
    rng = np.random.default_rng(seed)
    dtype = np.dtype(str(next(module.parameters()).dtype).removeprefix("torch."))
    cell = _is_cell(module)
    if x is None:
        shape = (batch,) if cell else ((batch, steps) if module.batch_first else (steps, batch))
        x = rng.standard_normal((*shape, module.input_size))
    x = np.asarray(to_numpy(x), dtype)
    with torch.no_grad():
        if cell:
            h, c = module(torch.from_numpy(x))
            shapes = {"h": h.shape, "c": c.shape}
            state_shapes = [h.shape, c.shape]
        else:
            out, (h, c) = module(torch.from_numpy(x))
            shapes = {"output": out.shape, "h_n": h.shape, "c_n": c.shape}
            state_shapes = [h.shape, c.shape]
    if hx is None and with_hx:
        hx = tuple(rng.standard_normal(tuple(s)) for s in state_shapes)
    if hx is not None:
        hx = tuple(np.asarray(to_numpy(a), dtype) for a in hx)
    cotangents = {k: rng.standard_normal(tuple(s)).astype(dtype) for k, s in shapes.items()}
    lengths = None if seq_lengths is None else np.asarray(seq_lengths, np.int64)
    return Inputs(x, hx, lengths, cotangents)


def compare(
    torch_module: Any, jax_model: Any = None, x: Any = None, hx: Any = None,
    seq_lengths: Any = None, *, seed: int = 0, steps: int = 7, batch: int = 3,
) -> Report:
    """Compare a torch ``nn.LSTM``/``nn.LSTMCell`` with its jaxlstm port on the same inputs.

    **Arguments:**

    - ``torch_module``: the reference; its dtype (float32 or float64) is the dtype compared.
    - ``jax_model``: the port (default: ``jaxlstm.from_torch(torch_module)``).
    - ``x``: the input in the module's layout (default: random ``(steps, batch, I)``).
    - ``hx``: ``(h0, c0)`` (default: random).
    - ``seq_lengths``: ``(N,)`` lengths; torch then runs ``pack_padded_sequence``.
    - ``seed``, ``steps``, ``batch``: for the random inputs and loss cotangents.

    **Returns:** a :class:`Report`; ``report.passed``, ``report.failures``, ``print(report)``.
    """
    dtype = str(next(torch_module.parameters()).dtype).removeprefix("torch.")
    if dtype not in TOLERANCE:
        raise ValueError(f"compare runs float32 or float64 modules, got {dtype}; convert the "
                         "torch module first, e.g. module.float() or module.double()")
    was_training = torch_module.training
    torch_module.eval()  # dropout off: both sides compute the same function
    try:
        if jax_model is None:
            from jaxlstm.porting import from_torch

            with jax.enable_x64(dtype == "float64"):
                jax_model = from_torch(torch_module)
        inputs = random_inputs(torch_module, x, hx, seq_lengths, steps=steps, batch=batch,
                               seed=seed)
        return Report(run_both(torch_module, jax_model, inputs, dtype))
    finally:
        torch_module.train(was_training)


def assert_matches(
    torch_module: Any, jax_model: Any = None, x: Any = None, hx: Any = None,
    seq_lengths: Any = None, **kwargs: Any,
) -> Report:
    """:func:`compare`, raising ``AssertionError`` that names each failing tensor.

    **Arguments:** as :func:`compare`. Returns the report when everything matches.
    """
    report = compare(torch_module, jax_model, x, hx, seq_lengths, **kwargs)
    if not report.passed:
        failing = ", ".join(f"{tensor} ({path}: {error:.1e})"
                            for path, tensor, error in report.failures)
        raise AssertionError(f"jaxlstm does not match torch: {failing}\n{report.table()}")
    return report
