"""Module behaviour: torch-named state, jit, init, BiLSTM, unbatched input, dropout, compile."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import jaxlstm
from jaxlstm import functional

RNG = np.random.default_rng(0)


def randn(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def test_state_and_grads_are_keyed_by_torch_names():
    model = jaxlstm.LSTM(3, 6, num_layers=2, bidirectional=True, proj_size=2)
    reference = torch.nn.LSTM(3, 6, num_layers=2, bidirectional=True, proj_size=2)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    assert set(params) == set(reference.state_dict())
    assert list(model.params()) == list(reference.state_dict())
    assert {k: v.shape for k, v in params.items()} == {
        k: tuple(v.shape) for k, v in reference.state_dict().items()
    }
    grads = nnx.grad(lambda m: jnp.sum(m(randn(4, 2, 3))[0]))(model)
    assert set(nnx.to_pure_dict(grads)) == set(params)


def test_jit_and_eager_agree():
    model = jaxlstm.LSTM(3, 5, num_layers=2, bidirectional=True, batch_first=True)
    x, lengths = randn(3, 7, 3), np.array([7, 2, 5])
    with jax.disable_jit():  # no compiled program anywhere, the functional core's jit included
        eager = model(x, seq_lengths=lengths)

    @nnx.jit
    def run(model, x, lengths):
        return model(x, seq_lengths=lengths)

    compiled = run(model, x, lengths)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(compiled)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_init_matches_torch_distribution():
    hidden = 64
    model = jaxlstm.LSTM(32, hidden, num_layers=2, proj_size=16, rngs=nnx.Rngs(1))
    torch.manual_seed(1)
    reference = torch.nn.LSTM(32, hidden, num_layers=2, proj_size=16)
    bound = 1 / np.sqrt(hidden)
    ours = np.concatenate([np.ravel(v) for v in model.params().values()])
    theirs = np.concatenate([v.detach().numpy().ravel() for v in reference.parameters()])
    assert ours.size == theirs.size
    assert np.abs(ours).max() <= bound and np.abs(ours).max() > 0.99 * bound
    assert abs(ours.mean()) < 0.01 * bound
    # U(-b, b) has variance b^2 / 3: compare both against it.
    np.testing.assert_allclose([ours.var(), theirs.var()], bound**2 / 3, rtol=0.02)
    # Different seeds give different weights; the same seed the same ones.
    other = jaxlstm.LSTM(32, hidden, num_layers=2, proj_size=16, rngs=nnx.Rngs(2))
    assert not np.allclose(other.weight_ih_l0[...], model.weight_ih_l0[...])
    again = jaxlstm.LSTM(32, hidden, num_layers=2, proj_size=16, rngs=nnx.Rngs(1))
    np.testing.assert_array_equal(again.weight_ih_l0[...], model.weight_ih_l0[...])


def test_bilstm_is_bidirectional_lstm():
    bi = jaxlstm.BiLSTM(3, 4, num_layers=2, proj_size=2, rngs=nnx.Rngs(5))
    lstm = jaxlstm.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2, rngs=nnx.Rngs(5))
    assert bi.config == lstm.config
    x = randn(6, 2, 3)
    for a, b in zip(jax.tree.leaves(bi(x)), jax.tree.leaves(lstm(x))):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("batch_first", [False, True])
def test_unbatched_equals_batch_of_one(batch_first):
    model = jaxlstm.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=batch_first)
    x, h0, c0 = randn(6, 3), randn(4, 4), randn(4, 4)
    out, (h_n, c_n) = model(x, (h0, c0))
    batched_x = x[None] if batch_first else x[:, None]
    out1, (h1, c1) = model(batched_x, (h0[:, None], c0[:, None]))
    np.testing.assert_allclose(out, out1[0] if batch_first else out1[:, 0], atol=1e-6)
    np.testing.assert_allclose(h_n, h1[:, 0], atol=1e-6)
    np.testing.assert_allclose(c_n, c1[:, 0], atol=1e-6)


def test_cell_unbatched_equals_batch_of_one():
    cell = jaxlstm.LSTMCell(3, 4)
    x, h, c = randn(3), randn(4), randn(4)
    single = cell(x, (h, c))
    batch = cell(x[None], (h[None], c[None]))
    for a, b in zip(single, batch):
        np.testing.assert_allclose(a, b[0], atol=1e-6)


def test_cell_step_equals_one_step_lstm():
    lstm = jaxlstm.LSTM(3, 4)
    cell = jaxlstm.LSTMCell(3, 4)
    jaxlstm.load_params(cell, {k[:-3]: v for k, v in jaxlstm.to_torch(lstm).items()})
    x, h, c = randn(1, 2, 3), randn(1, 2, 4), randn(1, 2, 4)
    _, (h_n, c_n) = lstm(x, (h, c))
    h1, c1 = cell(x[0], (h[0], c[0]))
    np.testing.assert_allclose(h1, h_n[0], atol=1e-6)
    np.testing.assert_allclose(c1, c_n[0], atol=1e-6)


def test_full_dropout_in_training_matches_torch():
    # With p = 1 every inter-layer activation is zeroed, so torch and jaxlstm agree exactly
    # whatever their random streams: layer 2 sees only zeros, layer 1 is untouched.
    torch.manual_seed(0)
    module = torch.nn.LSTM(3, 4, num_layers=2, dropout=1.0).train()
    model = jaxlstm.from_torch(module)
    assert not model.deterministic
    x = randn(5, 2, 3)
    out, (h_n, c_n) = model(x)
    t_out, (t_h, t_c) = module(torch.from_numpy(x))
    np.testing.assert_allclose(out, t_out.detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(h_n, t_h.detach().numpy(), atol=1e-6)
    model.eval()
    assert not np.allclose(model(x)[0], out, atol=1e-3)


def test_dropout_acts_only_in_training_and_between_layers():
    model = jaxlstm.LSTM(3, 16, num_layers=2, dropout=0.5, rngs=nnx.Rngs(0))
    x = randn(5, 4, 3)
    train_a, (h_a, c_a) = model(x)
    train_b, _ = model(x)
    assert not np.allclose(train_a, train_b), "each training call draws a new mask"
    model.eval()
    eval_a, (h_e, _) = model(x)
    eval_b, _ = model(x)
    np.testing.assert_array_equal(eval_a, eval_b)
    # The first layer never sees dropout: its h_n is the same in both modes.
    np.testing.assert_allclose(h_a[0], h_e[0], atol=1e-6)
    assert not np.allclose(h_a[1], h_e[1])
    view = nnx.view(model, deterministic=False)
    assert not np.allclose(view(x)[0], eval_a)


@pytest.mark.parametrize("mode", ["grad", "jvp"])
def test_compiled_program_does_not_grow_with_sequence_length(mode):
    model = jaxlstm.LSTM(3, 4, num_layers=2, bidirectional=True)
    params, config = model.params(), model.config

    def size(steps):
        def loss(p, x):
            out, _ = functional.lstm(p, x, config=config, seq_lengths=jnp.full((2,), steps))
            return jnp.sum(out)

        def derivative(p, x):
            if mode == "grad":
                return jax.grad(loss)(p, x)
            return jax.jvp(loss, (p, x), (p, x))

        # Lines of the lowered program: it includes the tangent loop, which a jaxpr shows as
        # one equation.
        lowered = jax.jit(derivative).lower(params, jnp.ones((steps, 2, 3)))
        return len(lowered.as_text().splitlines())

    assert size(5) == size(500) > 50


@pytest.mark.parametrize("poison", [np.nan, np.inf, 1e30])
def test_padding_never_leaks(poison):
    model = jaxlstm.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2)
    x, lengths = randn(6, 3, 3), np.array([6, 1, 4])
    poisoned = x.copy()
    for n, length in enumerate(lengths):
        poisoned[length:, n] = poison

    def loss(params, x):
        out, (h_n, c_n) = functional.lstm(params, x, config=model.config, seq_lengths=lengths)
        return jnp.sum(out * out) + jnp.sum(h_n) + jnp.sum(c_n), out

    clean = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(model.params(), x)
    dirty = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(model.params(), poisoned)
    for a, b in zip(jax.tree.leaves(clean), jax.tree.leaves(dirty)):
        assert np.all(np.isfinite(b))
        np.testing.assert_array_equal(a, b)


def test_padding_value():
    model = jaxlstm.LSTM(3, 4)
    out, _ = functional.lstm(model.params(), randn(5, 2, 3), config=model.config,
                             seq_lengths=np.array([5, 2]), padding_value=-1.0)
    assert np.all(np.asarray(out[2:, 1]) == -1.0) and np.all(np.asarray(out[:, 0]) != -1.0)


def test_compute_dtype_and_param_dtype():
    model = jaxlstm.LSTM(3, 4, param_dtype=jnp.float32, dtype=jnp.bfloat16)
    x = randn(5, 2, 3)
    out, (h_n, c_n) = model(x)
    assert out.dtype == h_n.dtype == c_n.dtype == jnp.bfloat16
    assert model.weight_ih_l0[...].dtype == jnp.float32
    model.dtype = None
    reference, _ = model(x)
    assert reference.dtype == jnp.float32
    np.testing.assert_allclose(out.astype(np.float32), reference, atol=0.05)
    assert not np.array_equal(out.astype(np.float32), reference)


def test_split_merge_round_trip():
    model = jaxlstm.LSTM(3, 4, num_layers=2, dropout=0.1)
    graphdef, state = nnx.split(model)
    clone = nnx.merge(graphdef, state)
    clone.eval()
    model.eval()
    x = randn(5, 2, 3)
    np.testing.assert_array_equal(model(x)[0], clone(x)[0])
