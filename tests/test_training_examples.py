"""Tiny runs of the training examples: they train, plot, and their claims hold where a tiny run
can show them reliably."""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

# The examples import their siblings (`_common`, `seed_lstm`, ...), as when run as scripts.
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

import forecast  # noqa: E402
import port_finetune  # noqa: E402
import tagger  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"
QUIET = ["--no-progress"]


def assert_png(path: Path) -> None:
    assert path.is_file() and path.read_bytes()[:8] == PNG and path.stat().st_size > 5000


def mean(values, part: slice) -> float:
    return float(np.mean(values[part]))


# --- forecast -------------------------------------------------------------------------------


def test_forecast_windows_predict_the_next_value():
    series = np.arange(20, dtype=np.float32)
    (x_train, y_train), (x_test, y_test) = forecast.split_windows(series, window=4)
    assert x_train.shape[1:] == (4, 1)
    np.testing.assert_array_equal(x_train[0, :, 0], [0, 1, 2, 3])
    np.testing.assert_array_equal(y_train, x_train[:, -1, 0] + 1)
    np.testing.assert_array_equal(y_test, x_test[:, -1, 0] + 1)
    assert y_test.min() > y_train.max() and y_test[-1] == 19  # held-out targets come later


def test_forecast_tiny_run_learns(tmp_path, capsys):
    result = forecast.main(QUIET + ["--steps", "40", "--hidden", "8", "--points", "500",
                                    "--window", "16", "--batch-size", "16", "--lr", "2e-2",
                                    "--out", str(tmp_path)])
    losses = result["losses"]
    assert len(losses) == 40 and np.isfinite(losses).all()
    assert mean(losses, slice(-10, None)) < 0.5 * mean(losses, slice(0, 5))
    # Even a tiny model must clearly beat predicting the series' mean (MSE = its variance).
    assert result["test_mse"] < 0.25 * float(np.var(forecast.make_series(500, 0.1, 0)[1]))
    assert_png(result["plot"])
    assert "forecast: held-out MSE" in capsys.readouterr().out.strip().splitlines()[-1]


# --- tagger ---------------------------------------------------------------------------------


def brute_force_labels(tokens, offset):
    labels, mask = [], []
    for t in range(len(tokens)):
        inside = t - offset >= 0 and t + offset < len(tokens)
        labels.append(int(tokens[t - offset] + tokens[t + offset]) if inside else 0)
        mask.append(inside)
    return labels, mask


def test_tagger_batches_follow_the_task_definition():
    task = tagger.Task(num_tokens=3, offset=2, min_length=5, max_length=9)
    batch = tagger.make_batch(np.random.default_rng(0), 16, task)
    assert batch["tokens"].shape == batch["labels"].shape == batch["mask"].shape == (16, 9)
    assert set(np.unique(batch["lengths"])) <= set(range(5, 10))
    for tokens, labels, mask, length in zip(batch["tokens"], batch["labels"], batch["mask"],
                                            batch["lengths"]):
        expected_labels, expected_mask = brute_force_labels(tokens[:length], 2)
        assert labels[:length].tolist() == expected_labels
        assert mask[:length].tolist() == expected_mask
        assert not mask[length:].any() and not tokens[length:].any()
    assert batch["labels"].max() <= task.num_classes - 1


@pytest.fixture(scope="module")
def tiny_taggers():
    task = tagger.Task()
    models = {bi: tagger.make_model(task, 8, bidirectional=bi) for bi in (True, False)}
    return task, {bi: (m, tagger.init_params(m, task, seed=0)) for bi, m in models.items()}


