"""Every bad argument raises what torch raises, with torch's message, before any computation."""

import re
import warnings

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxlstm


def torch_error(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fn()
        except Exception as error:  # noqa: BLE001 - we want whatever torch raises
            return type(error), str(error)
    raise AssertionError("torch accepted the input")


def assert_same_error(torch_fn, jax_fn):
    error_type, message = torch_error(torch_fn)
    with pytest.raises(error_type, match=f"^{re.escape(message)}$"):
        jax_fn()


CONSTRUCTOR_CASES = [
    dict(input_size=3, hidden_size=4.0),
    dict(input_size=3, hidden_size=0),
    dict(input_size=3, hidden_size=-2),
    dict(input_size=0, hidden_size=4),
    dict(input_size=3.0, hidden_size=4),
    dict(input_size=3, hidden_size=4, num_layers=0),
    dict(input_size=3, hidden_size=4, dropout=1.5),
    dict(input_size=3, hidden_size=4, dropout=-0.1),
    dict(input_size=3, hidden_size=4, dropout=True),
    dict(input_size=3, hidden_size=4, dropout="0.5"),
    dict(input_size=3, hidden_size=4, proj_size=-1),
    dict(input_size=3, hidden_size=4, proj_size=4),
    dict(input_size=3, hidden_size=4, proj_size=7),
    dict(input_size=3, hidden_size=5, bias=0),
    dict(input_size=3, hidden_size=5, bias="True"),
    dict(input_size=3, hidden_size=5, batch_first=1),
    dict(input_size=3, hidden_size=5, batch_first=np.True_),
    dict(input_size=3, hidden_size=5, bias=None, batch_first=1),
]


@pytest.mark.parametrize("kwargs", CONSTRUCTOR_CASES, ids=str)
def test_constructor_errors_match_torch(kwargs):
    assert_same_error(lambda: torch.nn.LSTM(**kwargs), lambda: jaxlstm.LSTM(**kwargs))


def test_non_int_num_layers_and_proj_size_name_the_argument():
    with pytest.raises(TypeError, match="^num_layers should be of type int, got: float$"):
        jaxlstm.LSTM(3, 4, num_layers=2.0)
    with pytest.raises(TypeError, match="^proj_size should be of type int, got: float$"):
        jaxlstm.LSTM(3, 4, proj_size=2.0)


def test_single_layer_dropout_warns_like_torch():
    with pytest.warns(UserWarning) as ours:
        jaxlstm.LSTM(3, 4, dropout=0.5)
    with pytest.warns(UserWarning) as theirs:
        torch.nn.LSTM(3, 4, dropout=0.5)
    assert str(ours[0].message) == str(theirs[0].message)


def test_cell_constructor_errors():
    # torch's LSTMCell fails late with an opaque message here; ours names the argument.
    assert torch_error(lambda: torch.nn.LSTMCell(3, 4.0))[0] is TypeError
    with pytest.raises(TypeError, match="^hidden_size should be of type int, got: float$"):
        jaxlstm.LSTMCell(3, 4.0)
    with pytest.raises(ValueError, match="^hidden_size must be greater than zero$"):
        jaxlstm.LSTMCell(3, 0)


def test_flags_torch_accepts_are_accepted():
    # torch checks bias and batch_first exactly, but neither bidirectional nor LSTMCell's bias.
    for make in (torch.nn.LSTM, jaxlstm.LSTM):
        assert make(3, 5, bidirectional=1).bidirectional == 1
    torch.nn.LSTMCell(3, 5, bias=0)
    assert not jaxlstm.LSTMCell(3, 5, bias=0).params().keys() & {"bias_ih", "bias_hh"}


def test_bilstm_rejects_one_direction():
    with pytest.raises(ValueError, match="always bidirectional"):
        jaxlstm.BiLSTM(3, 4, bidirectional=False)


def zeros(*shape):
    return np.zeros(shape, np.float32)


FORWARD_CASES = {
    "4-D input": (zeros(2, 2, 2, 3), None),
    "1-D input": (zeros(3), None),
    "wrong input_size": (zeros(2, 2, 5), None),
    "wrong input_size unbatched": (zeros(5, 7), None),
    "h0 wrong layers": (zeros(5, 2, 3), (zeros(3, 2, 4), zeros(4, 2, 4))),
    "c0 wrong batch": (zeros(5, 2, 3), (zeros(4, 2, 4), zeros(4, 3, 4))),
    "h0 wrong size": (zeros(5, 2, 3), (zeros(4, 2, 5), zeros(4, 2, 4))),
    "2-D hx for batched": (zeros(5, 2, 3), (zeros(4, 4), zeros(4, 2, 4))),
    "3-D hx for unbatched": (zeros(5, 3), (zeros(4, 2, 4), zeros(4, 4))),
    "unbatched hx wrong size": (zeros(5, 3), (zeros(4, 5), zeros(4, 4))),
    "zero-length sequence": (zeros(0, 2, 3), None),
}


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("name", FORWARD_CASES)
def test_forward_errors_match_torch(name, batch_first):
    x, hx = FORWARD_CASES[name]
    if batch_first and x.ndim == 3:
        x = np.swapaxes(x, 0, 1)
    module = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=batch_first)
    model = jaxlstm.from_torch(module)
    torch_hx = None if hx is None else tuple(torch.from_numpy(a) for a in hx)
    assert_same_error(
        lambda: module(torch.from_numpy(x), torch_hx),
        lambda: model(jnp.asarray(x), None if hx is None else tuple(map(jnp.asarray, hx))),
    )


