"""Other libraries' LSTMs: each import is checked against that library's own forward pass on the
same weights and inputs, each export against torch's forward, and round trips are exact."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import jaxlstm
from jaxlstm.formats import OUTPUT_FORMATS, format_for
from jaxlstm.formats import flax as fflax
from jaxlstm.formats import jax_rnn as fjax
from jaxlstm.formats._common import one_bias, single_cell

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)
ATOL = 1e-5
IN, H, T, N = 3, 4, 6, 2


def _rng(seed=0):
    return np.random.default_rng(seed)


def _normal(shape, seed=0):
    return _rng(seed).standard_normal(shape).astype(np.float32)


def _torch_state(module):
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def _merged(module):
    """The module's state dict with bias_hh folded into bias_ih (what one-bias formats hold)."""
    state = _torch_state(module)
    for key in [k for k in state if k.startswith("bias_hh")]:
        state[key.replace("bias_hh", "bias_ih")] += state[key]
        state[key] = np.zeros_like(state[key])
    return state


def _run_cell(cell, xs, h, c):
    """Step a jaxlstm.LSTMCell over time-major ``xs``."""
    outputs = []
    for x in xs:
        h, c = cell(x, (h, c))
        outputs.append(h)
    return np.stack(outputs), h, c


def _assert_state_equal(actual, expected):
    assert set(actual) == set(expected)
    for key in expected:
        np.testing.assert_array_equal(np.asarray(actual[key]), expected[key], err_msg=key)


# --- Flax ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("optimized", [False, True], ids=["LSTMCell", "OptimizedLSTMCell"])
def test_flax_nnx_cell_parity_and_round_trip(optimized):
    kind = nnx.OptimizedLSTMCell if optimized else nnx.LSTMCell
    cell = kind(IN, H, bias_init=nnx.initializers.normal(1.0), rngs=nnx.Rngs(1))
    xs, h0, c0 = _normal((T, N, IN)), _normal((N, H), 1), _normal((N, H), 2)
    (c_n, h_n), ys = nnx.RNN(cell, time_major=True, return_carry=True)(xs, initial_carry=(c0, h0))
    ported = fflax.flax_cell_to_jaxlstm(cell)
    out, h, c = _run_cell(ported, xs, h0, c0)
    np.testing.assert_allclose(out, ys, atol=ATOL)
    np.testing.assert_allclose(h, h_n, atol=ATOL)
    np.testing.assert_allclose(c, c_n, atol=ATOL)
    back = fflax.to_nnx_cell(jaxlstm.to_torch(ported), optimized=optimized)
    assert type(back) is kind
    _assert_state_equal(
        fflax._flatten(nnx.to_pure_dict(nnx.state(back, nnx.Param))),
        {k: np.asarray(v) for k, v in fflax._flatten(
            nnx.to_pure_dict(nnx.state(cell, nnx.Param))).items()},
    )


@pytest.mark.parametrize("name", ["LSTMCell", "OptimizedLSTMCell"])
def test_flax_linen_cell_parity_and_round_trip(name):
    import flax.linen as nn

    cell = getattr(nn, name)(features=H, bias_init=nn.initializers.normal(1.0))
    xs, h0, c0 = _normal((N, T, IN)), _normal((N, H), 1), _normal((N, H), 2)
    rnn = nn.RNN(cell, return_carry=True)
    variables = rnn.init(jax.random.key(0), xs, initial_carry=(c0, h0))
    (c_n, h_n), ys = rnn.apply(variables, xs, initial_carry=(c0, h0))
    params = variables["params"]["cell"]
    ported = fflax.flax_cell_to_jaxlstm(params)
    out, h, c = _run_cell(ported, xs.swapaxes(0, 1), h0, c0)
    np.testing.assert_allclose(out.swapaxes(0, 1), ys, atol=ATOL)
    np.testing.assert_allclose(c, c_n, atol=ATOL)
    back = fflax.to_linen_params(jaxlstm.to_torch(ported))["params"]
    _assert_state_equal(fflax._flatten(back),
                        {k: np.asarray(v) for k, v in fflax._flatten(params).items()})


