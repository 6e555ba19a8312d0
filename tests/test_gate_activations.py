"""Hard-sigmoid gates (Keras 2, Keras 3, ONNX ``HardSigmoid``): every schedule and both
derivative modes against :mod:`jaxlstm.reference` (independent float64 NumPy loops) and finite
differences, TensorFlow's derivative at the kinks, the modules' attribute and refusals.
Files (Keras, ONNX) are tested in ``test_keras_files.py`` and ``test_onnx_files.py``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

import jaxlstm
from jaxlstm import reference
from jaxlstm.config import LSTMCellConfig, LSTMConfig
from jaxlstm.functional import Layered, Remat, Wavefront, lstm, lstm_cell
from jaxlstm.functional.cells import LSTM_CELL, HardSigmoidLSTM, lstm_cell_for
from jaxlstm.functional.cells.base import step
from jaxlstm.gates import KERAS2, KERAS3

GATES = {"keras2": KERAS2, "keras3": KERAS3, "onnx": jaxlstm.HardSigmoid(0.7, 0.3)}
CASES = {
    "2 layers": dict(num_layers=2),
    "bidirectional": dict(num_layers=2, bidirectional=True),
    "proj batch_first": dict(num_layers=2, proj_size=2, batch_first=True),
}
SCHEDULES = {"layered": Layered(), "remat": Remat(2), "wavefront": Wavefront()}


def _setup(gate, case, seed=0, steps=6, batch=3):
    config = LSTMConfig.create(3, 4, gate_activation=gate, **CASES[case])
    rng = np.random.default_rng(seed)
    params = {k: rng.standard_normal(s) for k, s in config.param_shapes().items()}
    shape = (batch, steps) if config.batch_first else (steps, batch)
    x = rng.standard_normal((*shape, 3))
    states = config.num_layers * config.num_directions
    hx = (rng.standard_normal((states, batch, config.output_size)),
          rng.standard_normal((states, batch, config.hidden_size)))
    return config, params, x, hx


def _schedules(config):
    return [s for name, s in SCHEDULES.items()
            if not (name == "wavefront" and config.bidirectional)]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("gate", GATES)
def test_every_schedule_matches_the_numpy_reference(gate, case):
    config, params, x, hx = _setup(GATES[gate], case)
    want = reference.lstm(params, x, hx, config=config)
    with jax.enable_x64(True):
        for schedule in _schedules(config):
            out, (h_n, c_n) = lstm(params, x, hx, config=config, schedule=schedule)
            for got, expected in zip((out, h_n, c_n), want):
                assert np.abs(np.asarray(got) - expected).max() <= 1e-10 * np.abs(
                    expected).max(), schedule
    out32 = lstm({k: v.astype(np.float32) for k, v in params.items()}, x.astype(np.float32),
                 tuple(a.astype(np.float32) for a in hx), config=config)[0]
    assert np.abs(np.asarray(out32) - want[0]).max() <= 1e-5 * np.abs(want[0]).max()


@pytest.mark.parametrize("gate", GATES)
def test_nan_padding_reaches_no_value_or_gradient(gate):
    config, params, x, hx = _setup(GATES[gate], "bidirectional")
    lengths = np.array([6, 2, 4])
    padded = x.copy()
    for n, length in enumerate(lengths):
        padded[length:, n] = np.nan
    want = reference.lstm(params, x, hx, config=config, seq_lengths=lengths)
    with jax.enable_x64(True):
        def loss(params, x):
            out, (h, c) = lstm(params, x, hx, config=config, seq_lengths=lengths)
            return jnp.sum(out ** 2) + jnp.sum(h) + jnp.sum(c ** 2), (out, h, c)

        grads, values = jax.grad(loss, argnums=(0, 1), has_aux=True)(params, padded)
    for got, expected in zip(values, want):
        assert np.abs(np.asarray(got) - expected).max() <= 1e-10 * np.abs(expected).max()
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("gate", GATES)
def test_gradients_match_finite_differences_in_both_modes(gate, case):
    config, params, x, hx = _setup(GATES[gate], case, seed=1, steps=4, batch=2)
    with jax.enable_x64(True):
        for schedule in _schedules(config):
            def run(params, x, hx, schedule=schedule):
                out, (h, c) = lstm(params, x, hx, config=config, schedule=schedule)
                return out, h, c

            # Random inputs put no pre-activation within eps of a kink.
            check_grads(run, (params, x, hx), order=1, modes=("fwd", "rev"), eps=1e-6)


@pytest.mark.parametrize("gate", GATES)
def test_the_gradient_is_the_numpy_references(gate):
    config, params, x, _ = _setup(GATES[gate], "bidirectional", seed=2)
    errors = reference.compare(config, params, "float64", x=x)
    assert max(errors[k] for k in ("output", "h_n", "c_n")) <= 1e-10
    assert errors["gradient (directional)"] <= 1e-6


def test_some_gates_saturate_so_the_clipped_branch_is_exercised():
    config, params, x, hx = _setup(KERAS2, "2 layers")
    z = x[0] @ params["weight_ih_l0"].T + params["bias_ih_l0"] + params["bias_hh_l0"]
    u = 0.2 * z + 0.5
    assert (u < 0).any() and (u > 1).any() and ((u > 0) & (u < 1)).any()


@pytest.mark.parametrize("side", ["lower", "upper"])
def test_the_derivative_at_a_kink_is_tensorflows_alpha(side):
    """TF's ``clip_by_value`` gradient passes where the clipped value equals a bound, so
    ``hs'`` is ``alpha`` at ``u = 0`` and ``u = 1``, and 0 just beyond."""
    gate = jaxlstm.HardSigmoid(0.25, 0.5)  # u = 0.25 z + 0.5 is exactly 0 / 1 at z = -2 / 2
    cell = HardSigmoidLSTM(gate)
    kink = -2.0 if side == "lower" else 2.0
    beyond = kink * 1.001
    with jax.enable_x64(True):
        c = jnp.array([[0.7]])
        for z_o, slope in ((kink, 0.25), (beyond, 0.0)):
            gates = jnp.array([[0.3, 0.4, 0.5, z_o]])

            def h_of(z, gates=gates):
                gates = gates.at[0, 3].set(z)
                return step(cell, gates, jnp.zeros_like(gates), None, c)[0][0, 0]

            c_new = 0.6 * 0.7 + 0.575 * np.tanh(0.5)  # hs(f) c + hs(i) tanh(g)
            want = pytest.approx(slope * np.tanh(c_new), rel=1e-14, abs=0)
            assert float(jax.grad(h_of)(z_o)) == want
            assert float(jax.jvp(h_of, (z_o,), (1.0,))[1]) == want


