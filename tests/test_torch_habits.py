"""What a torch user does with an ``nn.LSTM`` works on ours: attributes, ``all_weights``,
``rnn.dropout = p``, dtype errors, fresh weights without a seed, and the checks and RNG
patterns that matter under ``jit``."""

import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import jaxlstm
from jaxlstm import linen

LSTM_ARGS = dict(input_size=3, hidden_size=5, num_layers=2, bias=False, batch_first=True,
                 dropout=0.25, bidirectional=True, proj_size=2)


def test_constructor_arguments_are_attributes_like_torch():
    theirs = torch.nn.LSTM(**LSTM_ARGS)
    for ours in (jaxlstm.LSTM(**LSTM_ARGS), jaxlstm.from_torch(theirs)):
        for name in LSTM_ARGS:
            assert getattr(ours, name) == getattr(theirs, name), name
    cell = jaxlstm.LSTMCell(3, 5, bias=False)
    theirs = torch.nn.LSTMCell(3, 5, bias=False)
    assert (cell.input_size, cell.hidden_size, cell.bias) == (3, 5, False)
    assert (theirs.input_size, theirs.hidden_size, theirs.bias) == (3, 5, False)
    bi = jaxlstm.BiLSTM(3, 5)
    assert bi.bidirectional is True and bi.num_layers == 1


@pytest.mark.parametrize("name", [n for n in LSTM_ARGS if n != "dropout"])
def test_sizes_and_flags_are_read_only_with_an_error_naming_the_fix(name):
    model = jaxlstm.LSTM(3, 5, num_layers=2, proj_size=2)
    before = getattr(model, name)
    with pytest.raises(AttributeError, match=rf"^LSTM\.{name} is read-only: .* build a new "
                                             rf"jaxlstm\.LSTM\(\.\.\., {name}=7\)"):
        setattr(model, name, 7)
    assert getattr(model, name) == before


def test_cell_attributes_are_read_only():
    cell = jaxlstm.LSTMCell(3, 5)
    with pytest.raises(AttributeError, match=r"^LSTMCell\.hidden_size is read-only"):
        cell.hidden_size = 6


def test_all_weights_are_torchs_per_layer_and_direction():
    theirs = torch.nn.LSTM(**LSTM_ARGS)
    ours = jaxlstm.from_torch(theirs)
    assert len(ours.all_weights) == len(theirs.all_weights) == 4
    for group, torch_group in zip(ours.all_weights, theirs.all_weights):
        assert all(isinstance(p, nnx.Param) for p in group)
        assert len(group) == len(torch_group)
        for param, torch_param in zip(group, torch_group):
            np.testing.assert_array_equal(param[...], torch_param.detach().numpy())


def test_dropout_raised_after_construction_acts_in_training():
    """torch's ``rnn.dropout = p``: a module built with dropout=0 then trains with dropout."""
    torch.manual_seed(0)
    model = jaxlstm.from_torch(torch.nn.LSTM(3, 6, num_layers=2))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((7, 2, 3)), jnp.float32)
    model.eval()
    plain = model(x)[0]
    model.dropout = 0.5
    assert model.dropout == 0.5 and model.config.dropout == 0.5
    np.testing.assert_array_equal(model(x)[0], plain)  # eval mode: no dropout
    model.train()
    first, second = model(x)[0], model(x)[0]
    assert not np.allclose(first, plain) and not np.allclose(first, second)
    model.dropout = 0.0
    np.testing.assert_array_equal(model(x)[0], plain)  # no dropout left, even in training


@pytest.mark.parametrize("value", [1.5, -0.1, True, "0.5"], ids=repr)
def test_dropout_setter_validates_like_torchs_constructor(value):
    with pytest.raises(ValueError) as theirs:
        torch.nn.LSTM(3, 4, 2, dropout=value)
    model = jaxlstm.LSTM(3, 4, 2)
    with pytest.raises(ValueError, match=f"^{re.escape(str(theirs.value))}$"):
        model.dropout = value
    assert model.dropout == 0.0