def test_torch_cell_exported_to_flax_matches_torch():
    import flax.linen as nn

    module = torch.nn.LSTMCell(IN, H)
    x, h0, c0 = _normal((N, IN)), _normal((N, H), 1), _normal((N, H), 2)
    hx = (torch.from_numpy(h0), torch.from_numpy(c0))
    t_h, t_c = (a.detach().numpy() for a in module(torch.from_numpy(x), hx))
    state = _torch_state(module)
    for optimized in (False, True):
        cell = fflax.to_nnx_cell(state, optimized=optimized, merge_biases=True)
        (c, h), _ = cell((c0, h0), x)
        np.testing.assert_allclose(h, t_h, atol=ATOL)
        np.testing.assert_allclose(c, t_c, atol=ATOL)
    variables = fflax.to_linen_params(state, merge_biases=True)
    (c, h), _ = nn.OptimizedLSTMCell(features=H).apply(variables, (c0, h0), x)
    np.testing.assert_allclose(h, t_h, atol=ATOL)


def test_flax_msgpack_file_restores_into_flax(tmp_path):
    from flax import serialization

    state = _merged(torch.nn.LSTMCell(IN, H))
    for layout in ("linen", "nnx", "nnx-optimized"):
        path = tmp_path / f"{layout}.msgpack"
        fflax.write_msgpack(state, path, layout=layout)
        restored = serialization.msgpack_restore(path.read_bytes())
        cell = fflax.flax_cell_to_jaxlstm(restored)
        _assert_state_equal(jaxlstm.to_torch(cell), state)


def test_flax_errors_name_what_cannot_be_stored():
    with pytest.raises(ValueError, match="holds one bias per gate.*merge_biases=True"):
        fflax.to_linen_params(_torch_state(torch.nn.LSTMCell(IN, H)))
    for kwargs in (dict(num_layers=2), dict(bidirectional=True)):
        with pytest.raises(ValueError, match="holds one LSTM cell"):
            fflax.to_linen_params(_merged(torch.nn.LSTM(IN, H, **kwargs)))
    with pytest.raises(ValueError, match="no projection"):
        fflax.to_linen_params(_merged(torch.nn.LSTM(IN, H, proj_size=2)))
    params = fflax.to_linen_params(_merged(torch.nn.LSTMCell(IN, H)))["params"]
    del params["hf"]["kernel"]
    with pytest.raises(ValueError, match="missing key 'hf/kernel'"):
        fflax.from_flax_cell(params)
    params["hf"]["kernel"] = np.ones((H + 1, H), np.float32)
    with pytest.raises(ValueError, match="wrong shape for 'hf/kernel'"):
        fflax.from_flax_cell(params)
    odd = nnx.LSTMCell(IN, H, gate_fn=jax.nn.relu, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="custom gate_fn"):
        fflax.from_flax_cell(odd)


def test_bias_free_torch_cell_exports_with_zero_bias_to_flax():
    module = torch.nn.LSTMCell(IN, H, bias=False)
    cell = fflax.to_nnx_cell(_torch_state(module))
    x, h0, c0 = _normal((N, IN)), _normal((N, H), 1), _normal((N, H), 2)
    (c, h), _ = cell((c0, h0), x)
    t_h, _ = module(torch.from_numpy(x), (torch.from_numpy(h0), torch.from_numpy(c0)))
    np.testing.assert_allclose(h, t_h.detach().numpy(), atol=ATOL)


def test_one_bias_rule():
    cell = single_cell(_torch_state(torch.nn.LSTMCell(IN, H)), fmt="X")
    with pytest.raises(ValueError, match="X holds one bias"):
        one_bias(cell, fmt="X", merge_biases=False)
    np.testing.assert_array_equal(one_bias(cell, fmt="X", merge_biases=True),
                                  cell.bias_ih + cell.bias_hh)
    zero_hh = cell._replace(bias_hh=np.zeros_like(cell.bias_hh))
    np.testing.assert_array_equal(one_bias(zero_hh, fmt="X", merge_biases=False), cell.bias_ih)


