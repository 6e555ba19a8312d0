"""Port of a small tutorial model (LSTM + linear head) from PyTorch to JAX with jaxlstm.

The PyTorch original runs an ``nn.LSTM(batch_first=True)`` over a sequence and feeds the last
time step's output to an ``nn.Linear``. This script defines the same model twice:

- ``TorchSeedLSTM``: the PyTorch original, unchanged.
- ``SeedLSTM``: the Flax NNX version, ``jaxlstm.LSTM`` + ``nnx.Linear``.

It copies the torch weights into the JAX model (``port_weights``), runs both on the same input,
and shows that they agree to float32 rounding. It also shows that for a unidirectional LSTM the
last output step ``out[:, -1, :]`` *is* the final hidden state ``h_n[-1]``.

Run from the repository root::

    python examples/seed_lstm.py [--seed 0]
"""

from __future__ import annotations

import argparse
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

import jaxlstm

INPUT_DIM, HIDDEN_DIM, NUM_LAYERS, OUTPUT_DIM = 3, 4, 1, 1
BATCH, SEQ_LEN = 1, 10


class TorchSeedLSTM(torch.nn.Module):
    """The PyTorch tutorial model: LSTM over the sequence, linear layer on the last step."""

    def __init__(self, input_dim: int, hidden_dim: int, num_layers: int, output_dim: int):
        super().__init__()
        self.hidden_dim, self.num_layers = hidden_dim, num_layers
        self.lstm = torch.nn.LSTM(input_dim, hidden_dim, num_layers, batch_first=True)
        self.fc = torch.nn.Linear(hidden_dim, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h0 = torch.zeros(self.num_layers, x.size(0), self.hidden_dim)
        c0 = torch.zeros(self.num_layers, x.size(0), self.hidden_dim)
        out, (hn, cn) = self.lstm(x, (h0, c0))
        return self.fc(out[:, -1, :])


class SeedLSTM(nnx.Module):
    """The same model in Flax NNX: ``jaxlstm.LSTM`` (batch first) followed by ``nnx.Linear``."""

    def __init__(
        self, input_dim: int, hidden_dim: int, num_layers: int, output_dim: int, *, rngs: nnx.Rngs
    ):
        self.hidden_dim, self.num_layers = hidden_dim, num_layers
        self.lstm = jaxlstm.LSTM(input_dim, hidden_dim, num_layers, batch_first=True, rngs=rngs)
        self.fc = nnx.Linear(hidden_dim, output_dim, rngs=rngs)

    def initial_state(
        self, batch_size: int, dtype: Any = jnp.float32
    ) -> tuple[jax.Array, jax.Array]:
        """Zero ``(h0, c0)``, each ``(num_layers, batch, hidden_dim)`` — not batch first."""
        shape = (self.num_layers, batch_size, self.hidden_dim)
        return jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        out, (hn, cn) = self.lstm(x, self.initial_state(x.shape[0], x.dtype))
        return self.fc(out[:, -1, :])


def port_weights(torch_model: TorchSeedLSTM, model: SeedLSTM) -> None:
    """Copy all weights of ``torch_model`` into ``model`` in place."""
    # jaxlstm parameters use torch's names and layouts, so the LSTM state_dict loads as is.
    jaxlstm.load_params(model.lstm, torch_model.lstm.state_dict())
    # torch.nn.Linear computes x @ W.T with W (out, in); nnx.Linear computes x @ kernel with
    # kernel (in, out).
    weight = torch_model.fc.weight.detach().numpy()
    bias = torch_model.fc.bias.detach().numpy()
    model.fc.kernel[...] = jnp.asarray(weight.T)
    model.fc.bias[...] = jnp.asarray(bias)


def from_torch_model(torch_model: TorchSeedLSTM) -> SeedLSTM:
    """A ``SeedLSTM`` with the architecture and weights of ``torch_model``."""
    lstm = torch_model.lstm
    model = SeedLSTM(
        lstm.input_size, lstm.hidden_size, lstm.num_layers, torch_model.fc.out_features,
        rngs=nnx.Rngs(0),
    )
    port_weights(torch_model, model)
    return model


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Port the tutorial model, compare it with torch, print a report, return the numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="seed for torch init and the input")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    torch_model = TorchSeedLSTM(INPUT_DIM, HIDDEN_DIM, NUM_LAYERS, OUTPUT_DIM).eval()
    model = from_torch_model(torch_model)

    x_np = np.random.default_rng(args.seed).standard_normal((BATCH, SEQ_LEN, INPUT_DIM))
    x_np = x_np.astype(np.float32)
    x = jnp.asarray(x_np)

    with torch.no_grad():
        torch_pred = torch_model(torch.from_numpy(x_np)).numpy()
    jax_pred = np.asarray(model(x))
    max_abs_diff = float(np.max(np.abs(jax_pred - torch_pred)))

    print(f"input x: shape {x.shape} (batch, seq_len, input_dim), float32, seed {args.seed}")
    print(f"torch prediction:   {torch_pred.ravel()}")
    print(f"jaxlstm prediction: {jax_pred.ravel()}")
    print(f"max |jaxlstm - torch| = {max_abs_diff:.1e}")

    out, (h_n, c_n) = model.lstm(x, model.initial_state(BATCH))
    print(f"out: {out.shape} (batch, seq_len, hidden) — batch_first applies to out")
    print(f"h_n: {h_n.shape} (num_layers, batch, hidden) — never batch first")
    print(f"c_n: {c_n.shape} (num_layers, batch, hidden)")

    last_output = np.asarray(out[:, -1, :])
    last_hidden = np.asarray(h_n[-1])
    last_output_equals_h_n = bool(np.array_equal(last_output, last_hidden))
    print(f"out[:, -1, :] = {last_output.ravel()}")
    print(f"h_n[-1]       = {last_hidden.ravel()}")
    print(f"out[:, -1, :] == h_n[-1]: {last_output_equals_h_n}")
    print(
        "why: an LSTM's outputs are its hidden states h(t) of the last layer, so the last step "
        "is h_n; the FC head is outside the LSTM and only sees that vector."
    )

    matches = max_abs_diff < 1e-5
    verdict = "matches" if matches else "DOES NOT match"
    print(f"seed example: jaxlstm prediction {verdict} torch (max |diff| = {max_abs_diff:.1e})")
    return {
        "jax_prediction": jax_pred.ravel().tolist(),
        "torch_prediction": torch_pred.ravel().tolist(),
        "max_abs_diff": max_abs_diff,
        "out_shape": tuple(out.shape),
        "h_n_shape": tuple(h_n.shape),
        "c_n_shape": tuple(c_n.shape),
        "last_output_equals_h_n": last_output_equals_h_n,
    }


if __name__ == "__main__":
    main()
