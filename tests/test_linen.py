"""Flax Linen modules: torch's parameters, torch's numbers, the NNX modules' numbers, porting."""

import warnings

import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxlstm
from jaxlstm import linen

RNG = np.random.default_rng(0)
TOL = 2e-6


def randn(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def t2n(tensor):
    return tensor.detach().numpy()


CONFIGS = [
    dict(),
    dict(num_layers=2, bidirectional=True, batch_first=True),
    dict(num_layers=3, proj_size=2, bias=False),
    dict(num_layers=2, bidirectional=True, proj_size=3, batch_first=True),
]


@pytest.mark.parametrize("kwargs", CONFIGS[::3], ids=str)
def test_params_have_torch_names_shapes_and_init(kwargs):
    module = linen.LSTM(4, 6, **kwargs)
    x = jnp.zeros((2, 5, 4))
    params = module.init(jax.random.key(0), x)["params"]
    reference = torch.nn.LSTM(4, 6, **kwargs).state_dict()
    assert {k: v.shape for k, v in params.items()} == {k: tuple(v.shape) for k, v in
                                                        reference.items()}
    assert all(v.dtype == jnp.float32 for v in params.values())
    bound = 1 / np.sqrt(6)
    values = np.concatenate([np.ravel(v) for v in params.values()])
    assert np.abs(values).max() <= bound and np.abs(values).max() > 0.9 * bound
    assert np.unique(values).size == values.size  # every parameter drawn independently


@pytest.mark.parametrize("kwargs", CONFIGS[2:], ids=str)
def test_linen_matches_torch_and_nnx_on_the_same_weights(kwargs):
    torch.manual_seed(1)
    reference = torch.nn.LSTM(3, 5, **kwargs)
    module, variables = linen.from_torch(reference)
    nnx_model = jaxlstm.from_torch(reference)
    batch_first = kwargs.get("batch_first", False)
    x = randn(2, 7, 3) if batch_first else randn(7, 2, 3)
    layers = (2 if kwargs.get("bidirectional") else 1) * kwargs.get("num_layers", 1)
    h0 = randn(layers, 2, kwargs.get("proj_size") or 5)
    c0 = randn(layers, 2, 5)

    out, (h_n, c_n) = module.apply(variables, x, (h0, c0))
    t_out, (t_h, t_c) = reference(torch.from_numpy(x), (torch.from_numpy(h0), torch.from_numpy(c0)))
    np.testing.assert_allclose(out, t2n(t_out), atol=TOL)
    np.testing.assert_allclose(h_n, t2n(t_h), atol=TOL)
    np.testing.assert_allclose(c_n, t2n(t_c), atol=TOL)
    # One functional core behind both APIs: identical numbers, not merely close ones.
    for a, b in zip(jax.tree.leaves((out, h_n, c_n)),
                    jax.tree.leaves(nnx_model(x, (h0, c0)))):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("batch_first", [False, True])
def test_seq_lengths_match_a_torch_packed_sequence(batch_first):
    torch.manual_seed(2)
    reference = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=batch_first)
    module, variables = linen.from_torch(reference)
    lengths = np.array([5, 2, 4])
    x = randn(3, 5, 3) if batch_first else randn(5, 3, 3)
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        torch.from_numpy(x), torch.from_numpy(lengths), batch_first=batch_first,
        enforce_sorted=False,
    )
    t_out, (t_h, t_c) = reference(packed)
    t_out, _ = torch.nn.utils.rnn.pad_packed_sequence(t_out, batch_first=batch_first,
                                                      total_length=5)
    out, (h_n, c_n) = jax.jit(module.apply)(variables, x, seq_lengths=lengths)
    np.testing.assert_allclose(out, t2n(t_out), atol=TOL)
    np.testing.assert_allclose(h_n, t2n(t_h), atol=TOL)
    np.testing.assert_allclose(c_n, t2n(t_c), atol=TOL)


def test_gradients_match_torch():
    torch.manual_seed(3)
    reference = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2)
    module, variables = linen.from_torch(reference)
    x = randn(6, 2, 3)
    t_out, _ = reference(torch.from_numpy(x))
    (t_out**2).sum().backward()

    grads = jax.grad(lambda v: jnp.sum(module.apply(v, x)[0] ** 2))(variables)["params"]
    assert set(grads) == set(dict(reference.named_parameters()))
    for name, param in reference.named_parameters():
        np.testing.assert_allclose(grads[name], t2n(param.grad), atol=1e-5, err_msg=name)


