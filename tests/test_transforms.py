"""Determinism and JAX/NNX transformations: repeated calls, jit, vmap, grad, jacrev, jacfwd,
split/merge, pickling."""

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import jaxlstm
from jaxlstm import functional

RNG = np.random.default_rng(0)
LENGTHS = np.array([5, 2, 4])


def randn(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def make_model(**kwargs):
    options = dict(bidirectional=True, proj_size=2)
    options.update(kwargs)
    return jaxlstm.LSTM(3, 4, rngs=nnx.Rngs(0), **options)


def state_inputs(model, batch):
    layers = model.config.num_layers * model.config.num_directions
    return (randn(layers, batch, model.config.output_size),
            randn(layers, batch, model.config.hidden_size))


def assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def assert_trees_close(a, b, tolerance=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tolerance, atol=tolerance)


def loss_of(model, x, hx, seq_lengths):
    out, (h_n, c_n) = model(x, hx, seq_lengths=seq_lengths)
    return jnp.sum(out**2) + jnp.sum(h_n * c_n[..., : h_n.shape[-1]]) + jnp.sum(jnp.cos(c_n))


# --- Determinism ------------------------------------------------------------------------------

@pytest.mark.parametrize("remat", [False, 2])
def test_repeated_calls_are_bitwise_identical(remat):
    model = make_model()
    x, hx = randn(5, 3, 3), state_inputs(model, 3)

    def run():
        out = functional.lstm(model.params(), x, hx, config=model.config, seq_lengths=LENGTHS,
                              remat=remat)
        grads = jax.grad(lambda p: jnp.sum(functional.lstm(
            p, x, hx, config=model.config, seq_lengths=LENGTHS, remat=remat)[0] ** 2))(
            model.params())
        return out, grads

    first = run()
    for _ in range(2):
        assert_trees_equal(run(), first)


def test_jit_matches_eager_values_and_gradients():
    """Eager is ``jax.disable_jit``: every primitive dispatched on its own, loops in Python, no
    compiled program anywhere (the functional core is jitted otherwise)."""
    model = make_model(batch_first=True)
    x, hx = randn(3, 5, 3), state_inputs(model, 3)
    tangent = randn(3, 5, 3)

    def jvp(model, x):
        return jax.jvp(lambda x: model(x, hx, seq_lengths=LENGTHS), (x,), (tangent,))

    with jax.disable_jit():
        eager_value, eager_grads = nnx.value_and_grad(loss_of)(model, x, hx, LENGTHS)
        eager_jvp = jvp(model, x)
    jit_value, jit_grads = nnx.jit(nnx.value_and_grad(loss_of))(model, x, hx, LENGTHS)
    np.testing.assert_allclose(jit_value, eager_value, rtol=1e-6)
    assert_trees_close(nnx.to_pure_dict(jit_grads), nnx.to_pure_dict(eager_grads))
    assert_trees_close(nnx.jit(jvp)(model, x), eager_jvp)
    # And a second jitted call (the cached executable) gives the same bits.
    assert_trees_equal(nnx.jit(nnx.value_and_grad(loss_of))(model, x, hx, LENGTHS),
                       (jit_value, jit_grads))


def test_eval_mode_is_deterministic_and_train_mode_follows_the_seed():
    def build():
        return jaxlstm.LSTM(3, 4, num_layers=3, dropout=0.5, rngs=nnx.Rngs(params=0, dropout=7))

    x = randn(5, 2, 3)
    model = build()
    model.eval()
    assert_trees_equal(model(x), model(x))
    model.train()
    first, second = model(x), model(x)
    assert not np.array_equal(first[0], second[0]), "dropout masks must advance with the stream"
    # Same seeds, same sequence of masks: a rebuilt model reproduces both calls.
    again = build()
    again.train()
    assert_trees_equal(again(x), first)
    assert_trees_equal(again(x), second)


# --- vmap ---------------------------------------------------------------------------------------

def test_vmap_over_an_extra_batch_axis_matches_a_loop():
    model = make_model()
    params, config = model.params(), model.config
    copies = 4
    xs = randn(copies, 5, 3, 3)
    h0s, c0s = (np.stack(a) for a in zip(*(state_inputs(model, 3) for _ in range(copies))))
    lengths = np.stack([RNG.permutation(LENGTHS) for _ in range(copies)])

    def run(x, h0, c0, seq_lengths):
        return functional.lstm(params, x, (h0, c0), config=config, seq_lengths=seq_lengths)

    batched = jax.vmap(run)(xs, h0s, c0s, lengths)
    looped = [run(xs[i], h0s[i], c0s[i], lengths[i]) for i in range(copies)]
    assert_trees_close(batched, jax.tree.map(lambda *a: jnp.stack(a), *looped))


def test_vmap_of_unbatched_calls_equals_one_batched_call():
    model = make_model()
    x = randn(5, 3, 3)  # (L, N, I)
    h0, c0 = state_inputs(model, 3)  # (D, N, H)
    per_sequence = jax.vmap(lambda x, h, c, n: model(x, (h, c), seq_lengths=n),
                            in_axes=(1, 1, 1, 0), out_axes=(1, (1, 1)))
    assert_trees_close(per_sequence(x, h0, c0, LENGTHS), model(x, (h0, c0), seq_lengths=LENGTHS))


def test_vmap_over_the_cell_and_over_parameters():
    cell = jaxlstm.LSTMCell(3, 4, rngs=nnx.Rngs(0))
    x, h, c = randn(6, 2, 3), randn(6, 2, 4), randn(6, 2, 4)
    flat = cell(x.reshape(12, 3), (h.reshape(12, 4), c.reshape(12, 4)))
    assert_trees_close(jax.vmap(lambda *a: cell(a[0], a[1:]))(x, h, c),
                       [a.reshape(6, 2, 4) for a in flat])
    # An ensemble: vmap over stacked parameter dicts equals each member on its own.
    members = [jaxlstm.LSTMCell(3, 4, rngs=nnx.Rngs(seed)).params() for seed in range(3)]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *members)
    config = cell.config
    ensemble = jax.vmap(lambda p: functional.lstm_cell(p, x[0], (h[0], c[0]), config=config))
    assert_trees_close(ensemble(stacked), jax.tree.map(lambda *a: jnp.stack(a), *[
        functional.lstm_cell(p, x[0], (h[0], c[0]), config=config) for p in members
    ]))


