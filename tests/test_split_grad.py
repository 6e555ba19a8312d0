"""``jax.grad`` over ``nnx.split(model)``'s state, for every way of building a module.

A module whose dropout cannot act holds its weights and nothing else, so the whole state is
differentiable; with dropout, the documented pattern splits the weights off first.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import jaxlstm
from jaxlstm import files


def _torch_lstm():
    torch.manual_seed(0)
    return torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True)


def _torch_cell():
    torch.manual_seed(0)
    return torch.nn.LSTMCell(3, 4)


def _from_pt(tmp_path, module):
    path = tmp_path / "model.pt"
    torch.save({"epoch": 1, "model": {"rnn": module.state_dict()}}, path)
    return jaxlstm.from_checkpoint(path)


def _from_safetensors(tmp_path, module):
    path = tmp_path / "model.safetensors"
    files.save_safetensors(module.state_dict(), path)
    return jaxlstm.from_checkpoint(path)


BUILDERS = {
    "LSTM()": lambda tmp: jaxlstm.LSTM(3, 4, num_layers=2),
    "LSTM(rngs)": lambda tmp: jaxlstm.LSTM(3, 4, num_layers=2, rngs=nnx.Rngs(0)),
    "LSTM(dropout on one layer)": lambda tmp: jaxlstm.LSTM(3, 4, dropout=0.5),
    "BiLSTM": lambda tmp: jaxlstm.BiLSTM(3, 4, proj_size=2),
    "LSTMCell": lambda tmp: jaxlstm.LSTMCell(3, 4),
    "from_torch(module)": lambda tmp: jaxlstm.from_torch(_torch_lstm()),
    "from_torch(state_dict)": lambda tmp: jaxlstm.from_torch(_torch_lstm().state_dict()),
    "from_torch(cell)": lambda tmp: jaxlstm.from_torch(_torch_cell()),
    "from_checkpoint(.pt)": lambda tmp: _from_pt(tmp, _torch_lstm()),
    "from_checkpoint(.safetensors)": lambda tmp: _from_safetensors(tmp, _torch_cell()),
}


def _loss(model, x):
    out = model(x)
    return jnp.sum(out[0]) + jnp.sum(out[1]) if isinstance(model, jaxlstm.LSTMCell) else \
        jnp.sum(out[0]) + jnp.sum(out[1][0])


@pytest.mark.filterwarnings("ignore:dropout option adds dropout")
@pytest.mark.parametrize("build", BUILDERS.values(), ids=BUILDERS.keys())
def test_grad_over_the_whole_split_state(build, tmp_path):
    model = build(tmp_path)
    graphdef, state = nnx.split(model)
    leaves = jax.tree.leaves(state)
    assert all(isinstance(v, nnx.Param) for v in jax.tree.leaves(
        state, is_leaf=lambda v: isinstance(v, nnx.Variable))), "only weights in the state"
    assert all(jnp.issubdtype(leaf.dtype, jnp.floating) for leaf in leaves)
    x = jnp.asarray(np.random.default_rng(0).standard_normal(
        (5, 3) if isinstance(model, jaxlstm.LSTMCell) else (5, 2, 3)), jnp.float32)

    grads = jax.grad(lambda state, x: _loss(nnx.merge(graphdef, state), x))(state, x)
    expected = nnx.grad(_loss)(model, x)
    assert set(nnx.to_pure_dict(grads)) == set(model.config.param_shapes())
    for name, value in nnx.to_pure_dict(expected).items():
        np.testing.assert_allclose(nnx.to_pure_dict(grads)[name], value, rtol=1e-6,
                                   err_msg=name)


def test_dropout_keeps_its_stream_and_the_params_split_differentiates():
    """The documented pattern: differentiate the weights, carry the advanced stream out."""
    model = jaxlstm.LSTM(3, 4, num_layers=2, dropout=0.5, rngs=nnx.Rngs(0))
    assert isinstance(model.dropout_rngs, nnx.RngStream)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    x = jnp.ones((5, 2, 3))

    @jax.jit
    def step(params, rest, x):
        def loss(params, rest):
            model = nnx.merge(graphdef, params, rest, copy=True)
            return jnp.sum(model(x)[0]), nnx.state(model, nnx.RngState)

        return jax.grad(loss, has_aux=True)(params, rest)

    grads, advanced = step(params, rest, x)
    assert set(nnx.to_pure_dict(grads)) == set(model.config.param_shapes())
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    again, _ = step(params, advanced, x)  # the next mask
    assert not np.allclose(grads["weight_ih_l1"][...], again["weight_ih_l1"][...])


def test_dropout_raised_later_gets_a_stream_and_lowered_keeps_it():
    model = jaxlstm.LSTM(3, 4, num_layers=2)
    assert model.dropout_rngs is None
    model.dropout = 0.5
    assert isinstance(model.dropout_rngs, nnx.RngStream)
    x = jnp.ones((5, 2, 3))
    assert not np.allclose(model(x)[0], model(x)[0])  # a new mask each call
    single = jaxlstm.LSTM(3, 4)
    single.dropout = 0.5  # one layer: nothing to drop, so no stream (torch warns likewise)
    assert single.dropout_rngs is None
