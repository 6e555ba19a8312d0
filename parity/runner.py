"""Run one parity case: the same weights and inputs through torch and jaxlstm, compare everything.

The reference is always real ``torch`` computing the same thing: ``output``, ``h_n``, ``c_n`` and
the gradients of one scalar loss with respect to every weight, the input and ``(h0, c0)``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import jaxlstm
from parity.grid import Case

TOLERANCE = {"float32": 1e-5, "float64": 1e-10}
TORCH_DTYPE = {"float32": torch.float32, "float64": torch.float64}


@dataclasses.dataclass
class Result:
    case: Case
    dtype: str
    torch_path: str  # "oneDNN" (torch's default CPU float32 path) or "native" (ATen)
    errors: dict[str, float]  # tensor name -> max |jax - torch| / max |torch|
    # For float32 tensors outside the tolerance against torch float32: the same error measured
    # against torch in float64 on the same weights and inputs (the exact answer, to float32).
    truth_errors: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def tolerance(self) -> float:
        return TOLERANCE[self.dtype]

    def _within(self, error: float) -> bool:
        return bool(np.isfinite(error) and error <= self.tolerance)

    @property
    def failing_against_torch(self) -> list[str]:
        return [k for k, e in self.errors.items() if not self._within(e)]

    @property
    def passed(self) -> bool:
        """Within tolerance of torch; or, in float32 where torch's own rounding differs by more
        than that, within tolerance of the float64 result."""
        return all(
            k in self.truth_errors and self._within(self.truth_errors[k])
            for k in self.failing_against_torch
        )

    def to_json(self) -> dict:
        return {
            "case": self.case.name,
            "config": dataclasses.asdict(self.case),
            "dtype": self.dtype,
            "torch_path": self.torch_path,
            "tolerance": self.tolerance,
            "errors": self.errors,
            "errors_against_float64": self.truth_errors,
            "passed": self.passed,
        }


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        return float("inf")
    if actual.size == 0:
        return 0.0
    scale = np.max(np.abs(expected))
    diff = np.max(np.abs(actual - expected))
    return float(diff / scale) if scale > 0 else float(diff)


@dataclasses.dataclass
class Inputs:
    x: np.ndarray
    hx: tuple[np.ndarray, np.ndarray] | None
    seq_lengths: np.ndarray | None
    cotangents: dict[str, np.ndarray]  # the loss is sum(cotangent * tensor) over these


def make_inputs(case: Case, dtype: str, seed: int) -> Inputs:
    rng = np.random.default_rng(seed)
    np_dtype = np.dtype(dtype)
    batch_shape = () if case.batch is None else (case.batch,)
    if case.kind == "cell":
        x = rng.standard_normal(batch_shape + (case.input_size,))
        state_shapes = [batch_shape + (case.hidden_size,)] * 2
        out_shapes = {"h": state_shapes[0], "c": state_shapes[1]}
        lengths = None
    else:
        time_batch = (case.seq_len,) + batch_shape
        if case.batch_first and case.batch is not None:
            time_batch = time_batch[::-1]
        x = rng.standard_normal(time_batch + (case.input_size,))
        layers = case.num_layers * (2 if case.bidirectional else 1)
        out_size = case.proj_size or case.hidden_size
        state_shapes = [(layers, *batch_shape, out_size), (layers, *batch_shape, case.hidden_size)]
        out_shapes = {
            "output": time_batch + ((2 if case.bidirectional else 1) * out_size,),
            "h_n": state_shapes[0],
            "c_n": state_shapes[1],
        }
        lengths = None
        if case.packed:
            lengths = rng.integers(1, case.seq_len + 1, size=case.batch)
            lengths[:2] = [1, case.seq_len]
            rng.shuffle(lengths)
    hx = None
    if case.with_hx:
        hx = tuple(rng.standard_normal(s).astype(np_dtype) for s in state_shapes)
    cotangents = {k: rng.standard_normal(s).astype(np_dtype) for k, s in out_shapes.items()}
    return Inputs(x.astype(np_dtype), hx, lengths, cotangents)


def torch_module(case: Case, dtype: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    if case.kind == "cell":
        module = torch.nn.LSTMCell(case.input_size, case.hidden_size, case.bias)
    else:
        module = torch.nn.LSTM(
            case.input_size, case.hidden_size, case.num_layers, case.bias, case.batch_first,
            case.dropout, case.bidirectional, case.proj_size,
        )
    return module.to(TORCH_DTYPE[dtype]).eval()


def padding_mask(case: Case, lengths: np.ndarray) -> np.ndarray:
    """True at padded steps, shaped like the input without its feature axis."""
    mask = np.arange(case.seq_len)[:, None] >= np.reshape(lengths, (1, -1))  # (T, N)
    if case.batch is None:
        return mask[:, 0]
    return mask.T if case.batch_first else mask


def run_torch(module: torch.nn.Module, case: Case, inputs: Inputs, native: bool) -> dict:
    x = torch.tensor(inputs.x, requires_grad=True)
    hx = None
    if inputs.hx is not None:
        hx = tuple(torch.tensor(a, requires_grad=True) for a in inputs.hx)
    flags = torch.backends.mkldnn.flags(enabled=False) if native else contextlib.nullcontext()
    with flags:
        if case.kind == "cell":
            h, c = module(x, hx)
            outputs = {"h": h, "c": c}
        elif case.packed:
            packed = pack_padded_sequence(
                x, torch.as_tensor(inputs.seq_lengths), batch_first=case.batch_first,
                enforce_sorted=False,
            )
            out, (h_n, c_n) = module(packed, hx)
            out, _ = pad_packed_sequence(out, batch_first=case.batch_first,
                                         total_length=case.seq_len)
            outputs = {"output": out, "h_n": h_n, "c_n": c_n}
        else:
            out, (h_n, c_n) = module(x, hx)
            outputs = {"output": out, "h_n": h_n, "c_n": c_n}
        loss = sum((torch.from_numpy(inputs.cotangents[k]) * v).sum() for k, v in outputs.items())
        loss.backward()
    values = {k: v.detach().numpy() for k, v in outputs.items()}
    values["grad input"] = x.grad.numpy()
    if hx is not None:
        values["grad h0"], values["grad c0"] = hx[0].grad.numpy(), hx[1].grad.numpy()
    for name, param in module.named_parameters():
        values[f"grad {name}"] = param.grad.numpy()
    return values


def forward_only(name: str) -> str:
    """The key of an output computed by the forward pass alone, without any gradient."""
    return f"{name} (forward only)"


def with_forward_only(values: dict) -> dict:
    """torch's values, each output also under its forward-only key."""
    outputs = {forward_only(k): v for k, v in values.items() if not k.startswith("grad ")}
    return {**values, **outputs}