def test_lstm_cell_and_the_modules_take_the_gate_activation():
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        cell = jaxlstm.LSTMCell(3, 4, gate_activation=KERAS3, rngs=nnx.Rngs(0),
                                param_dtype=jnp.float64)
        x, h, c = rng.standard_normal((2, 3)), rng.standard_normal((2, 4)), rng.standard_normal(
            (2, 4))
        as_lstm = LSTMConfig.create(3, 4, gate_activation=KERAS3)
        params = {f"{k}_l0": v for k, v in cell.params().items()}
        want = reference.lstm(params, x[None], (h[None], c[None]), config=as_lstm)
        got = cell(x, (h, c))
        assert np.abs(np.asarray(got[0]) - want[0][0]).max() <= 1e-12
        assert np.abs(np.asarray(got[1]) - want[2][0]).max() <= 1e-12
        config = LSTMCellConfig.create(3, 4, gate_activation=KERAS3)
        assert np.abs(np.asarray(lstm_cell(cell.params(), x, (h, c), config=config)[0])
                      - want[0][0]).max() <= 1e-12
        model = jaxlstm.BiLSTM(3, 4, gate_activation=KERAS2, rngs=nnx.Rngs(1))
        linen = jaxlstm.linen.BiLSTM(3, 4, gate_activation=KERAS2)
        xs = rng.standard_normal((5, 2, 3)).astype(np.float32)
        variables = {"params": model.params()}
        assert np.abs(np.asarray(linen.apply(variables, xs)[0]) - np.asarray(model(xs)[0])
                      ).max() <= 1e-6
    assert model.gate_activation == KERAS2 and cell.gate_activation == KERAS3
    assert jaxlstm.LSTM(3, 4).gate_activation == "sigmoid"
    assert lstm_cell_for(LSTMConfig.create(3, 4).gate_activation) is LSTM_CELL  # unchanged
    assert hash(LSTMConfig.create(3, 4, gate_activation=jaxlstm.HardSigmoid(0.2)))


def test_the_attribute_is_read_only_and_torch_refuses_the_model():
    model = jaxlstm.LSTM(3, 4, gate_activation=KERAS2)
    with pytest.raises(AttributeError, match="gate_activation is read-only"):
        model.gate_activation = "sigmoid"
    for convert in (jaxlstm.to_torch, jaxlstm.to_torch_module):
        with pytest.raises(ValueError, match="cannot hold hard-sigmoid gates"):
            convert(model)
    with pytest.raises(ValueError, match="cannot hold hard-sigmoid gates"):
        jaxlstm.to_torch(jaxlstm.LSTMCell(3, 4, gate_activation=KERAS3))


@pytest.mark.parametrize("value, match", [
    ("hard_sigmoid", "gate_activation must be.*HardSigmoid\\(0.2, 0.5\\)"),
    ("relu", "gate_activation must be 'sigmoid'"),
    (0.2, "gate_activation must be"),
])
def test_bad_gate_activations_name_the_argument(value, match):
    with pytest.raises(ValueError, match=match):
        jaxlstm.LSTM(3, 4, gate_activation=value)
    with pytest.raises(ValueError, match=match):
        jaxlstm.LSTMCell(3, 4, gate_activation=value)


@pytest.mark.parametrize("alpha, beta", [(0.0, 0.5), (float("nan"), 0.5), (0.2, "x"),
                                         (True, 0.5)])
def test_bad_hard_sigmoid_constants_are_refused(alpha, beta):
    with pytest.raises(ValueError, match="HardSigmoid"):
        jaxlstm.HardSigmoid(alpha, beta)


def test_the_reference_report_names_a_mismatch(monkeypatch):
    config, params, x, _ = _setup(KERAS2, "2 layers", steps=4, batch=2)
    table, failures = reference.report(config, params, ["float64"], x=x)
    assert not failures and "gradient (directional)" in table
    # A reference with Keras 3's constants disagrees with a port of Keras 2's.
    monkeypatch.setattr(reference, "gate_function", lambda gate: (
        lambda z: np.clip(z / 6 + 0.5, 0.0, 1.0)))
    table, failures = reference.report(config, params, ["float64"], x=x)
    assert any(f.startswith("output (float64)") for f in failures) and "FAIL" in table