def test_modules_built_without_rngs_get_fresh_weights_and_seeded_ones_repeat():
    first, second = jaxlstm.LSTM(3, 4), jaxlstm.LSTM(3, 4)
    assert not np.allclose(first.weight_ih_l0[...], second.weight_ih_l0[...])
    cells = jaxlstm.LSTMCell(3, 4), jaxlstm.LSTMCell(3, 4)
    assert not np.allclose(cells[0].weight_hh[...], cells[1].weight_hh[...])
    seeded = [jaxlstm.LSTM(3, 4, rngs=nnx.Rngs(7)) for _ in range(2)]
    np.testing.assert_array_equal(seeded[0].weight_ih_l0[...], seeded[1].weight_ih_l0[...])


def _torch_forward_error(module, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(Exception) as caught:  # noqa: B017 - whatever torch raises
            module(*args)
    return caught.value


def _states(dtypes, layers=1, batch=2, hidden=4):
    return tuple(np.zeros((layers, batch, hidden), d) for d in dtypes)


@pytest.mark.parametrize("native", [False, True], ids=["oneDNN", "native"])
def test_dtype_mismatch_raises_torchs_error(native):
    theirs = torch.nn.LSTM(3, 4)
    x64 = np.zeros((5, 2, 3), np.float64)
    flags = torch.backends.mkldnn.flags(enabled=not native)
    with jax.enable_x64(True), flags:
        ours = jaxlstm.from_torch(theirs)
        # The input: torch's ValueError, torch's first sentence, then how to fix it here.
        expected = _torch_forward_error(theirs, torch.from_numpy(x64))
        assert type(expected) is ValueError
        first_sentence = str(expected).split(". ")[0].replace("torch.", "") + "."
        assert first_sentence == "RNN input dtype (float64) does not match weight dtype (float32)."
        with pytest.raises(ValueError, match=rf"^{re.escape(first_sentence)} Convert input: "
                                             r"x\.astype\(jnp\.float32\), or convert model: "
                                             r"build it with param_dtype=jnp\.float64"):
            ours(x64)
        # h_0 or c_0: torch raises RuntimeError (from its kernels); ours names the state.
        x = np.zeros((5, 2, 3), np.float32)
        for index, name in enumerate(["h_0", "c_0"]):
            dtypes = [np.float32, np.float32]
            dtypes[index] = np.float64
            hx = _states(dtypes)
            expected = _torch_forward_error(theirs, torch.from_numpy(x),
                                            tuple(map(torch.from_numpy, hx)))
            assert type(expected) is RuntimeError
            with pytest.raises(RuntimeError, match=rf"^hx\[{index}\] \({name}\) dtype \(float64\) "
                                                   r"does not match weight dtype \(float32\); "
                                                   rf"convert it: {name}\.astype\(jnp\.float32\)"):
                ours(x, hx)


def test_cell_dtype_mismatch_raises_torchs_runtime_error():
    theirs = torch.nn.LSTMCell(3, 4)
    with jax.enable_x64(True):
        ours = jaxlstm.from_torch(theirs)
        x64 = np.zeros((2, 3), np.float64)
        assert type(_torch_forward_error(theirs, torch.from_numpy(x64))) is RuntimeError
        with pytest.raises(RuntimeError, match=r"^LSTMCell input dtype \(float64\) does not "
                                               r"match weight dtype \(float32\)"):
            ours(x64)
        hx = (np.zeros((2, 4), np.float32), np.zeros((2, 4), np.float64))
        with pytest.raises(RuntimeError, match=r"^hx\[1\] \(c_0\) dtype \(float64\)"):
            ours(np.zeros((2, 3), np.float32), hx)


def test_linen_dtype_mismatch_raises_the_same_error():
    with jax.enable_x64(True):
        module = linen.LSTM(3, 4)
        variables = module.init(jax.random.key(0), jnp.zeros((5, 2, 3), jnp.float32))
        with pytest.raises(ValueError, match=r"^RNN input dtype \(float64\) does not match"):
            module.apply(variables, jnp.zeros((5, 2, 3), jnp.float64))


def test_explicit_compute_dtype_opts_into_another_dtype():
    torch.manual_seed(0)
    theirs = torch.nn.LSTM(3, 4)
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    with jax.enable_x64(True):
        ours = jaxlstm.from_torch(theirs.double(), param_dtype=jnp.float32, dtype=jnp.float64)
        out, (h_n, _) = ours(x, _states([np.float32, np.float64]))
        assert out.dtype == h_n.dtype == jnp.float64
    expected = theirs(torch.from_numpy(x))[0].detach().numpy()
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)  # float32 weights, f64 math


