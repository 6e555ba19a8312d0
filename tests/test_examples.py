"""The example scripts run, and the numbers they report show what they claim."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TOL = 1e-5


def _load(name: str) -> ModuleType:
    # By path, so the tests do not depend on the repository root being on sys.path.
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


seed_lstm = _load("seed_lstm")
walkthrough = _load("walkthrough")


@pytest.fixture(scope="module")
def seed_result() -> dict[str, Any]:
    return seed_lstm.main([])


@pytest.fixture(scope="module")
def walk_result() -> dict[str, Any]:
    return walkthrough.main([])


def test_seed_prediction_matches_torch(seed_result: dict[str, Any]) -> None:
    jax_pred = np.asarray(seed_result["jax_prediction"])
    torch_pred = np.asarray(seed_result["torch_prediction"])
    assert jax_pred.shape == torch_pred.shape == (1,)  # (batch * output_dim,)
    np.testing.assert_allclose(jax_pred, torch_pred, rtol=0, atol=TOL)
    assert seed_result["max_abs_diff"] < TOL
    assert seed_result["max_abs_diff"] == pytest.approx(np.abs(jax_pred - torch_pred).max())


def test_seed_shapes_are_torchs(seed_result: dict[str, Any]) -> None:
    batch, seq, hidden, layers = seed_lstm.BATCH, seed_lstm.SEQ_LEN, seed_lstm.HIDDEN_DIM, 1
    assert seed_result["out_shape"] == (batch, seq, hidden) == (1, 10, 4)
    assert seed_result["h_n_shape"] == (layers, batch, hidden) == (1, 1, 4)
    assert seed_result["c_n_shape"] == (layers, batch, hidden)


def test_seed_last_output_is_h_n(seed_result: dict[str, Any]) -> None:
    assert seed_result["last_output_equals_h_n"] is True


def test_seed_other_seed_still_matches(seed_result: dict[str, Any]) -> None:
    result = seed_lstm.main(["--seed", "7"])
    assert result["max_abs_diff"] < TOL
    assert result["torch_prediction"] != seed_result["torch_prediction"]


def test_seed_unported_model_differs_from_torch() -> None:
    # Without port_weights the two models must disagree, or the match above would prove nothing.
    from flax import nnx

    torch.manual_seed(0)
    torch_model = seed_lstm.TorchSeedLSTM(3, 4, 1, 1).eval()
    ported = seed_lstm.from_torch_model(torch_model)
    fresh = seed_lstm.SeedLSTM(3, 4, 1, 1, rngs=nnx.Rngs(0))
    x = np.random.default_rng(1).standard_normal((2, 10, 3)).astype(np.float32)
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.asarray(ported(jnp.asarray(x))), expected, rtol=0, atol=TOL)
    assert np.abs(np.asarray(fresh(jnp.asarray(x))) - expected).max() > 1e-3


def test_seed_linear_port_transposes() -> None:
    torch_model = seed_lstm.TorchSeedLSTM(3, 4, 1, 2)
    model = seed_lstm.from_torch_model(torch_model)
    assert model.fc.kernel[...].shape == (4, 2)
    np.testing.assert_array_equal(model.fc.kernel[...], torch_model.fc.weight.detach().numpy().T)
    np.testing.assert_array_equal(model.fc.bias[...], torch_model.fc.bias.detach().numpy())


def test_walkthrough_vocab(walk_result: dict[str, Any]) -> None:
    assert walk_result["vocab"] == {"早": 0, "上": 1, "好": 2}
    assert walk_result["input_shape"] == (1, 3, 20)


@pytest.mark.parametrize(
    "section, expected",
    [
        # torch docs: output (N, L, D*H_out), h_n/c_n (D*num_layers, N, H), batch_first=True.
        ("one_layer", {"output": (1, 3, 100), "h_n": (1, 1, 100), "c_n": (1, 1, 100)}),
        ("two_layers", {"output": (1, 3, 100), "h_n": (2, 1, 100), "c_n": (2, 1, 100)}),
        ("bilstm", {"output": (1, 3, 200), "h_n": (2, 1, 100), "c_n": (2, 1, 100)}),
    ],
)
def test_walkthrough_shapes(walk_result: dict[str, Any], section: str, expected: dict) -> None:
    assert walk_result[section]["shapes"] == expected


@pytest.mark.parametrize(
    "section, num_layers, bidirectional",
    [("one_layer", 1, False), ("two_layers", 2, False), ("bilstm", 1, True)],
)
def test_walkthrough_shapes_match_live_torch(
    walk_result: dict[str, Any], section: str, num_layers: int, bidirectional: bool
) -> None:
    lstm = torch.nn.LSTM(20, 100, num_layers, batch_first=True, bidirectional=bidirectional)
    out, (h_n, c_n) = lstm(torch.zeros(1, 3, 20))
    torch_shapes = {"output": tuple(out.shape), "h_n": tuple(h_n.shape), "c_n": tuple(c_n.shape)}
    assert walk_result[section]["shapes"] == torch_shapes


def test_walkthrough_demonstrations_hold(walk_result: dict[str, Any]) -> None:
    assert walk_result["one_layer"]["last_output_vs_h_n"] < TOL
    assert walk_result["two_layers"]["stacked_vs_two_layer"] < TOL
    assert all(d < TOL for d in walk_result["two_layers"]["diffs"].values())
    assert walk_result["bilstm"]["bi_vs_two_unidirectional"] < TOL
    assert walk_result["bilstm"]["h_n_vs_directions"] < TOL
    assert walk_result["bilstm"]["output_ends_vs_h_n"] < TOL
    assert set(walk_result["bilstm"]["diffs"]) == {"output", "h_n[0]", "h_n[1]", "c_n[0]", "c_n[1]"}


def test_select_params_renames_one_layer_and_direction() -> None:
    import jaxlstm

    lstm = jaxlstm.LSTM(4, 5, num_layers=2, bidirectional=True)
    state = jaxlstm.to_torch(lstm)
    picked = walkthrough.select_params(state, layer=1, reverse=True)
    assert set(picked) == {"weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"}
    np.testing.assert_array_equal(picked["weight_ih_l0"], state["weight_ih_l1_reverse"])
    np.testing.assert_array_equal(picked["bias_hh_l0"], state["bias_hh_l1_reverse"])


def test_walkthrough_checks_can_fail() -> None:
    # The stacking and reversal checks must be sensitive to wrong weights and a missing flip.
    import jaxlstm

    _, x = walkthrough.embed_tokens(walkthrough.TOKENS, seed=0)
    two = jaxlstm.LSTM(20, 100, num_layers=2, batch_first=True)
    out, _ = two(x)
    layer1 = walkthrough.single_layer(two, layer=0, input_size=20)
    wrong_layer2 = jaxlstm.LSTM(100, 100, batch_first=True)
    assert walkthrough.max_abs_diff(wrong_layer2(layer1(x)[0])[0], out) > 1e-3

    bi = jaxlstm.BiLSTM(20, 100, batch_first=True)
    bi_out, _ = bi(x)
    backward = walkthrough.single_layer(bi, layer=0, input_size=20, reverse=True)
    not_flipped_back = backward(x[:, ::-1])[0]
    assert walkthrough.max_abs_diff(not_flipped_back, bi_out[..., 100:]) > 1e-3
