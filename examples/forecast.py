"""Train the seed's model (``jaxlstm.LSTM`` + ``Linear`` on the last step) with optax to forecast
a noisy multi-sine time series, one step ahead.

The model is ``SeedLSTM`` from ``seed_lstm.py`` (Flax NNX), unchanged: an LSTM reads a window of
past values, a linear layer maps the last step's output to the next value. It trains with
``optax.adam`` through ``nnx.Optimizer``; the last 20% of the series is held out. The script
reports the held-out mean squared error next to two references: the noise variance (the best any
model can do) and the "repeat the last value" baseline, and plots prediction vs truth.

Run from the repository root::

    python examples/forecast.py [--steps 1200] [--hidden 32] [--out examples/out]
"""

from __future__ import annotations

import argparse
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import add_common_args, output_dir, plt, progress, save_figure
from flax import nnx
from seed_lstm import SeedLSTM

PERIODS = (23.0, 41.0, 67.0)
AMPLITUDES = (1.0, 0.6, 0.4)


def make_series(num_points: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A sum of sines with random phases, and the same plus Gaussian noise: ``(clean, noisy)``."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_points)
    clean = sum(
        a * np.sin(2 * np.pi * t / p + rng.uniform(0, 2 * np.pi))
        for a, p in zip(AMPLITUDES, PERIODS)
    )
    noisy = clean + noise * rng.standard_normal(num_points)
    return clean.astype(np.float32), noisy.astype(np.float32)


def make_windows(series: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs ``(N, window, 1)`` (batch first) of past values and next-value targets ``(N,)``."""
    starts = np.arange(len(series) - window)
    x = series[starts[:, None] + np.arange(window)[None, :]][..., None]
    return x, series[starts + window]


def split_windows(series: np.ndarray, window: int, train_fraction: float = 0.8):
    """Training and held-out windows; every held-out target lies after all training targets."""
    x, y = make_windows(series, window)
    cut = int(len(series) * train_fraction) - window
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])


def mse(prediction: Any, target: Any) -> float:
    return float(np.mean((np.asarray(prediction).ravel() - np.asarray(target).ravel()) ** 2))


@nnx.jit
def train_step(model: SeedLSTM, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array):
    def loss_fn(model: SeedLSTM) -> jax.Array:
        return jnp.mean((model(x)[:, 0] - y) ** 2)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def predict(model: SeedLSTM, x: jax.Array) -> jax.Array:
    return model(x)[:, 0]


def plot(path, losses, held_out_truth, held_out_pred, noisy_target, title) -> None:
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6))
    top.plot(losses, lw=0.8)
    top.set(yscale="log", xlabel="step", ylabel="training MSE (batch)", title=title)
    shown = slice(0, min(300, len(held_out_truth)))
    bottom.plot(noisy_target[shown], ".", ms=3, color="0.6", label="noisy observation")
    bottom.plot(held_out_truth[shown], lw=1.5, label="truth (noise-free)")
    bottom.plot(held_out_pred[shown], lw=1.2, label="LSTM one-step forecast")
    bottom.set(xlabel="held-out step", ylabel="value")
    bottom.legend(loc="upper right", fontsize=8)
    save_figure(figure, path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train, evaluate on the held-out tail, plot, print one result line, return the numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, steps=1200)
    parser.add_argument("--hidden", type=int, default=32, help="LSTM hidden size")
    parser.add_argument("--window", type=int, default=48, help="past values per input")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--points", type=int, default=3000, help="length of the series")
    parser.add_argument("--noise", type=float, default=0.1, help="noise standard deviation")
    parser.add_argument("--lr", type=float, default=5e-3)
    args = parser.parse_args(argv)
    out = output_dir(args.out)

    clean, noisy = make_series(args.points, args.noise, args.seed)
    (x_train, y_train), (x_test, y_test) = split_windows(noisy, args.window)
    _, (_, clean_test) = split_windows(clean, args.window)

    model = SeedLSTM(1, args.hidden, 1, 1, rngs=nnx.Rngs(args.seed))
    # Cosine decay settles the weights at the end; clipping guards early steps.
    schedule = optax.cosine_decay_schedule(args.lr, args.steps, alpha=0.05)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    rng = np.random.default_rng(args.seed + 1)
    losses = []
    bar = progress(args.steps, "forecast", disable=args.no_progress)
    for step in bar:
        index = rng.integers(0, len(x_train), args.batch_size)
        losses.append(float(train_step(model, optimizer, x_train[index], y_train[index])))
        if step % 20 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
    bar.close()

    prediction = np.asarray(predict(model, jnp.asarray(x_test)))
    result = {
        "losses": losses,
        "test_mse": mse(prediction, y_test),
        "test_mse_vs_clean": mse(prediction, clean_test),
        "last_value_mse": mse(x_test[:, -1, 0], y_test),
        "noise_variance": args.noise**2,
        "num_test": len(y_test),
    }
    result["plot"] = out / "forecast.png"
    plot(result["plot"], losses, clean_test, prediction, y_test,
         f"seed model (LSTM {args.hidden} + Linear), optax adam, {args.steps} steps")
    print(
        f"forecast: held-out MSE {result['test_mse']:.4f} on {len(y_test)} steps "
        f"(noise floor {result['noise_variance']:.4f}, repeat-last-value baseline "
        f"{result['last_value_mse']:.4f}); plot: {result['plot']}"
    )
    return result


if __name__ == "__main__":
    main()
