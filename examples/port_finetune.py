"""Port and fine-tune: train in torch, port to JAX (Flax Linen), fine-tune with optax, export back.

1. Train the seed's torch model (``nn.LSTM(batch_first=True)`` + ``nn.Linear`` on the last step,
   ``TorchSeedLSTM`` from ``seed_lstm.py``) briefly on the forecasting task of ``forecast.py``.
2. Port it: the LSTM's ``state_dict`` becomes Linen params with
   :func:`jaxlstm.linen.params_from_torch` (same names, no renaming); the linear layer's
   ``weight (out, in)`` becomes a Flax ``kernel (in, out)``. Show that JAX predicts what torch
   predicts.
3. Fine-tune in JAX with ``optax.adam``.
4. Export back: the whole model's weights go to a safetensors file under torch's names
   (:func:`jaxlstm.checkpoint.save_safetensors`); a fresh torch model loads it with
   ``load_state_dict(safetensors.torch.load_file(path), strict=True)`` and reproduces the JAX
   predictions.

Run from the repository root::

    python examples/port_finetune.py [--torch-steps 100] [--steps 600] [--out examples/out]
"""

from __future__ import annotations

import argparse
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from _common import add_common_args, output_dir, plt, progress, save_figure
from forecast import make_series, mse, split_windows
from safetensors.torch import load_file
from seed_lstm import TorchSeedLSTM

import jaxlstm.linen
from jaxlstm.checkpoint import save_safetensors


class SeedLinen(nn.Module):
    """The seed's model in Flax Linen: ``jaxlstm.linen.LSTM`` (batch first) + ``nn.Dense``."""

    input_dim: int
    hidden_dim: int
    num_layers: int
    output_dim: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``x``: ``(N, L, input_dim)`` -> ``(N, output_dim)`` from the last step's output."""
        lstm = jaxlstm.linen.LSTM(
            self.input_dim, self.hidden_dim, self.num_layers, batch_first=True, name="lstm"
        )
        out, _ = lstm(x)
        return nn.Dense(self.output_dim, name="fc")(out[:, -1, :])


def port(torch_model: TorchSeedLSTM) -> tuple[SeedLinen, dict[str, Any]]:
    """The Linen model and its variables, holding ``torch_model``'s weights."""
    lstm = torch_model.lstm
    model = SeedLinen(lstm.input_size, lstm.hidden_size, lstm.num_layers,
                      torch_model.fc.out_features)
    fc = {name: value.detach().numpy() for name, value in torch_model.fc.state_dict().items()}
    params = {
        "lstm": jaxlstm.linen.params_from_torch(lstm)["params"],
        # torch.nn.Linear computes x @ weight.T; flax.linen.Dense computes x @ kernel.
        "fc": {"kernel": jnp.asarray(fc["weight"].T), "bias": jnp.asarray(fc["bias"])},
    }
    return model, {"params": params}


def torch_state(variables: dict[str, Any]) -> dict[str, Any]:
    """The Linen model's weights as the torch model's ``state_dict`` layout (nested by module)."""
    params = variables["params"]
    return {
        "lstm": jaxlstm.linen.to_torch(params["lstm"]),
        "fc": {"weight": np.asarray(params["fc"]["kernel"]).T,
               "bias": np.asarray(params["fc"]["bias"])},
    }


def train_torch(model: TorchSeedLSTM, x: np.ndarray, y: np.ndarray, *, steps: int, lr: float,
                batch_size: int, seed: int, disable_progress: bool) -> list[float]:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    losses = []
    for _ in progress(steps, "torch training", disable=disable_progress):
        index = rng.integers(0, len(x), batch_size)
        loss = torch.mean((model(torch.from_numpy(x[index]))[:, 0]
                           - torch.from_numpy(y[index])) ** 2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def finetune_jax(model: SeedLinen, variables: dict[str, Any], x: np.ndarray, y: np.ndarray, *,
                 steps: int, lr: float, batch_size: int, seed: int,
                 disable_progress: bool) -> tuple[dict[str, Any], list[float]]:
    tx = optax.adam(lr)
    params = variables["params"]
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, x, y):
        def loss_fn(params):
            return jnp.mean((model.apply({"params": params}, x)[:, 0] - y) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(seed)
    losses = []
    for _ in progress(steps, "JAX fine-tuning", disable=disable_progress):
        index = rng.integers(0, len(x), batch_size)
        params, opt_state, loss = step(params, opt_state, x[index], y[index])
        losses.append(float(loss))
    return {"params": params}, losses


def torch_predict(model: TorchSeedLSTM, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x))[:, 0].numpy()


