"""torch <-> jaxlstm weight porting: round trips, inference of the config, clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import jaxlstm
from jaxlstm.porting import to_torch_module

CONFIGS = [
    dict(),
    dict(num_layers=3, bidirectional=True, proj_size=2, batch_first=True),
    dict(num_layers=2, bias=False, dropout=0.25),
]


@pytest.mark.parametrize("kwargs", CONFIGS, ids=str)
def test_torch_to_jax_to_torch_round_trip_is_exact(kwargs):
    module = torch.nn.LSTM(4, 6, **kwargs)
    model = jaxlstm.from_torch(module)
    assert model.config == jaxlstm.LSTMConfig.create(4, 6, **kwargs)
    state = jaxlstm.to_torch(model)
    assert all(isinstance(v, np.ndarray) for v in state.values())
    fresh = torch.nn.LSTM(4, 6, **kwargs)
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    for name, value in module.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[name]), name


def test_jax_to_torch_module_reproduces_outputs():
    model = jaxlstm.LSTM(3, 5, num_layers=2, bidirectional=True, rngs=nnx.Rngs(3))
    model.eval()
    module = to_torch_module(model)
    assert not module.training
    x = np.random.default_rng(0).standard_normal((6, 2, 3)).astype(np.float32)
    out, (h_n, c_n) = model(x)
    t_out, (t_h, t_c) = module(torch.from_numpy(x))
    np.testing.assert_allclose(out, t_out.detach().numpy(), atol=2e-6)
    np.testing.assert_allclose(c_n, t_c.detach().numpy(), atol=2e-6)


def test_from_state_dict_of_numpy_arrays_and_cell():
    module = torch.nn.LSTMCell(3, 5, bias=False)
    state = {k: v.numpy() for k, v in module.state_dict().items()}
    cell = jaxlstm.from_torch(state)
    assert isinstance(cell, jaxlstm.LSTMCell)
    assert cell.config == jaxlstm.LSTMCellConfig(3, 5, bias=False)
    x = np.ones((2, 3), np.float32)
    np.testing.assert_allclose(cell(x)[1], module(torch.from_numpy(x))[1].detach(), atol=1e-6)


def test_module_settings_carry_over_and_can_be_overridden():
    module = torch.nn.LSTM(3, 4, num_layers=2, batch_first=True, dropout=0.3).eval()
    model = jaxlstm.from_torch(module)
    assert model.config.batch_first and model.config.dropout == 0.3 and model.deterministic
    model = jaxlstm.from_torch(module.state_dict(), batch_first=True)
    assert model.config.batch_first and model.config.dropout == 0.0 and not model.deterministic


def test_every_bad_key_is_named():
    state = dict(torch.nn.LSTM(3, 4, num_layers=2).state_dict())
    del state["bias_hh_l1"]
    state["weight_hh_l0"] = torch.zeros(16, 5)
    state["extra.weight"] = torch.zeros(2)
    with pytest.raises(ValueError) as error:
        jaxlstm.from_torch(state)
    message = str(error.value)
    assert "missing key 'bias_hh_l1' (expected shape (16,))" in message
    assert "wrong shape for 'weight_hh_l0': expected (16, 4), got (16, 5)" in message
    assert "unexpected key 'extra.weight' (shape (2,))" in message


def test_not_an_lstm():
    with pytest.raises(ValueError, match="no LSTM weights found.*'fc.weight'"):
        jaxlstm.from_torch({"fc.weight": np.zeros((2, 2))})
    with pytest.raises(ValueError, match="4 \\* hidden_size"):
        jaxlstm.from_torch({"weight_ih_l0": np.zeros((10, 2)), "weight_hh_l0": np.zeros((10, 2))})
    with pytest.raises(TypeError, match="state_dict"):
        jaxlstm.from_torch([1, 2])


def test_float64_weights_need_x64_or_an_explicit_dtype():
    module = torch.nn.LSTM(3, 4).double()
    with pytest.raises(ValueError, match="jax_enable_x64"):
        jaxlstm.from_torch(module)
    model = jaxlstm.from_torch(module, param_dtype=jnp.float32)
    assert model.weight_ih_l0[...].dtype == jnp.float32
    with jax.enable_x64(True):
        model = jaxlstm.from_torch(module)
        assert model.weight_ih_l0[...].dtype == jnp.float64
        x = np.random.default_rng(0).standard_normal((4, 2, 3))
        out, _ = model(x)
        ref, _ = module(torch.from_numpy(x))
        np.testing.assert_allclose(out, ref.detach().numpy(), rtol=0, atol=1e-13)


def test_mixed_dtypes_are_refused():
    state = dict(torch.nn.LSTM(3, 4).state_dict())
    state["bias_ih_l0"] = state["bias_ih_l0"].half()
    with pytest.raises(ValueError, match="mix dtypes"):
        jaxlstm.from_torch(state)


def test_load_params_checks_against_the_model():
    model = jaxlstm.LSTM(3, 4)
    with pytest.raises(ValueError, match="unexpected key 'weight_hr_l0'"):
        jaxlstm.load_params(model, {**jaxlstm.to_torch(model), "weight_hr_l0": np.zeros(1)})
