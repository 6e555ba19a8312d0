"""Run one parity case: the same weights and inputs through torch and jaxlstm, compare everything.

The comparison itself lives in :mod:`jaxlstm.testing` (also what ``jaxlstm parity FILE`` and
users' own tests run); this module builds the grid's torch modules and inputs.

The reference is always real ``torch`` computing the same thing: ``output``, ``h_n``, ``c_n`` and
the gradients of one scalar loss with respect to every weight, the input and ``(h0, c0)``.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import torch

import jaxlstm
from jaxlstm import testing
from jaxlstm.testing import TOLERANCE, Inputs, forward_only, relative_error, with_forward_only
from parity.grid import Case

__all__ = ["TOLERANCE", "Inputs", "Result", "forward_only", "relative_error", "run_case",
           "with_forward_only"]

TORCH_DTYPE = {"float32": torch.float32, "float64": torch.float64}


CHECKS = {"values": "", "jvp": "jvp ", "dropout": "train "}
"""What a result checks, and how its row is named: ``values`` (outputs and gradients),
``jvp`` (forward mode, :mod:`parity.forward_mode`), ``dropout`` (training mode with dropout's
masks, :mod:`parity.dropout`)."""


class Result(testing.Comparison):
    """A :class:`jaxlstm.testing.Comparison` of one grid case: one comparison."""

    def __init__(self, case: Case, dtype: str, torch_path: str, errors: dict[str, float],
                 truth_errors: dict[str, float] | None = None, check: str = "values"):
        super().__init__(dtype, torch_path, errors, dict(truth_errors or {}))
        self.case = case
        self.check = check

    @property
    def name(self) -> str:
        """The case's name, after ``jvp``/``train`` for the forward-mode and dropout checks."""
        return CHECKS[self.check] + self.case.name

    def to_json(self) -> dict:
        return {
            "case": self.name,
            "check": self.check,
            "config": dataclasses.asdict(self.case),
            "dtype": self.dtype,
            "torch_path": self.torch_path,
            "tolerance": self.tolerance,
            "errors": self.errors,
            "errors_against_float64": self.truth_errors,
            "passed": self.passed,
        }


def make_inputs(case: Case, dtype: str, seed: int) -> Inputs:
    """Seeded inputs, state and loss cotangents for ``case``."""
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


def schedule(case: Case) -> dict:
    """The ``from_torch`` options that say how ``case`` runs (an LSTM's remat and wavefront)."""
    if case.kind != "lstm":
        return {}
    return {"remat": case.remat, "wavefront": case.wavefront}


def run_case(case: Case, dtype: str, seed: int = 0) -> list[Result]:
    """Compare one case in one dtype; float32 against both torch CPU paths."""
    module = torch_module(case, dtype, seed)
    inputs = make_inputs(case, dtype, seed)
    with jax.enable_x64(dtype == "float64"):
        model = jaxlstm.from_torch(module, **schedule(case))
    return [Result(case, c.dtype, c.torch_path, c.errors, c.truth_errors)
            for c in testing.run_both(module, model, inputs, dtype)]