def plot(path, torch_losses, jax_losses, truth, before, after) -> None:
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6))
    top.plot(np.arange(len(torch_losses)), torch_losses, lw=0.8, label="torch (nn.LSTM)")
    top.plot(len(torch_losses) + np.arange(len(jax_losses)), jax_losses, lw=0.8,
             label="JAX fine-tuning (jaxlstm.linen)")
    top.set(yscale="log", xlabel="step", ylabel="training MSE (batch)",
            title="train in torch, port, fine-tune in JAX")
    top.legend()
    shown = slice(0, min(300, len(truth)))
    bottom.plot(truth[shown], ".", ms=3, color="0.6", label="held-out observation")
    bottom.plot(before[shown], lw=1.0, label="after torch training (= ported JAX)")
    bottom.plot(after[shown], lw=1.2, label="after JAX fine-tuning (= torch reloaded)")
    bottom.set(xlabel="held-out step", ylabel="value")
    bottom.legend(loc="upper right", fontsize=8)
    save_figure(figure, path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the four stages, check both ports numerically, plot, print one result line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, steps=600)
    parser.add_argument("--torch-steps", type=int, default=100, help="torch training steps")
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--window", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--points", type=int, default=3000)
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args(argv)
    out = output_dir(args.out)

    _, noisy = make_series(args.points, 0.1, args.seed)
    (x_train, y_train), (x_test, y_test) = split_windows(noisy, args.window)

    torch.manual_seed(args.seed)
    torch_model = TorchSeedLSTM(1, args.hidden, 1, 1)
    torch_losses = train_torch(
        torch_model, x_train, y_train, steps=args.torch_steps, lr=args.lr,
        batch_size=args.batch_size, seed=args.seed, disable_progress=args.no_progress,
    )
    torch_model.eval()
    torch_before = torch_predict(torch_model, x_test)

    model, variables = port(torch_model)
    apply = jax.jit(model.apply)
    jax_before = np.asarray(apply(variables, x_test))[:, 0]
    port_diff = float(np.max(np.abs(jax_before - torch_before)))

    variables, jax_losses = finetune_jax(
        model, variables, x_train, y_train, steps=args.steps, lr=args.lr,
        batch_size=args.batch_size, seed=args.seed + 1, disable_progress=args.no_progress,
    )
    jax_after = np.asarray(apply(variables, x_test))[:, 0]

    checkpoint = save_safetensors(torch_state(variables), out / "port_finetune.safetensors",
                                  force=True)
    reloaded = TorchSeedLSTM(1, args.hidden, 1, 1)
    reloaded.load_state_dict(load_file(checkpoint), strict=True)
    reloaded.eval()
    torch_after = torch_predict(reloaded, x_test)
    export_diff = float(np.max(np.abs(torch_after - jax_after)))

    result = {
        "torch_losses": torch_losses,
        "jax_losses": jax_losses,
        "port_diff": port_diff,
        "export_diff": export_diff,
        "test_mse_torch": mse(torch_before, y_test),
        "test_mse_finetuned": mse(jax_after, y_test),
        "train_mse_before": mse(torch_predict(torch_model, x_train), y_train),
        "train_mse_after": mse(torch_predict(reloaded, x_train), y_train),
        "checkpoint": checkpoint,
        "plot": out / "port_finetune.png",
    }
    plot(result["plot"], torch_losses, jax_losses, y_test, jax_before, jax_after)
    print(
        f"port_finetune: ported JAX == torch (max |diff| {port_diff:.1e}); held-out MSE "
        f"{result['test_mse_torch']:.4f} after {args.torch_steps} torch steps -> "
        f"{result['test_mse_finetuned']:.4f} after {args.steps} JAX steps; torch reloaded from "
        f"{checkpoint.name} reproduces JAX (max |diff| {export_diff:.1e}); plot: {result['plot']}"
    )
    return result


if __name__ == "__main__":
    main()