# --- grad, value_and_grad, jacrev against torch -----------------------------------------------

def test_value_and_grad_agrees_with_grad_and_the_forward_pass():
    model = make_model()
    x, hx = randn(5, 3, 3), state_inputs(model, 3)
    value, grads = nnx.value_and_grad(loss_of, argnums=(0, 1))(model, x, hx, LENGTHS)
    np.testing.assert_allclose(value, loss_of(model, x, hx, LENGTHS), rtol=1e-6)
    assert_trees_equal(nnx.grad(loss_of, argnums=(0, 1))(model, x, hx, LENGTHS), grads)


@pytest.mark.parametrize("packed", [False, True], ids=["full", "packed"])
def test_jacrev_and_jacfwd_match_torch_jacobian(packed):
    """The full Jacobian of the output with respect to the input, in reverse and in forward
    mode, against ``torch.autograd.functional.jacobian`` of the same module (float64, both
    sides)."""
    torch.manual_seed(0)
    module = torch.nn.LSTM(2, 3, bidirectional=True, proj_size=2, dtype=torch.float64)
    x = np.random.default_rng(1).standard_normal((4, 2, 2))
    lengths = np.array([4, 2]) if packed else None

    def torch_fn(x):
        if lengths is None:
            return module(x)[0]
        out, _ = module(pack_padded_sequence(x, torch.as_tensor(lengths), enforce_sorted=False))
        return pad_packed_sequence(out, total_length=x.shape[0])[0]

    expected = torch.autograd.functional.jacobian(torch_fn, torch.from_numpy(x)).numpy()
    with jax.enable_x64(True):
        model = jaxlstm.from_torch(module)
        def output(x):
            return model(x, seq_lengths=lengths)[0]

        for jacobian in (jax.jacrev, jax.jacfwd):
            actual = jacobian(output)(x)
            assert actual.shape == expected.shape == (4, 2, 4, 4, 2, 2)
            np.testing.assert_allclose(np.asarray(actual), expected, rtol=1e-10, atol=1e-12,
                                       err_msg=jacobian.__name__)


# --- nnx.split / merge, pickling --------------------------------------------------------------

def test_split_merge_round_trip_keeps_parameters_and_results():
    model = make_model()
    x, hx = randn(5, 3, 3), state_inputs(model, 3)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    merged = nnx.merge(graphdef, params, rest)
    assert merged.config == model.config
    assert_trees_equal(merged.params(), model.params())
    assert_trees_equal(merged(x, hx, seq_lengths=LENGTHS), model(x, hx, seq_lengths=LENGTHS))
    # Edited state merges into a model that computes with the edit.
    scaled = jax.tree.map(lambda a: 2 * a, params)
    doubled = nnx.merge(graphdef, scaled, rest)
    np.testing.assert_array_equal(doubled.weight_hh_l0_reverse[...],
                                  2 * model.weight_hh_l0_reverse[...])
    assert not np.allclose(doubled(x)[0], model(x)[0])


def test_pickled_state_restores_the_model():
    model = make_model()
    x = randn(5, 3, 3)
    graphdef, state = nnx.split(model)
    restored_state = pickle.loads(pickle.dumps(state))
    assert_trees_equal(nnx.merge(graphdef, restored_state)(x), model(x))
    # A plain dict of arrays pickles too and loads into a fresh model of the same config.
    pure = pickle.loads(pickle.dumps(nnx.to_pure_dict(nnx.state(model, nnx.Param))))
    fresh = make_model()
    fresh_graphdef, fresh_params, fresh_rest = nnx.split(fresh, nnx.Param, ...)
    nnx.replace_by_pure_dict(fresh_params, pure)
    assert_trees_equal(nnx.merge(fresh_graphdef, fresh_params, fresh_rest)(x), model(x))


def test_pickled_module_is_the_same_module():
    model = jaxlstm.LSTM(3, 4, num_layers=2, dropout=0.5, rngs=nnx.Rngs(params=1, dropout=2))
    model.train()
    x = randn(5, 2, 3)
    model(x)  # advance the dropout stream: its position must survive pickling
    copy = pickle.loads(pickle.dumps(model))
    assert copy.config == model.config and copy.deterministic == model.deterministic
    assert_trees_equal(copy.params(), model.params())
    assert_trees_equal(copy(x), model(x))  # same dropout mask: same stream position
    cell = jaxlstm.LSTMCell(3, 4)
    assert_trees_equal(pickle.loads(pickle.dumps(cell))(x[0]), cell(x[0]))