# --- Keras --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keras():
    from jaxlstm.formats import keras as fkeras  # selects the JAX backend before keras loads

    pytest.importorskip("keras")
    import keras

    return keras, fkeras


@pytest.mark.parametrize("bidirectional", [False, True], ids=["LSTM", "Bidirectional"])
def test_keras_lstm_parity_and_round_trip(keras, bidirectional):
    keras, fkeras = keras
    keras.utils.set_random_seed(0)
    layer = keras.layers.LSTM(H, return_sequences=True, return_state=True)
    if bidirectional:
        layer = keras.layers.Bidirectional(layer)
    layer.build((None, None, IN))
    weights = [w + _normal(w.shape, i) * 0.1 for i, w in enumerate(layer.get_weights())]
    layer.set_weights(weights)  # non-zero biases
    x = _normal((N, T, IN))
    D = 2 if bidirectional else 1
    h0, c0 = _normal((D, N, H), 1), _normal((D, N, H), 2)
    initial = [a for d in range(D) for a in (h0[d], c0[d])]
    y, *states = (np.asarray(a) for a in layer(x, initial_state=initial))
    ported = fkeras.keras_lstm_to_jaxlstm(layer)
    assert ported.config.batch_first and ported.config.bidirectional == bidirectional
    out, (h_n, c_n) = ported(x, (h0, c0))
    np.testing.assert_allclose(out, y, atol=ATOL)
    np.testing.assert_allclose(h_n, np.stack(states[0::2]), atol=ATOL)
    np.testing.assert_allclose(c_n, np.stack(states[1::2]), atol=ATOL)
    back = fkeras.to_keras_lstm(jaxlstm.to_torch(ported))
    for got, want in zip(back.get_weights(), weights):
        np.testing.assert_array_equal(got, want)


def test_torch_lstm_exported_to_keras_matches_torch(keras, tmp_path):
    keras, fkeras = keras
    for bidirectional in (False, True):
        module = torch.nn.LSTM(IN, H, batch_first=True, bidirectional=bidirectional)
        x = _normal((N, T, IN))
        t_out = module(torch.from_numpy(x))[0].detach().numpy()
        layer = fkeras.to_keras_lstm(_torch_state(module), merge_biases=True)
        np.testing.assert_allclose(np.asarray(layer(x)[0]), t_out, atol=ATOL)
        path = tmp_path / f"bi{bidirectional}.keras"
        fkeras.write_keras(_torch_state(module), path, merge_biases=True)
        model = keras.saving.load_model(path)
        np.testing.assert_allclose(np.asarray(model(x)), t_out, atol=ATOL)


def test_keras_weights_list_and_bias_free(keras):
    _, fkeras = keras
    module = torch.nn.LSTM(IN, H, bias=False)
    layer = fkeras.to_keras_lstm(_torch_state(module))
    assert len(layer.get_weights()) == 2
    _assert_state_equal(fkeras.from_keras_lstm(layer.get_weights()), _torch_state(module))


def test_keras_errors_name_what_cannot_be_stored(keras):
    keras, fkeras = keras
    with pytest.raises(ValueError, match="holds one bias per gate"):
        fkeras.to_keras_lstm(_torch_state(torch.nn.LSTM(IN, H)))
    with pytest.raises(ValueError, match="is one layer; this LSTM has num_layers=2"):
        fkeras.to_keras_lstm(_merged(torch.nn.LSTM(IN, H, num_layers=2)))
    with pytest.raises(ValueError, match="no projection"):
        fkeras.to_keras_lstm(_merged(torch.nn.LSTM(IN, H, proj_size=2)))
    with pytest.raises(ValueError, match="not built"):
        fkeras.from_keras_lstm(keras.layers.LSTM(H))
    relu = keras.layers.LSTM(H, activation="relu")
    relu.build((None, None, IN))
    with pytest.raises(ValueError, match="tanh/sigmoid"):
        fkeras.from_keras_lstm(relu)
    summed = keras.layers.Bidirectional(keras.layers.LSTM(H), merge_mode="sum")
    summed.build((None, None, IN))
    with pytest.raises(ValueError, match="merge_mode='concat'"):
        fkeras.from_keras_lstm(summed)
    with pytest.raises(ValueError, match="wrong shape for 'recurrent_kernel'"):
        fkeras.from_keras_lstm([np.ones((IN, 4 * H)), np.ones((H + 1, 4 * H))])