def run_jax(module: torch.nn.Module, case: Case, inputs: Inputs) -> dict:
    options = {"remat": case.remat} if case.kind == "lstm" else {}
    model = jaxlstm.from_torch(module, **options)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    x = inputs.x
    if case.packed:
        # Poison the padding: torch never sees it, so it must not change anything here either.
        x = x.copy()
        x[padding_mask(case, inputs.seq_lengths)] = np.nan
    hx = inputs.hx
    seq_lengths = None if inputs.seq_lengths is None else jnp.asarray(inputs.seq_lengths)

    @jax.jit
    def loss_fn(params, x, hx):
        model = nnx.merge(graphdef, params, rest)
        if case.kind == "cell":
            h, c = model(x, hx)
            outputs = {"h": h, "c": c}
        else:
            out, (h_n, c_n) = model(x, hx, seq_lengths=seq_lengths)
            outputs = {"output": out, "h_n": h_n, "c_n": c_n}
        loss = sum(jnp.sum(inputs.cotangents[k] * v) for k, v in outputs.items())
        return loss, outputs

    grad_fn = jax.grad(loss_fn, argnums=(0, 1, 2), has_aux=True)
    (grad_params, grad_x, grad_hx), outputs = grad_fn(params, x, hx)
    values = {k: np.asarray(v) for k, v in outputs.items()}
    # The forward pass alone takes its own path (nothing saved for a backward pass): check it too.
    forward = jax.jit(lambda params, x, hx: loss_fn(params, x, hx)[1])
    values.update({forward_only(k): np.asarray(v) for k, v in forward(params, x, hx).items()})
    values["grad input"] = np.asarray(grad_x)
    if hx is not None:
        values["grad h0"], values["grad c0"] = np.asarray(grad_hx[0]), np.asarray(grad_hx[1])
    for name, value in nnx.to_pure_dict(grad_params).items():
        values[f"grad {name}"] = np.asarray(value)
    return values


def compare(case: Case, dtype: str, path: str, actual: dict, expected: dict) -> Result:
    """Every tensor's error; one that only one side has counts as an infinite error. Each torch
    output is also the expected value of the same output computed by the forward pass alone."""
    expected = with_forward_only(expected)
    errors = {k: relative_error(actual[k], expected[k]) for k in expected if k in actual}
    errors.update({f"{k} (missing)": float("inf") for k in set(expected) ^ set(actual)})
    return Result(case, dtype, path, errors)


def check_against_float64(results: list[Result], actual: dict, module: torch.nn.Module,
                          inputs: Inputs, run: Callable[[torch.nn.Module, Inputs], dict]) -> None:
    """Float32 tensors that miss the tolerance against torch float32 are measured against
    torch float64 on the same weights and inputs; ``run(module, inputs)`` runs torch."""
    if all(r.passed or r.dtype != "float32" for r in results):
        return
    module64 = copy.deepcopy(module).double()
    inputs64 = Inputs(
        inputs.x.astype(np.float64),
        None if inputs.hx is None else tuple(a.astype(np.float64) for a in inputs.hx),
        inputs.seq_lengths,
        {k: v.astype(np.float64) for k, v in inputs.cotangents.items()},
    )
    truth = with_forward_only(run(module64, inputs64))
    for result in results:
        for key in result.failing_against_torch:
            if key in truth:
                result.truth_errors[key] = relative_error(actual[key], truth[key])


def run_case(case: Case, dtype: str, seed: int = 0) -> list[Result]:
    """Compare one case in one dtype; float32 against both torch CPU paths."""
    module = torch_module(case, dtype, seed)
    inputs = make_inputs(case, dtype, seed)
    with jax.enable_x64(dtype == "float64"):
        actual = run_jax(module, case, inputs)
    paths = {"oneDNN": False, "native": True} if dtype == "float32" else {"native": True}
    results = []
    for path, native in paths.items():
        results.append(compare(case, dtype, path, actual, run_torch(module, case, inputs, native)))
        module.zero_grad(set_to_none=True)
    check_against_float64(results, actual, module, inputs,
                          lambda m, i: run_torch(m, case, i, native=True))
    return results
