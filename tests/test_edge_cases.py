"""Edge cases against real torch: size-1 dimensions, very long sequences, NaN/Inf, empty inputs."""

import re
import warnings

import jax
import numpy as np
import pytest
import torch

import jaxlstm
from jaxlstm.functional import chunks
from parity import properties, runner
from parity.properties import PropertyCase

DTYPES = ["float32", "float64"]


def assert_matches_torch(case: PropertyCase, dtype: str, seed: int = 0) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # proj_size: oneDNN falls back, says so
        results = properties.run_property_case(case, dtype, seed)
    assert all(r.passed for r in results), properties.describe_failures(results)


SMALLEST = [
    PropertyCase(input_size=1, hidden_size=1, seq_len=1, batch=1),
    PropertyCase(input_size=1, hidden_size=1, seq_len=1, batch=None, with_hx=False),
    PropertyCase(input_size=1, hidden_size=1, num_layers=2, bidirectional=True, seq_len=1,
                 batch=1, batch_first=True),
    PropertyCase(input_size=1, hidden_size=2, proj_size=1, num_layers=2, bidirectional=True,
                 seq_len=1, batch=1, packed=True, lengths=(1,)),
    PropertyCase(input_size=1, hidden_size=2, proj_size=1, seq_len=3, batch=None, packed=True,
                 lengths=(1,)),
    PropertyCase(kind="cell", input_size=1, hidden_size=1, batch=1),
    PropertyCase(kind="cell", input_size=1, hidden_size=1, batch=None, bias=False),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", SMALLEST, ids=lambda c: c.name)
def test_size_one_dimensions_match_torch(case, dtype):
    assert_matches_torch(case, dtype)


def test_ten_thousand_steps_match_torch():
    """A long scan neither recurses nor keeps per-step Python state: T=10,000 forward and
    backward, compared with torch on both CPU paths."""
    assert_matches_torch(PropertyCase(input_size=4, hidden_size=4, seq_len=10_000, batch=2),
                         "float32")


# The forward pass alone projects long inputs a chunk of steps at a time; with few rows per
# chunk (``chunk_rows=5``), these small cases take that path: chunks that divide T, and chunks
# whose last one is padding (T=7 in chunks of 3), with and without lengths, in both directions
# and with a projection. The runner compares the forward-only outputs with torch's as well as
# the gradients.
CHUNKED_FORWARD = [
    PropertyCase(input_size=3, hidden_size=4, seq_len=10, batch=3, chunk_rows=5),
    PropertyCase(input_size=3, hidden_size=4, num_layers=2, bidirectional=True, proj_size=2,
                 seq_len=7, batch=2, chunk_rows=5),
    PropertyCase(input_size=3, hidden_size=4, num_layers=2, bidirectional=True, batch_first=True,
                 seq_len=7, batch=2, packed=True, lengths=(7, 4), chunk_rows=5),
    PropertyCase(input_size=3, hidden_size=4, bidirectional=True, seq_len=10, batch=3,
                 packed=True, lengths=(2, 10, 5), chunk_rows=5),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CHUNKED_FORWARD, ids=lambda c: c.name)
def test_chunked_forward_matches_torch(case, dtype):
    steps, batch = case.seq_len, case.batch
    assert chunks.inference_chunk(steps, batch, case.chunk_rows) < steps  # the path tested
    assert_matches_torch(case, dtype)


# --- NaN and Inf -----------------------------------------------------------------------------

NONFINITE_CASES = [
    PropertyCase(input_size=3, hidden_size=4, seq_len=6, batch=3),
    PropertyCase(input_size=3, hidden_size=4, num_layers=2, bidirectional=True, proj_size=2,
                 seq_len=6, batch=3),
    PropertyCase(input_size=3, hidden_size=4, bidirectional=True, batch_first=True, seq_len=6,
                 batch=3),
    PropertyCase(input_size=3, hidden_size=4, num_layers=2, bidirectional=True, proj_size=2,
                 seq_len=6, batch=3, packed=True, lengths=(6, 3, 2)),
    # remat in chunks of 4 steps: the second chunk ends in 2 padded steps.
    PropertyCase(input_size=3, hidden_size=4, bidirectional=True, proj_size=2, seq_len=6,
                 batch=3, remat=4),
    PropertyCase(input_size=3, hidden_size=4, bidirectional=True, seq_len=6, batch=3,
                 packed=True, lengths=(6, 3, 2), remat=3),
]
# (tensor, time step, batch index, feature, value), time-major; every position lies inside the
# packed case's lengths, so all of them are valid input.
POISONS = {
    "nan in x": [("x", 1, 0, 0, np.nan)],
    "inf in x": [("x", 1, 2, 1, np.inf), ("x", 2, 1, 0, -np.inf)],
    "nan late in x": [("x", 5, 0, 2, np.nan)],
    "nan and inf in x": [("x", 1, 0, 0, np.nan), ("x", 1, 2, 2, -np.inf)],
    "nan in h0": [("h0", 0, 1, 0, np.nan)],
    "inf in c0": [("c0", -1, 2, 1, np.inf), ("c0", 0, 0, 0, -np.inf)],
}


def nonfinite_params():
    for case in NONFINITE_CASES:
        for name in POISONS:
            yield pytest.param(case, name, id=f"{case.name}-{name}")


def poison(case: PropertyCase, inputs: runner.Inputs, name: str) -> None:
    for tensor, step, index, feature, value in POISONS[name]:
        if tensor == "x":
            position = (index, step) if case.batch_first else (step, index)
            inputs.x[(*position, feature)] = value
        else:
            inputs.hx[tensor == "c0"][step, index, feature] = value


def assert_same_nonfinite(actual: np.ndarray, expected: np.ndarray, what: str,
                          tolerance: float) -> None:
    for kind, mask in (("NaN", np.isnan), ("+inf", np.isposinf), ("-inf", np.isneginf)):
        ours, theirs = mask(actual), mask(expected)
        assert np.array_equal(ours, theirs), (
            f"{what}: {kind} at {np.argwhere(ours & ~theirs).tolist()} only here, at "
            f"{np.argwhere(theirs & ~ours).tolist()} only in torch"
        )
    finite = np.isfinite(expected)
    error = runner.relative_error(actual[finite], expected[finite])
    assert error <= tolerance, f"{what}: finite values differ by {error:.1e}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case, name", list(nonfinite_params()))
