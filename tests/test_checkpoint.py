"""Checkpoints: safetensors files torch loads directly, and orbax training states that resume
exactly."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx
from safetensors.torch import load_file, save_file

import jaxlstm
from jaxlstm import linen
from jaxlstm.checkpoint import (
    load_safetensors,
    restore_train_state,
    save_safetensors,
    save_train_state,
)
from jaxlstm.files import CheckpointError

RNG = np.random.default_rng(0)


def randn(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def test_torch_loads_our_file_directly_and_reproduces_outputs(tmp_path):
    model = jaxlstm.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2, rngs=nnx.Rngs(1))
    path = save_safetensors(model, tmp_path / "lstm.safetensors")
    module = torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2)
    module.load_state_dict(load_file(path), strict=True)
    for name, value in model.params().items():
        np.testing.assert_array_equal(module.state_dict()[name].numpy(), value)
    x = randn(6, 2, 3)
    np.testing.assert_allclose(model(x)[0], module(torch.from_numpy(x))[0].detach(), atol=2e-6)


def test_file_written_by_torch_loads_into_nnx_and_linen(tmp_path):
    module = torch.nn.LSTM(3, 4, num_layers=2, batch_first=True)
    path = tmp_path / "torch.safetensors"
    save_file(module.state_dict(), path)
    x = randn(2, 5, 3)
    expected = module(torch.from_numpy(x))[0].detach().numpy()

    model = jaxlstm.LSTM(3, 4, num_layers=2, batch_first=True, rngs=nnx.Rngs(7))
    assert load_safetensors(path, model) is model
    np.testing.assert_allclose(model(x)[0], expected, atol=2e-6)

    lstm = linen.LSTM(3, 4, num_layers=2, batch_first=True)
    variables = load_safetensors(path, lstm.init(jax.random.key(0), x))
    np.testing.assert_allclose(lstm.apply(variables, x)[0], expected, atol=2e-6)

    flat = load_safetensors(path)
    assert flat.keys() == module.state_dict().keys()
    for name, value in module.state_dict().items():
        np.testing.assert_array_equal(flat[name], value.numpy())


@pytest.mark.parametrize("param_dtype", [jnp.float32, jnp.bfloat16], ids=str)
def test_linen_round_trip_is_exact_and_keeps_dtype(tmp_path, param_dtype):
    lstm = linen.BiLSTM(3, 4, param_dtype=param_dtype)
    variables = lstm.init(jax.random.key(2), jnp.zeros((4, 1, 3)))
    path = save_safetensors(variables, tmp_path / "v.safetensors")
    template = lstm.init(jax.random.key(3), jnp.zeros((4, 1, 3)))
    restored = load_safetensors(path, template)
    assert jax.tree.structure(restored) == jax.tree.structure(variables)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(variables)):
        assert a.dtype == b.dtype == param_dtype
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    # torch reads the same bits in its own dtype.
    loaded = load_file(path)
    expected_dtype = {jnp.float32: torch.float32, jnp.bfloat16: torch.bfloat16}[param_dtype]
    assert loaded["weight_ih_l0"].dtype == expected_dtype
    np.testing.assert_array_equal(loaded["weight_ih_l0"].float().numpy(),
                                  np.asarray(variables["params"]["weight_ih_l0"], np.float32))


def test_nested_params_get_torch_dotted_names(tmp_path):
    lstm = linen.LSTM(3, 4)
    params = lstm.init(jax.random.key(0), jnp.zeros((2, 1, 3)))["params"]
    weight, bias = randn(2, 4), randn(2)
    tree = {"lstm": params, "fc": {"weight": weight, "bias": bias}}
    path = save_safetensors(tree, tmp_path / "model.safetensors")
    reference = torch.nn.ModuleDict({"lstm": torch.nn.LSTM(3, 4), "fc": torch.nn.Linear(4, 2)})
    reference.load_state_dict(load_file(path), strict=True)
    np.testing.assert_array_equal(reference["fc"].weight.detach().numpy(), weight)
    np.testing.assert_array_equal(reference["lstm"].weight_hh_l0.detach().numpy(),
                                  params["weight_hh_l0"])


def test_any_nnx_module_round_trips(tmp_path):
    class Model(nnx.Module):
        def __init__(self, seed):
            self.lstm = jaxlstm.LSTM(3, 4, rngs=nnx.Rngs(seed))
            self.fc = nnx.Linear(4, 2, rngs=nnx.Rngs(seed))

    source, target = Model(0), Model(1)
    path = save_safetensors(source, tmp_path / "m.safetensors")
    assert set(load_safetensors(path)) == {
        "lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.bias_ih_l0", "lstm.bias_hh_l0",
        "fc.kernel", "fc.bias",
    }
    load_safetensors(path, target)
    for a, b in zip(jax.tree.leaves(nnx.state(source, nnx.Param)),
                    jax.tree.leaves(nnx.state(target, nnx.Param))):
        np.testing.assert_array_equal(a, b)


def test_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "lstm.safetensors"
    first = jaxlstm.LSTM(3, 4, rngs=nnx.Rngs(0))
    save_safetensors(first, path)
    before = path.read_bytes()

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        save_safetensors(jaxlstm.LSTM(3, 4, rngs=nnx.Rngs(1)), path, force=True)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lstm.safetensors"]
    with pytest.raises(FileExistsError, match="already exists"):
        save_safetensors(jaxlstm.LSTM(3, 4, rngs=nnx.Rngs(1)), path)
    save_safetensors(jaxlstm.LSTM(3, 4, rngs=nnx.Rngs(1)), path, force=True)
    assert path.read_bytes() != before


def test_safetensors_errors_name_the_problem(tmp_path):
    path = save_safetensors(jaxlstm.LSTM(3, 4, num_layers=2), tmp_path / "two.safetensors")
    with pytest.raises(ValueError, match=r"two.safetensors does not match the model's "
                                         r"parameters:\n.*unexpected key 'bias_hh_l1'"):
        load_safetensors(path, jaxlstm.LSTM(3, 4))
    with pytest.raises(ValueError, match=r"wrong shape for 'weight_ih_l0': the model has "
                                         r"\(16, 5\), the file \(16, 3\)"):
        load_safetensors(path, jaxlstm.LSTM(5, 4, num_layers=2))
    with pytest.raises(FileNotFoundError, match="directory .*missing' does not exist"):
        save_safetensors(jaxlstm.LSTM(3, 4), tmp_path / "missing" / "x.safetensors")
    with pytest.raises(CheckpointError, match="nothing.safetensors' does not exist"):
        load_safetensors(tmp_path / "nothing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.safetensors' is not a readable safetensors"):
        load_safetensors(bad)
    with pytest.raises(TypeError, match="'weight' is not a numeric array"):
        save_safetensors({"weight": "abc"}, tmp_path / "s.safetensors")
    with pytest.raises(ValueError, match="no parameters to save"):
        save_safetensors({}, tmp_path / "e.safetensors")


# --- orbax training state -------------------------------------------------------------------

MODEL = linen.LSTM(2, 8, num_layers=2, batch_first=True)
TX = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))


def fresh_state(seed):
    params = MODEL.init(jax.random.key(seed), jnp.zeros((1, 5, 2)))["params"]
    return params, TX.init(params)


@jax.jit
def train_step(params, opt_state, step):
    # The batch is a function of the step number, so a resumed run sees the same data.
    x = jax.random.normal(jax.random.fold_in(jax.random.key(0), step), (4, 5, 2))
    target = 0.5 * jnp.tanh(x[..., :1])

    def loss_fn(params):
        out, _ = MODEL.apply({"params": params}, x)
        return jnp.mean((out[..., :1] - target) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = TX.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


def run(params, opt_state, start, stop):
    losses = []
    for step in range(start, stop):
        params, opt_state, loss = train_step(params, opt_state, step)
        losses.append(float(loss))
    return params, opt_state, losses


def test_train_state_round_trip_is_exact(tmp_path):
    params, opt_state = fresh_state(0)
    params, opt_state, _ = run(params, opt_state, 0, 2)
    save_train_state(tmp_path / "ckpt", params, opt_state, 2)
    restored = restore_train_state(tmp_path / "ckpt", *fresh_state(1))
    assert restored[2] == 2
    assert jax.tree.structure(restored[:2]) == jax.tree.structure((params, opt_state))
    for a, b in zip(jax.tree.leaves(restored[:2]), jax.tree.leaves((params, opt_state))):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def test_resume_continues_the_loss_curve_exactly(tmp_path):
    steps = 6
    _, _, straight = run(*fresh_state(0), 0, steps)

    params, opt_state, first = run(*fresh_state(0), 0, steps // 2)
    save_train_state(tmp_path / "half", params, opt_state, steps // 2)
    params, opt_state, step = restore_train_state(tmp_path / "half", *fresh_state(123))
    _, _, second = run(params, opt_state, step, steps)
    assert first + second == straight
    assert straight[-1] < straight[0]


def test_nnx_model_and_optimizer_resume_exactly_with_dropout(tmp_path):
    tx = optax.adam(1e-2)  # one transformation object: nnx.jit then compiles the step once

    def build(seed):
        model = jaxlstm.LSTM(2, 6, num_layers=2, dropout=0.5, rngs=nnx.Rngs(seed))
        return model, nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x):
        def loss_fn(model):
            return jnp.mean(model(x)[0] ** 2)

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    xs = [jnp.asarray(randn(5, 3, 2)) for _ in range(4)]
    model, optimizer = build(0)
    straight = [float(step(model, optimizer, x)) for x in xs]

    model, optimizer = build(0)
    first = [float(step(model, optimizer, x)) for x in xs[:2]]
    save_train_state(tmp_path / "nnx", model, optimizer, 2)
    model, optimizer = build(5)  # other weights and another dropout stream, all overwritten
    model_out, optimizer_out, start = restore_train_state(tmp_path / "nnx", model, optimizer)
    assert model_out is model and optimizer_out is optimizer and start == 2
    second = [float(step(model, optimizer, x)) for x in xs[2:]]
    assert first + second == straight


def test_train_state_errors(tmp_path):
    params, opt_state = fresh_state(0)
    save_train_state(tmp_path / "c", params, opt_state, 0)
    with pytest.raises(FileExistsError, match="already exists; pass force=True"):
        save_train_state(tmp_path / "c", params, opt_state, 1)
    save_train_state(tmp_path / "c", params, opt_state, 1, force=True)
    assert restore_train_state(tmp_path / "c", params, opt_state)[2] == 1
    other = linen.LSTM(2, 8).init(jax.random.key(0), jnp.zeros((5, 1, 2)))["params"]
    with pytest.raises(ValueError, match="does not match the params/opt_state templates"):
        restore_train_state(tmp_path / "c", other, TX.init(other))
    with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
        restore_train_state(tmp_path / "none", params, opt_state)
    with pytest.raises(TypeError, match="step must be a non-negative int"):
        save_train_state(tmp_path / "d", params, opt_state, -1)
