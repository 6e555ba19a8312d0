"""``wavefront=True``: stacked unidirectional layers in one loop.

Parity against torch (fp32/fp64, gradients, packed sequences, projections) runs in the parity
grid, the property tests and the forward-mode tests, which include wavefront cases. Here: what
torch cannot check (dropout's masks in training mode), the schedule itself (one loop of
``T + L - 1`` iterations each way) and the module arguments.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxlstm
from jaxlstm import functional, linen
from jaxlstm.config import LSTMConfig


def _problem(num_layers=3, proj_size=0, seed=0):
    torch.manual_seed(seed)
    module = torch.nn.LSTM(3, 5, num_layers, proj_size=proj_size, dropout=0.4)
    params = {k: jnp.asarray(v.detach().numpy()) for k, v in module.state_dict().items()}
    x = jnp.asarray(np.random.default_rng(seed).standard_normal((6, 4, 3)), jnp.float32)
    return module, params, LSTMConfig(3, 5, num_layers, dropout=0.4, proj_size=proj_size), x


def _loss(config, wavefront, **kwargs):
    def loss(params, x):
        out, (h, c) = functional.lstm(params, x, config=config, wavefront=wavefront, **kwargs)
        return jnp.sum(jnp.sin(out)) + jnp.sum(h**2) + jnp.sum(jnp.cos(c))
    return loss


@pytest.mark.parametrize("proj_size", [0, 2])
def test_dropout_in_training_draws_the_same_masks_as_layer_by_layer(proj_size):
    # torch's masks cannot be reproduced, so training-mode dropout is checked against the
    # layer-by-layer schedule (itself checked against torch in eval mode), values and gradients.
    _, params, config, x = _problem(proj_size=proj_size)
    lengths = jnp.asarray([6, 2, 5, 1])
    kwargs = dict(deterministic=False, dropout_rng=jax.random.key(3), seq_lengths=lengths)
    eval_out = functional.lstm(params, x, config=config, wavefront=True, seq_lengths=lengths)[0]
    outs = [functional.lstm(params, x, config=config, wavefront=w, **kwargs) for w in (False, True)]
    grads = [jax.grad(_loss(config, w, **kwargs), argnums=(0, 1))(params, x) for w in (False, True)]
    np.testing.assert_allclose(outs[1][0], outs[0][0], atol=1e-6)
    assert float(jnp.max(jnp.abs(outs[1][0] - eval_out))) > 1e-3  # dropout acted
    for a, b in zip(jax.tree.leaves(grads[1]), jax.tree.leaves(grads[0])):
        np.testing.assert_allclose(a, b, atol=1e-5)


def _while_loops(fn, *args):
    return jax.jit(fn).lower(*args).as_text().count("stablehlo.while")


def test_one_loop_each_way_instead_of_one_per_layer():
    _, params, config, x = _problem(num_layers=3)

    def forward(w):
        return lambda p, x: functional.lstm(p, x, config=config, wavefront=w)[0]

    assert _while_loops(forward(False), params, x) == 3
    assert _while_loops(forward(True), params, x) == 1
    grad = jax.grad(_loss(config, True))
    assert _while_loops(grad, params, x) == 2  # the forward and the reverse wavefront


def test_wavefront_applies_to_stacked_unidirectional_layers_only():
    # One layer: its one loop, as documented. Bidirectional or with remat: an error.
    _, params, config, x = _problem(num_layers=1)
    run = lambda p, x: functional.lstm(p, x, config=config, wavefront=True)[0]  # noqa: E731
    assert _while_loops(run, params, x) == 1
    _, params, config, x = _problem(num_layers=2)
    with pytest.raises(ValueError, match="wavefront=True and remat cannot be combined"):
        functional.lstm(params, x, config=config, wavefront=True, remat=2)
    with pytest.raises(ValueError, match="this LSTM is bidirectional"):
        jaxlstm.BiLSTM(3, 5, 2, wavefront=True)


def test_modules_take_wavefront_and_match_torch():
    module, _, _, x = _problem(num_layers=2)
    expected = module.eval()(torch.from_numpy(np.asarray(x)))[0].detach().numpy()
    model = jaxlstm.from_torch(module, wavefront=True)
    assert model.wavefront is True
    np.testing.assert_allclose(model(x)[0], expected, atol=1e-5)
    lin = linen.LSTM(3, 5, 2, dropout=0.4, wavefront=True, deterministic=True)
    variables = {"params": {k: jnp.asarray(v.detach().numpy())
                            for k, v in module.state_dict().items()}}
    np.testing.assert_allclose(lin.apply(variables, x)[0], expected, atol=1e-5)


def test_wavefront_must_be_a_bool():
    _, params, config, x = _problem(num_layers=2)
    with pytest.raises(TypeError, match="wavefront must be True or False, got 'yes'"):
        functional.lstm(params, x, config=config, wavefront="yes")