@pytest.mark.parametrize("bias", [True, False])
def test_cell_matches_torch_batched_and_unbatched(bias):
    torch.manual_seed(4)
    reference = torch.nn.LSTMCell(3, 5, bias=bias)
    module, variables = linen.from_torch(reference)
    assert isinstance(module, linen.LSTMCell) and module.config.bias is bias
    fresh = linen.LSTMCell(3, 5, bias=bias).init(jax.random.key(0), jnp.zeros(3))["params"]
    assert {k: v.shape for k, v in fresh.items()} == {
        k: tuple(v.shape) for k, v in reference.state_dict().items()
    }
    x, h, c = randn(2, 3), randn(2, 5), randn(2, 5)
    t_h, t_c = reference(torch.from_numpy(x), (torch.from_numpy(h), torch.from_numpy(c)))
    h1, c1 = module.apply(variables, x, (h, c))
    np.testing.assert_allclose(h1, t2n(t_h), atol=TOL)
    np.testing.assert_allclose(c1, t2n(t_c), atol=TOL)
    t_h, t_c = reference(torch.from_numpy(x[0]))
    h1, c1 = module.apply(variables, x[0])
    assert h1.shape == (5,)
    np.testing.assert_allclose(h1, t2n(t_h), atol=TOL)
    np.testing.assert_allclose(c1, t2n(t_c), atol=TOL)


def test_bilstm_is_lstm_bidirectional_with_nnx_argument_order():
    bi = linen.BiLSTM(3, 4, 2, True, True)  # input, hidden, layers, bias, batch_first
    assert bi.config == jaxlstm.LSTMConfig.create(3, 4, 2, True, True, bidirectional=True)
    x = randn(2, 5, 3)
    variables = bi.init(jax.random.key(0), x)
    uni_twin = linen.LSTM(3, 4, 2, True, True, bidirectional=True)
    np.testing.assert_array_equal(bi.apply(variables, x)[0], uni_twin.apply(variables, x)[0])
    with pytest.raises(TypeError):
        linen.BiLSTM(3, 4, bidirectional=False)


def test_torch_round_trip_is_exact_and_loads_strictly():
    module = linen.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2)
    variables = module.init(jax.random.key(5), jnp.zeros((4, 1, 3)))
    state = linen.to_torch(variables)
    reference = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2)
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    again = linen.params_from_torch(reference)
    assert set(again) == {"params"}
    for name, value in variables["params"].items():
        np.testing.assert_array_equal(again["params"][name], value)
    # to_torch accepts the bare params dict too (e.g. the subtree of a larger model).
    assert linen.to_torch(variables["params"]).keys() == state.keys()


def test_from_torch_carries_settings_and_mode():
    reference = torch.nn.LSTM(3, 4, num_layers=2, batch_first=True, dropout=0.25).eval()
    module, _ = linen.from_torch(reference)
    assert module.config == jaxlstm.LSTMConfig.create(3, 4, 2, batch_first=True, dropout=0.25)
    assert module.deterministic is True
    module, _ = linen.from_torch(reference.train())
    assert module.deterministic is False
    module, _ = linen.from_torch(reference.state_dict(), batch_first=False)
    assert module.config.dropout == 0.0 and not module.config.batch_first
    assert module.deterministic is None


def test_module_inside_a_larger_linen_model():
    class Model(nn.Module):
        @nn.compact
        def __call__(self, x, lengths):
            out, _ = linen.BiLSTM(3, 4, batch_first=True, name="lstm")(x, seq_lengths=lengths)
            return nn.Dense(1, name="head")(out)

    x, lengths = randn(2, 6, 3), jnp.array([6, 3])
    variables = Model().init(jax.random.key(0), x, lengths)
    assert set(variables["params"]) == {"lstm", "head"}
    reference = torch.nn.LSTM(3, 4, bidirectional=True)
    reference.load_state_dict(
        {k: torch.from_numpy(v) for k, v in linen.to_torch(variables["params"]["lstm"]).items()},
        strict=True,
    )
    loss = jax.jit(jax.grad(lambda v: jnp.sum(Model().apply(v, x, lengths) ** 2)))
    grads = loss(variables)["params"]["lstm"]
    assert set(grads) == set(reference.state_dict())
    with pytest.raises(ValueError, match=r"submodules \['head', 'lstm'\].*variables\['params'\]"):
        linen.to_torch({"params": dict(sorted(variables["params"].items()))})