def test_projection_hidden_size_message():
    module = torch.nn.LSTM(3, 4, proj_size=2)
    model = jaxlstm.from_torch(module)
    x, hx = zeros(5, 2, 3), (zeros(1, 2, 4), zeros(1, 2, 4))
    assert_same_error(
        lambda: module(torch.from_numpy(x), tuple(map(torch.from_numpy, hx))),
        lambda: model(x, hx),
    )


CELL_CASES = {
    "3-D input": (zeros(2, 2, 3), None),
    "wrong input_size": (zeros(2, 5), None),
    "3-D hx": (zeros(2, 3), (zeros(2, 2, 4), zeros(2, 4))),
    "h wrong size": (zeros(2, 3), (zeros(2, 5), zeros(2, 4))),
    "c wrong size": (zeros(2, 3), (zeros(2, 4), zeros(2, 5))),
    "batch mismatch": (zeros(2, 3), (zeros(3, 4), zeros(3, 4))),
    "2-D hx for unbatched": (zeros(3), (zeros(2, 4), zeros(2, 4))),
}


@pytest.mark.parametrize("name", CELL_CASES)
def test_cell_forward_errors_match_torch(name):
    x, hx = CELL_CASES[name]
    module = torch.nn.LSTMCell(3, 4)
    cell = jaxlstm.from_torch(module)
    torch_hx = None if hx is None else tuple(torch.from_numpy(a) for a in hx)
    assert_same_error(lambda: module(torch.from_numpy(x), torch_hx), lambda: cell(x, hx))


def test_hx_must_be_a_pair():
    model = jaxlstm.LSTM(3, 4)
    with pytest.raises(TypeError, match=r"hx must be a tuple \(h, c\)"):
        model(zeros(5, 2, 3), zeros(1, 2, 4))


def test_errors_come_before_any_computation(monkeypatch):
    from jaxlstm.functional import api

    def fail(*args, **kwargs):
        raise AssertionError("computation started")

    monkeypatch.setattr(api, "time_major", fail)
    with pytest.raises(RuntimeError, match="input_size"):
        jaxlstm.LSTM(3, 4)(zeros(5, 2, 7))


class TestSeqLengths:
    model = jaxlstm.LSTM(3, 4)
    x = zeros(6, 3, 3)

    def test_float_lengths(self):
        with pytest.raises(TypeError, match="seq_lengths must be an integer array, got dtype"):
            self.model(self.x, seq_lengths=np.array([1.0, 2.0, 3.0]))

    def test_wrong_shape(self):
        match = r"seq_lengths must have shape \(3,\).*got shape \(2,\)"
        with pytest.raises(ValueError, match=match):
            self.model(self.x, seq_lengths=np.array([1, 2]))

    def test_out_of_range_values_are_named(self):
        with pytest.raises(ValueError, match=r"\[1, 6\].*0 at index 1, 7 at index 2"):
            self.model(self.x, seq_lengths=np.array([3, 0, 7]))

    def test_unbatched_accepts_scalar(self):
        out, _ = self.model(self.x[:, 0], seq_lengths=np.array(4))
        assert out.shape == (6, 4)
        assert np.all(np.asarray(out[4:]) == 0)


def test_dropout_training_needs_a_key():
    from jaxlstm import functional

    model = jaxlstm.LSTM(3, 4, num_layers=2, dropout=0.5)
    with pytest.raises(ValueError, match="dropout_rng is required"):
        functional.lstm(model.params(), zeros(5, 2, 3), config=model.config, deterministic=False)