# --- jax.experimental.rnn -----------------------------------------------------------------------


@pytest.mark.parametrize("layers, bidirectional", [(1, False), (2, True)])
def test_jax_rnn_parity_and_round_trip(layers, bidirectional):
    from jax.experimental import rnn

    weights = rnn.init_lstm_weight(jax.random.key(0), IN, H, layers, bidirectional)
    D = 2 if bidirectional else 1
    x, h0, c0 = _normal((N, T, IN)), _normal((D * layers, N, H), 1), _normal((D * layers, N, H), 2)
    unpacked = rnn.unpack_lstm_weights(weights, IN, H, layers, bidirectional)
    y, h_n, c_n = rnn.lstm_ref(x, h0, c0, *unpacked, jnp.full((N,), T, jnp.int32), IN, H, layers,
                               0.0, bidirectional)
    ported = fjax.jax_rnn_to_jaxlstm(weights, IN, H, layers, bidirectional)
    out, (h, c) = ported(x, (h0, c0))
    np.testing.assert_allclose(out, y, atol=ATOL)
    np.testing.assert_allclose(h, h_n, atol=ATOL)
    np.testing.assert_allclose(c, c_n, atol=ATOL)
    flat, sizes = fjax.to_jax_rnn(jaxlstm.to_torch(ported))
    assert sizes == dict(input_size=IN, hidden_size=H, num_layers=layers,
                         bidirectional=bidirectional)
    np.testing.assert_array_equal(flat, np.asarray(weights))


def test_torch_lstm_exported_to_jax_rnn_matches_torch(tmp_path):
    from jax.experimental import rnn

    module = torch.nn.LSTM(IN, H, num_layers=2, bidirectional=True, batch_first=True)
    x = _normal((N, T, IN))
    t_out, (_, t_c) = module(torch.from_numpy(x))
    flat, sizes = fjax.to_jax_rnn(_torch_state(module))
    zeros = np.zeros((4, N, H), np.float32)
    y, h_n, c_n = rnn.lstm_ref(
        x, zeros, zeros, *rnn.unpack_lstm_weights(flat, IN, H, 2, True),
        jnp.full((N,), T, jnp.int32), IN, H, 2, 0.0, True,
    )
    np.testing.assert_allclose(y, t_out.detach().numpy(), atol=ATOL)
    np.testing.assert_allclose(c_n, t_c.detach().numpy(), atol=ATOL)
    fjax.write_npz(_torch_state(module), tmp_path / "w.npz")
    _assert_state_equal(fjax.read_npz(tmp_path / "w.npz"), _torch_state(module))


def test_jax_rnn_bias_free_cell_and_errors():
    module = torch.nn.LSTM(IN, H, bias=False)
    flat, _ = fjax.to_jax_rnn(_torch_state(module))
    state = fjax.from_jax_rnn(flat, IN, H)
    assert not np.any(state["bias_ih_l0"]) and not np.any(state["bias_hh_l0"])
    np.testing.assert_array_equal(state["weight_hh_l0"], _torch_state(module)["weight_hh_l0"])
    cell_flat, sizes = fjax.to_jax_rnn(_torch_state(torch.nn.LSTMCell(IN, H)))
    assert sizes["num_layers"] == 1 and cell_flat.size == flat.size
    with pytest.raises(ValueError, match="no projection"):
        fjax.to_jax_rnn(_torch_state(torch.nn.LSTM(IN, H, proj_size=2)))
    with pytest.raises(ValueError, match=f"vector of {flat.size} values; got shape"):
        fjax.from_jax_rnn(flat[:-1], IN, H)