def test_dropout_needs_a_mode_and_an_rng():
    module = linen.LSTM(3, 4, num_layers=3, dropout=0.5)
    x = randn(5, 2, 3)
    variables = module.init(jax.random.key(0), x)  # init needs neither mode nor rng
    with pytest.raises(ValueError, match="needs deterministic=True .* or deterministic=False"):
        module.apply(variables, x)
    with pytest.raises(ValueError, match=r"needs a 'dropout' rng: apply\(\.\.\., rngs="):
        module.apply(variables, x, deterministic=False)

    evaluation = module.apply(variables, x, deterministic=True)[0]
    reference = torch.nn.LSTM(3, 4, num_layers=3, dropout=0.5).eval()
    reference.load_state_dict(
        {k: torch.from_numpy(v) for k, v in linen.to_torch(variables).items()}
    )
    np.testing.assert_allclose(evaluation, t2n(reference(torch.from_numpy(x))[0]), atol=TOL)

    def train(key):
        return module.apply(variables, x, deterministic=False, rngs={"dropout": key})[0]

    a, b = train(jax.random.key(1)), train(jax.random.key(2))
    assert np.abs(a - evaluation).max() > 1e-3 and np.abs(a - b).max() > 1e-3
    np.testing.assert_array_equal(a, train(jax.random.key(1)))
    # The attribute sets the mode too, and the call argument overrides it.
    trained = module.clone(deterministic=False)
    np.testing.assert_array_equal(
        trained.apply(variables, x, rngs={"dropout": jax.random.key(1)})[0], a
    )
    np.testing.assert_array_equal(trained.apply(variables, x, deterministic=True)[0], evaluation)


def test_dropout_is_inactive_for_one_layer_or_rate_zero():
    x = randn(5, 2, 3)
    for module in (linen.LSTM(3, 4, num_layers=2), linen.LSTM(3, 4)):
        variables = module.init(jax.random.key(0), x)
        np.testing.assert_array_equal(
            module.apply(variables, x)[0], module.apply(variables, x, deterministic=False)[0]
        )


@pytest.mark.parametrize(
    "args, kwargs",
    [
        ((3, 0), {}),
        ((3, 4.0), {}),
        ((3, 4), dict(num_layers=0)),
        ((3, 4), dict(proj_size=4)),
        ((3, 4), dict(proj_size=-1)),
        ((3, 4), dict(dropout=1.5)),
    ],
    ids=str,
)
def test_constructor_errors_are_torchs(args, kwargs):
    linen.LSTM(3, 4)  # a valid twin first: validation must not be cached across types (4 == 4.0)
    with pytest.raises(Exception) as expected:
        torch.nn.LSTM(*args, **kwargs)
    with pytest.raises(type(expected.value)) as got:
        linen.LSTM(*args, **kwargs)
    assert str(got.value) == str(expected.value)


def test_dropout_with_one_layer_warns_like_torch():
    linen._lstm_config.cache_clear()  # validation (and its warning) runs once per configuration
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.nn.LSTM(3, 5, dropout=0.2)
        linen.LSTM(3, 5, dropout=0.2)
    messages = [str(w.message) for w in caught if "dropout option" in str(w.message)]
    assert len(messages) == 2 and messages[0] == messages[1]


def test_forward_errors_are_torchs():
    module = linen.LSTM(3, 4)
    variables = module.init(jax.random.key(0), jnp.zeros((2, 1, 3)))
    with pytest.raises(RuntimeError, match="input.size\\(-1\\) must be equal to input_size. "
                                           "Expected 3, got 2"):
        module.apply(variables, jnp.zeros((2, 1, 2)))
    # Flax checks stored parameters against the shapes torch's layout asks for.
    with pytest.raises(flax.errors.ScopeParamShapeError, match='"weight_hh_l0".*shape \\(16, 4\\)'):
        module.apply({"params": {**variables["params"], "weight_hh_l0": jnp.zeros((16, 5))}},
                     jnp.zeros((2, 1, 3)))


def test_porting_errors_name_the_keys():
    state = torch.nn.LSTM(3, 4, num_layers=2).state_dict()
    del state["bias_hh_l1"]
    with pytest.raises(ValueError, match="missing key 'bias_hh_l1'"):
        linen.params_from_torch(state)
    with pytest.raises(TypeError, match="expected Linen variables"):
        linen.to_torch([1, 2])
    with pytest.raises(ValueError, match="LSTMCell takes no batch_first"):
        linen.from_torch(torch.nn.LSTMCell(3, 4), batch_first=True)