def test_nan_and_inf_propagate_like_torch(case, name, dtype):
    """Every NaN and ±inf of torch's outputs, states and gradients, at the same positions."""
    module = runner.torch_module(case, dtype, 0)
    inputs = properties.make_inputs(case, dtype, 0)
    poison(case, inputs, name)
    with jax.enable_x64(dtype == "float64"), np.errstate(invalid="ignore", over="ignore"):
        actual = properties.run_jax(module, case, inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        expected_by_path = properties.run_torch(module, case, dtype, inputs)
    assert any(np.isnan(v).any() for v in actual.values()), "the poison reached nothing"
    for path, expected in expected_by_path.items():
        expected = runner.with_forward_only(expected)
        assert set(actual) == set(expected)
        for key in expected:
            assert_same_nonfinite(actual[key], expected[key], f"{key} vs torch {path}",
                                  runner.TOLERANCE[dtype])


CELL_POISONS = {  # (tensor, batch index, feature, value)
    "nan in x": ("x", 0, 1, np.nan),
    "-inf in h": ("h", 2, 0, -np.inf),
    "inf in c": ("c", 1, 2, np.inf),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", [
    pytest.param(name) for name in CELL_POISONS
])
def test_nan_and_inf_in_cell_inputs_propagate_like_torch(name, dtype):
    case = PropertyCase(kind="cell", input_size=3, hidden_size=4, batch=3)
    module = runner.torch_module(case, dtype, 0)
    inputs = properties.make_inputs(case, dtype, 0)
    tensor, index, feature, value = CELL_POISONS[name]
    target = inputs.x if tensor == "x" else inputs.hx[tensor == "c"]
    target[index, feature] = value
    with jax.enable_x64(dtype == "float64"):
        actual = properties.run_jax(module, case, inputs)
    for path, expected in properties.run_torch(module, case, dtype, inputs).items():
        expected = runner.with_forward_only(expected)
        assert set(actual) == set(expected)
        for key in expected:
            assert_same_nonfinite(actual[key], expected[key], f"{key} vs torch {path}",
                                  runner.TOLERANCE[dtype])


# --- Empty batches and zero-length sequences --------------------------------------------------

EMPTY_BATCH = [
    PropertyCase(input_size=3, hidden_size=4, seq_len=5, batch=0),
    PropertyCase(input_size=3, hidden_size=4, seq_len=5, batch=0, with_hx=False,
                 batch_first=True),
    PropertyCase(input_size=3, hidden_size=4, num_layers=2, bidirectional=True, proj_size=2,
                 seq_len=5, batch=0),
    PropertyCase(kind="cell", input_size=3, hidden_size=4, batch=0),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", EMPTY_BATCH, ids=lambda c: c.name)
def test_empty_batch_matches_torch(case, dtype):
    """torch accepts N=0 and returns empty output and states (and zero weight gradients)."""
    assert_matches_torch(case, dtype)


def torch_error(fn) -> tuple[type, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fn()
        except Exception as error:  # noqa: BLE001 - whatever torch raises is the reference
            return type(error), str(error)
    raise AssertionError("torch accepted the input")


ZERO_LENGTH = [  # (input shape, batch_first): the time axis is empty
    ((0, 2, 3), False),
    ((2, 0, 3), True),
    ((0, 0, 3), False),
    ((0, 0, 3), True),
    ((0, 3), False),
    ((0, 3), True),
]


@pytest.mark.parametrize("with_hx", [False, True])
@pytest.mark.parametrize("shape, batch_first", ZERO_LENGTH)
def test_zero_length_sequence_raises_torch_error(shape, batch_first, with_hx):
    module = torch.nn.LSTM(3, 4, batch_first=batch_first, bidirectional=True)
    model = jaxlstm.from_torch(module)
    batch = () if len(shape) == 2 else (shape[0 if batch_first else 1],)
    hx = None
    if with_hx:
        hx = (np.zeros((2, *batch, 4), np.float32), np.zeros((2, *batch, 4), np.float32))
    error_type, message = torch_error(
        lambda: module(torch.zeros(shape), None if hx is None else tuple(map(torch.tensor, hx)))
    )
    with pytest.raises(error_type, match=f"^{re.escape(message)}$"):
        model(np.zeros(shape, np.float32), hx)


def test_zero_length_entry_in_seq_lengths_is_rejected():
    """torch's pack_padded_sequence refuses lengths <= 0; so does seq_lengths, naming it."""
    model = jaxlstm.LSTM(3, 4)
    with pytest.raises(ValueError, match=r"seq_lengths must lie in \[1, 5\].*0 at index 1"):
        model(np.zeros((5, 2, 3), np.float32), seq_lengths=np.array([5, 0]))
    with pytest.raises(RuntimeError, match="greater than 0"):
        torch.nn.utils.rnn.pack_padded_sequence(torch.zeros(5, 2, 3), torch.tensor([5, 0]),
                                                enforce_sorted=False)