def test_formats_with_one_dtype_refuse_mixed_dtypes(keras):
    _, fkeras = keras
    state = _merged(torch.nn.LSTM(IN, H))
    state["weight_hh_l0"] = state["weight_hh_l0"].astype(np.float16)
    for export in (fjax.to_jax_rnn, fkeras.to_keras_lstm):
        with pytest.raises(ValueError, match="one dtype, but these mix float16, float32"):
            export(state)


# --- Equinox ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def eqx():
    from jaxlstm.formats import equinox as feqx

    return pytest.importorskip("equinox"), feqx


@pytest.mark.parametrize("use_bias", [True, False])
def test_equinox_cell_parity_and_round_trip(eqx, use_bias):
    eqx, feqx = eqx
    cell = eqx.nn.LSTMCell(IN, H, use_bias=use_bias, key=jax.random.key(3))
    xs, h, c = _normal((T, IN)), _normal((H,), 1), _normal((H,), 2)
    ported = feqx.equinox_cell_to_jaxlstm(cell)
    out, h_j, c_j = _run_cell(ported, xs, h, c)
    for t, x in enumerate(xs):  # Equinox's own forward, one step at a time
        h, c = cell(x, (h, c))
        np.testing.assert_allclose(out[t], h, atol=ATOL)
    np.testing.assert_allclose(c_j, c, atol=ATOL)
    back = feqx.to_equinox_cell(jaxlstm.to_torch(ported))
    assert back.use_bias == use_bias
    for name in ("weight_ih", "weight_hh") + (("bias",) if use_bias else ()):
        np.testing.assert_array_equal(getattr(back, name), getattr(cell, name))


def test_torch_cell_exported_to_equinox_matches_torch(eqx, tmp_path):
    eqx, feqx = eqx
    module = torch.nn.LSTMCell(IN, H)
    x, h0, c0 = _normal((IN,)), _normal((H,), 1), _normal((H,), 2)
    t_h, t_c = module(torch.from_numpy(x), (torch.from_numpy(h0), torch.from_numpy(c0)))
    cell = feqx.to_equinox_cell(_torch_state(module), merge_biases=True)
    h, c = cell(x, (h0, c0))
    np.testing.assert_allclose(h, t_h.detach().numpy(), atol=ATOL)
    np.testing.assert_allclose(c, t_c.detach().numpy(), atol=ATOL)
    feqx.write_equinox(_torch_state(module), tmp_path / "cell.eqx", merge_biases=True)
    like = eqx.nn.LSTMCell(IN, H, key=jax.random.key(0))
    loaded = eqx.tree_deserialise_leaves(tmp_path / "cell.eqx", like)
    np.testing.assert_array_equal(loaded.bias, cell.bias)


def test_equinox_errors(eqx):
    _, feqx = eqx
    with pytest.raises(ValueError, match="holds one bias per gate"):
        feqx.to_equinox_cell(_torch_state(torch.nn.LSTMCell(IN, H)))
    with pytest.raises(ValueError, match="holds one LSTM cell"):
        feqx.to_equinox_cell(_merged(torch.nn.LSTM(IN, H, bidirectional=True)))
    with pytest.raises(TypeError, match="expected an equinox.nn.LSTMCell"):
        feqx.from_equinox_cell(nnx.LSTMCell(IN, H, rngs=nnx.Rngs(0)))


# --- output formats -----------------------------------------------------------------------------


def test_output_format_from_suffix_or_name():
    assert format_for("x.safetensors").name == "safetensors"
    assert format_for("x.keras").name == "keras"
    assert format_for("x.msgpack", "flax-nnx").name == "flax-nnx"
    with pytest.raises(ValueError, match="can be several formats"):
        format_for("x.msgpack")
    with pytest.raises(ValueError, match="cannot tell the output format"):
        format_for("x.bin")
    with pytest.raises(ValueError, match="unknown output format 'tflite'"):
        format_for("x.tflite", "tflite")
    assert {f.suffix for f in OUTPUT_FORMATS.values()} >= {".safetensors", ".npz", ".eqx"}