def test_float64_numpy_input_is_float32_without_x64():
    """Without ``jax_enable_x64`` JAX has no float64: numpy float64 input is float32 input."""
    model = jaxlstm.LSTM(3, 4, rngs=nnx.Rngs(0))
    out, _ = model(np.zeros((5, 2, 3), np.float64))
    assert out.dtype == jnp.float32


# --- under jit -------------------------------------------------------------------------------

BAD_LENGTHS = np.array([3, 6])  # T = 5


def _lstm_and_input(batch_first=False):
    model = jaxlstm.LSTM(3, 4, batch_first=batch_first, rngs=nnx.Rngs(0))
    return model, jnp.zeros((2, 5, 3) if batch_first else (5, 2, 3), jnp.float32)


def test_traced_lengths_out_of_range_raise_under_jax_jit_with_check_lengths():
    model, x = _lstm_and_input()
    graphdef, state = nnx.split(model)

    def run(state, x, lengths, check):
        return nnx.merge(graphdef, state)(x, seq_lengths=lengths, check_lengths=check)[0]

    unchecked = jax.jit(run, static_argnums=3)
    unchecked(state, x, BAD_LENGTHS, False).block_until_ready()  # silently clipped: the pitfall
    with pytest.raises(ValueError, match=r"seq_lengths must lie in \[1, 5\]"):  # eager
        run(state, x, BAD_LENGTHS, False)
    with pytest.raises(jax.errors.JaxRuntimeError,
                       match=r"seq_lengths must lie in \[1, 5\] .*; got 6 at index 1"):
        unchecked(state, x, BAD_LENGTHS, True).block_until_ready()
    good = unchecked(state, x, np.array([3, 5]), True)
    np.testing.assert_array_equal(good, unchecked(state, x, np.array([3, 5]), False))


def test_traced_lengths_out_of_range_raise_under_nnx_jit_batch_first():
    model, x = _lstm_and_input(batch_first=True)

    @nnx.jit
    def run(model, x, lengths):
        return model(x, seq_lengths=lengths, check_lengths=True)[0]

    run(model, x, np.array([5, 1])).block_until_ready()
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"got 0 at index 1"):
        run(model, x, np.array([5, 0])).block_until_ready()


def test_linen_check_lengths_under_jit():
    module = linen.LSTM(3, 4)
    x = jnp.zeros((5, 2, 3), jnp.float32)
    variables = module.init(jax.random.key(0), x)
    run = jax.jit(lambda v, lengths: module.apply(v, x, seq_lengths=lengths, check_lengths=True))
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"seq_lengths must lie in \[1, 5\]"):
        jax.block_until_ready(run(variables, BAD_LENGTHS))


def _dropout_model():
    model = jaxlstm.LSTM(3, 8, num_layers=2, dropout=0.5, rngs=nnx.Rngs(0))
    return model, jnp.ones((4, 2, 3), jnp.float32)


def test_nnx_jit_draws_a_new_dropout_mask_each_call():
    model, x = _dropout_model()
    step = nnx.jit(lambda model, x: model(x)[0])
    first, second = step(model, x), step(model, x)
    assert not np.allclose(first, second)


def test_jax_jit_over_split_needs_the_updated_rng_state_back():
    model, x = _dropout_model()
    graphdef, state = nnx.split(model)

    @jax.jit
    def step(state, x):
        model = nnx.merge(graphdef, state)
        out = model(x)[0]
        return out, nnx.state(model)  # the RNG state after the draw

    # The pitfall: feeding the same state in twice repeats the mask.
    np.testing.assert_array_equal(step(state, x)[0], step(state, x)[0])
    # The pattern: carry the returned state into the next call.
    first, state = step(state, x)
    second, state = step(state, x)
    assert not np.allclose(first, second)
