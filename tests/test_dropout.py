"""Dropout between layers in training mode, against torch: values and gradients at p = 0, 0.5, 1.

At p = 1 torch's own ``nn.LSTM`` is deterministic (every inter-layer activation is zero), so the
ported module is compared with it directly. At p = 0.5 the masks are random; torch computes the
same thing when its layers run one by one with jaxlstm's documented masks applied between them
(``functional.lstm``: layer ``k``'s mask is ``bernoulli(fold_in(dropout_rng, k), 1 - p)``;
``parity/dropout.py`` runs torch so, and ``python -m parity`` compares it too).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import jaxlstm
from jaxlstm import functional, testing
from parity import dropout

T, N, INPUT, HIDDEN = 6, 3, 3, 5
LENGTHS = np.array([6, 2, 4])


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def _torch_lstm(layers=2, proj=0, bidirectional=False):
    torch.manual_seed(0)
    return torch.nn.LSTM(INPUT, HIDDEN, layers, proj_size=proj,
                         bidirectional=bidirectional).double()


def _input(packed):
    x = np.random.default_rng(1).standard_normal((T, N, INPUT))
    if packed:
        x[LENGTHS[1]:, 1] = np.nan  # padding never reaches a value or a gradient
    return x


def _ours(model, x, lengths, key, wavefront):
    """jaxlstm's output, states and gradients (same loss), in training mode with ``key``."""
    params = model.params()
    lengths = None if lengths is None else jnp.asarray(lengths)

    def run(params, x):
        return functional.lstm(params, x, config=model.config, seq_lengths=lengths,
                               dropout_rng=key, deterministic=False, wavefront=wavefront)

    def loss(params, x):
        out, (h, c) = run(params, x)
        return out.sum() + h.sum() + c.sum()

    out, (h, c) = run(params, jnp.asarray(x))
    d_params, d_x = jax.grad(loss, argnums=(0, 1))(params, jnp.asarray(x))
    if lengths is not None:  # the padding's gradient is exactly zero; torch reads no padding
        assert not np.any(np.asarray(d_x)[LENGTHS[1]:, 1])
    return np.asarray(out), np.asarray(h), np.asarray(c), {"x": np.asarray(d_x), **d_params}


CASES = [
    # (p, layers, proj, bidirectional, packed, wavefront)
    (p, layers, proj, bi, packed, wavefront)
    for p in (0.0, 0.5, 1.0)
    for layers, proj, bi, packed, wavefront in [
        (2, 0, False, False, False),
        (3, 2, False, True, False),
        (2, 0, True, True, False),
        (3, 0, False, True, True),
        (2, 2, False, False, True),
    ]
]


@pytest.mark.parametrize(
    "p, layers, proj, bidirectional, packed, wavefront", CASES,
    ids=[f"p{c[0]}-L{c[1]}-proj{c[2]}-{'bi' if c[3] else 'uni'}"
         f"{'-packed' if c[4] else ''}{'-wavefront' if c[5] else ''}" for c in CASES])
def test_training_dropout_values_and_gradients_match_torch(p, layers, proj, bidirectional, packed,
                                                           wavefront):
    module = _torch_lstm(layers, proj, bidirectional)
    model = jaxlstm.from_torch(module, dropout=p)
    x = _input(packed)
    lengths = LENGTHS if packed else None
    key = jax.random.key(7)
    out, h, c, grads = _ours(model, x, lengths, key, wavefront)
    shape = (T, N, model.config.num_directions * model.config.output_size)
    keep = dropout.masks(key, p, layers, shape)
    ones = {"output": np.ones_like(out), "h_n": np.ones_like(h), "c_n": np.ones_like(c)}
    # torch running its layers one by one with these masks (the same loss: the sum of all)
    expected = dropout.torch_reference(
        module, testing.Inputs(np.nan_to_num(x), None, lengths, ones), keep, p)
    t_out, t_h, t_c = expected["output"], expected["h_n"], expected["c_n"]
    t_grads = {"x": expected.pop("grad input")}
    t_grads |= {k.removeprefix("grad "): v for k, v in expected.items() if k.startswith("grad ")}
    np.testing.assert_allclose(out, t_out, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(h, t_h, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(c, t_c, rtol=1e-10, atol=1e-12)
    assert set(grads) == set(t_grads)
    for name, grad in grads.items():
        assert np.all(np.isfinite(grad)), name
        np.testing.assert_allclose(grad, t_grads[name], rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("proj", [0, 2])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_full_dropout_module_matches_torchs_own_lstm(proj, packed):
    """p = 1 through the NNX module and nnx.grad against torch's nn.LSTM itself (train mode):
    torch's values and gradients, not NaN or Inf (inverted dropout divides by 1 - p)."""
    module = _torch_lstm(3, proj).train()
    module.dropout = 1.0
    model = jaxlstm.from_torch(module, dropout=1.0, rngs=nnx.Rngs(3))
    assert not model.deterministic
    x = np.nan_to_num(_input(packed))
    lengths = LENGTHS if packed else None

    def loss(model, x):
        out, (h, c) = model(x, seq_lengths=None if lengths is None else jnp.asarray(lengths))
        return out.sum() + h.sum() + c.sum()

    grads, d_x = nnx.grad(loss, argnums=(0, 1))(model, jnp.asarray(x))
    x_t = torch.tensor(x, requires_grad=True)
    if lengths is None:
        out, (h, c) = module(x_t)
    else:
        packed_x = torch.nn.utils.rnn.pack_padded_sequence(x_t, torch.as_tensor(lengths),
                                                           enforce_sorted=False)
        out, (h, c) = module(packed_x)
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T)
    (out.sum() + h.sum() + c.sum()).backward()
    np.testing.assert_allclose(d_x, x_t.grad.numpy(), rtol=1e-10, atol=1e-12)
    ours = nnx.to_pure_dict(grads)
    for name, param in module.named_parameters():
        assert np.all(np.isfinite(ours[name])), name
        np.testing.assert_allclose(ours[name], param.grad.numpy(), rtol=1e-10, atol=1e-12,
                                   err_msg=name)