def test_only_the_bilstm_sees_the_future(tiny_taggers):
    # Why a unidirectional tagger cannot solve the task: its output at t ignores x[t+1:].
    task, models = tiny_taggers
    batch = tagger.make_batch(np.random.default_rng(1), 4, task)
    lengths = np.full(4, task.max_length, np.int32)
    t = 10
    changed = batch["tokens"].copy()
    changed[:, t + 1:] = (changed[:, t + 1:] + 1) % task.num_tokens
    for bidirectional, (model, params) in models.items():
        a = model.apply({"params": params}, batch["tokens"], lengths)
        b = model.apply({"params": params}, changed, lengths)
        tags_up_to_t_unchanged = np.array_equal(a[:, : t + 1], b[:, : t + 1])
        assert tags_up_to_t_unchanged == (not bidirectional)


def test_padding_never_reaches_the_tags(tiny_taggers):
    task, models = tiny_taggers
    model, params = models[True]
    batch = tagger.make_batch(np.random.default_rng(2), 8, task)
    noisy = batch["tokens"].copy()
    padding = np.arange(task.max_length)[None, :] >= batch["lengths"][:, None]
    noisy[padding] = np.random.default_rng(3).integers(0, task.num_tokens, padding.sum())
    a = model.apply({"params": params}, batch["tokens"], batch["lengths"])
    b = model.apply({"params": params}, noisy, batch["lengths"])
    np.testing.assert_allclose(np.asarray(a)[~padding], np.asarray(b)[~padding], atol=1e-6)


def test_tagger_tiny_run_learns(tmp_path, capsys):
    result = tagger.main(QUIET + ["--steps", "25", "--hidden", "8", "--batch-size", "16",
                                  "--eval-size", "200", "--out", str(tmp_path)])
    for losses in result["losses"].values():
        assert len(losses) == 25 and np.isfinite(losses).all()
        assert mean(losses, slice(-5, None)) < mean(losses, slice(0, 5))
    assert set(result["accuracy"]) == {"BiLSTM", "LSTM"}
    # No model without the future does better than 1/V in expectation; allow sampling noise.
    assert result["accuracy"]["LSTM"] < result["chance"] + 0.05
    assert_png(result["plot"])
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("tagger: BiLSTM")


def test_tagger_loss_is_cross_entropy_over_labelled_tokens_only(tiny_taggers):
    task, models = tiny_taggers
    model, params = models[True]
    batch = tagger.make_batch(np.random.default_rng(4), 8, task)
    logits = model.apply({"params": params}, batch["tokens"], batch["lengths"])
    log_p = jax.nn.log_softmax(logits)
    picked = jnp.take_along_axis(log_p, batch["labels"][..., None], -1)[..., 0]
    expected = -picked[batch["mask"]].mean()
    np.testing.assert_allclose(tagger.loss_fn(model, params, batch), expected, rtol=1e-5)


# --- port and fine-tune ---------------------------------------------------------------------


def test_port_finetune_tiny_run(tmp_path, capsys):
    result = port_finetune.main(QUIET + ["--torch-steps", "5", "--steps", "25", "--hidden", "8",
                                         "--points", "400", "--window", "12",
                                         "--out", str(tmp_path)])
    assert result["port_diff"] < 1e-5
    assert result["export_diff"] < 1e-5
    assert result["train_mse_after"] < result["train_mse_before"]
    assert result["checkpoint"].is_file()
    assert_png(result["plot"])
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("port_finetune: ported")


def test_port_transposes_the_linear_layer_and_matters():
    torch.manual_seed(0)
    reference = port_finetune.TorchSeedLSTM(2, 5, 1, 3)
    model, variables = port_finetune.port(reference)
    np.testing.assert_array_equal(variables["params"]["fc"]["kernel"],
                                  reference.fc.weight.detach().numpy().T)
    x = np.random.default_rng(0).standard_normal((4, 6, 2)).astype(np.float32)
    expected = reference(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(model.apply(variables, x), expected, atol=1e-6)
    fresh = model.init(jax.random.key(0), x)
    assert np.abs(model.apply(fresh, x) - expected).max() > 1e-3
    state = port_finetune.torch_state(variables)
    np.testing.assert_array_equal(state["fc"]["weight"], reference.fc.weight.detach().numpy())
