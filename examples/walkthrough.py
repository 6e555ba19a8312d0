"""Walk-through of what nn.LSTM computes, on the 3-token sequence "早 上 好", with jaxlstm.

Each token gets a random (seeded) embedding vector of size 20; the LSTM has hidden size 100.
The script prints the shapes of ``output``, ``h_n`` and ``c_n`` and checks numerically:

(a) one layer: ``output`` holds h(t1), h(t2), h(t3); ``h_n``/``c_n`` are the final states.
(b) two layers: layer 2 reads layer 1's h(t1..t3). Two 1-layer LSTMs holding the layer-0 and
    layer-1 weights, run one after the other, reproduce the 2-layer LSTM.
(c) BiLSTM: the output is a forward LSTM's output concatenated with a second LSTM's output on the
    reversed sequence (reversed back); ``h_n[0]``/``h_n[1]`` are their final states.

All inputs are batch first, ``(batch, seq, feature)``; ``h_n``/``c_n`` never are.

Run from the repository root::

    python examples/walkthrough.py [--seed 0]
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

import jaxlstm

TOKENS = ("早", "上", "好")
EMBED_SIZE, HIDDEN_SIZE = 20, 100

_PARAM_KEY = re.compile(r"^(\w+?)_l(\d+)(_reverse)?$")


def embed_tokens(tokens: tuple[str, ...], seed: int) -> tuple[dict[str, int], jax.Array]:
    """Token -> index mapping and the embedded sequence, shape ``(1, len(tokens), EMBED_SIZE)``."""
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    embed = nnx.Embed(len(vocab), EMBED_SIZE, rngs=nnx.Rngs(seed))
    indices = jnp.asarray([[vocab[token] for token in tokens]])
    return vocab, embed(indices)


def select_params(
    state_dict: Mapping[str, Any], layer: int, reverse: bool = False
) -> dict[str, Any]:
    """One layer and direction of a torch-named LSTM state dict, renamed as a 1-layer LSTM's.

    ``weight_ih_l1_reverse`` becomes ``weight_ih_l0`` for ``layer=1, reverse=True``.
    """
    selected = {}
    for name, value in state_dict.items():
        base, index, is_reverse = _PARAM_KEY.match(name).groups()
        if int(index) == layer and bool(is_reverse) == reverse:
            selected[f"{base}_l0"] = value
    return selected


def single_layer(
    source: jaxlstm.LSTM, layer: int, input_size: int, reverse: bool = False
) -> jaxlstm.LSTM:
    """A unidirectional 1-layer LSTM holding ``source``'s weights for ``layer``/direction."""
    lstm = jaxlstm.LSTM(input_size, HIDDEN_SIZE, batch_first=True)
    jaxlstm.load_params(lstm, select_params(jaxlstm.to_torch(source), layer, reverse))
    return lstm


def max_abs_diff(a: jax.Array, b: jax.Array) -> float:
    return float(jnp.max(jnp.abs(a - b)))


def shapes(out: jax.Array, h_n: jax.Array, c_n: jax.Array) -> dict[str, tuple[int, ...]]:
    return {"output": tuple(out.shape), "h_n": tuple(h_n.shape), "c_n": tuple(c_n.shape)}


def print_shapes(found: dict[str, tuple[int, ...]], meaning: dict[str, str]) -> None:
    for name, shape in found.items():
        print(f"  {name:<6} {shape!s:<14} {meaning[name]}")


def one_layer(x: jax.Array, seed: int) -> dict[str, Any]:
    print("\n(a) one layer: LSTM(20, 100)")
    lstm = jaxlstm.LSTM(EMBED_SIZE, HIDDEN_SIZE, batch_first=True, rngs=nnx.Rngs(seed))
    out, (h_n, c_n) = lstm(x)
    found = shapes(out, h_n, c_n)
    print_shapes(found, {
        "output": "(batch, seq, hidden): h(t1), h(t2), h(t3)",
        "h_n": "(num_layers, batch, hidden): h(t3)",
        "c_n": "(num_layers, batch, hidden): c(t3)",
    })
    last = max_abs_diff(out[:, -1], h_n[-1])
    print(f"  max |output[:, -1] - h_n[-1]| = {last:.1e}: the last output step is h_n")
    return {"shapes": found, "last_output_vs_h_n": last}


def two_layers(x: jax.Array, seed: int) -> dict[str, Any]:
    print("\n(b) two layers: LSTM(20, 100, num_layers=2)")
    lstm = jaxlstm.LSTM(EMBED_SIZE, HIDDEN_SIZE, num_layers=2, batch_first=True,
                        rngs=nnx.Rngs(seed + 1))
    out, (h_n, c_n) = lstm(x)
    found = shapes(out, h_n, c_n)
    print_shapes(found, {
        "output": "(batch, seq, hidden): layer 2's h(t1..t3) only",
        "h_n": "(num_layers, batch, hidden): h(t3) of layer 1, then of layer 2",
        "c_n": "(num_layers, batch, hidden): c(t3) of layer 1, then of layer 2",
    })
    print("  layer 2's input at step t is layer 1's h(t), so weight_ih_l1 is (4*100, 100)")

    layer1 = single_layer(lstm, layer=0, input_size=EMBED_SIZE)
    layer2 = single_layer(lstm, layer=1, input_size=HIDDEN_SIZE)
    out1, (h1, c1) = layer1(x)
    out2, (h2, c2) = layer2(out1)
    diffs = {
        "output": max_abs_diff(out2, out),
        "h_n": max_abs_diff(jnp.concatenate([h1, h2]), h_n),
        "c_n": max_abs_diff(jnp.concatenate([c1, c2]), c_n),
    }
    print("  1-layer LSTM (layer-0 weights) -> 1-layer LSTM (layer-1 weights) vs. 2-layer LSTM:")
    for name, diff in diffs.items():
        print(f"    max |stacked - 2-layer| {name:<6} = {diff:.1e}")
    return {"shapes": found, "stacked_vs_two_layer": max(diffs.values()), "diffs": diffs}


def bidirectional(x: jax.Array, seed: int) -> dict[str, Any]:
    print("\n(c) bidirectional: BiLSTM(20, 100)")
    bi = jaxlstm.BiLSTM(EMBED_SIZE, HIDDEN_SIZE, batch_first=True, rngs=nnx.Rngs(seed + 2))
    out, (h_n, c_n) = bi(x)
    found = shapes(out, h_n, c_n)
    print_shapes(found, {
        "output": "(batch, seq, 2*hidden): [forward h(t) | reverse h(t)] at each step",
        "h_n": "(2*num_layers, batch, hidden): forward h(t3), reverse h(t1)",
        "c_n": "(2*num_layers, batch, hidden): forward c(t3), reverse c(t1)",
    })

    forward = single_layer(bi, layer=0, input_size=EMBED_SIZE)
    backward = single_layer(bi, layer=0, input_size=EMBED_SIZE, reverse=True)
    out_f, (h_f, c_f) = forward(x)
    out_b, (h_b, c_b) = backward(x[:, ::-1])
    # The reverse direction's output at step t must sit next to the forward one at the same t.
    joined = jnp.concatenate([out_f, out_b[:, ::-1]], axis=-1)
    diffs = {
        "output": max_abs_diff(joined, out),
        "h_n[0]": max_abs_diff(h_f[0], h_n[0]),
        "h_n[1]": max_abs_diff(h_b[0], h_n[1]),
        "c_n[0]": max_abs_diff(c_f[0], c_n[0]),
        "c_n[1]": max_abs_diff(c_b[0], c_n[1]),
    }
    print("  forward LSTM on 早上好, second LSTM on 好上早 (output reversed back), concatenated:")
    for name, diff in diffs.items():
        print(f"    max |two LSTMs - BiLSTM| {name:<6} = {diff:.1e}")
    ends = {
        "output[:, -1, :100] vs h_n[0]": max_abs_diff(out[:, -1, :HIDDEN_SIZE], h_n[0]),
        "output[:, 0, 100:] vs h_n[1]": max_abs_diff(out[:, 0, HIDDEN_SIZE:], h_n[1]),
    }
    for name, diff in ends.items():
        print(f"    max |{name}| = {diff:.1e}")
    print("  the reverse direction ends at t1, so its final state sits at output[:, 0]")
    return {
        "shapes": found,
        "bi_vs_two_unidirectional": diffs["output"],
        "h_n_vs_directions": max(diffs["h_n[0]"], diffs["h_n[1]"], diffs["c_n[0]"],
                                 diffs["c_n[1]"]),
        "output_ends_vs_h_n": max(ends.values()),
        "diffs": diffs,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the three demonstrations, print a report and return shapes and max differences."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="seed for embeddings and weights")
    args = parser.parse_args(argv)

    vocab, x = embed_tokens(TOKENS, args.seed)
    print("token -> index:", ", ".join(f"{token} -> {index}" for token, index in vocab.items()))
    print(f"input x: {tuple(x.shape)} (batch, seq, embedding) — one embedding per token")

    result = {
        "vocab": vocab,
        "input_shape": tuple(x.shape),
        "one_layer": one_layer(x, args.seed),
        "two_layers": two_layers(x, args.seed),
        "bilstm": bidirectional(x, args.seed),
    }
    worst = max(
        result["one_layer"]["last_output_vs_h_n"],
        result["two_layers"]["stacked_vs_two_layer"],
        result["bilstm"]["bi_vs_two_unidirectional"],
        result["bilstm"]["h_n_vs_directions"],
        result["bilstm"]["output_ends_vs_h_n"],
    )
    verdict = "all demonstrations hold" if worst < 1e-5 else "a demonstration FAILED"
    print(f"\nwalkthrough: {verdict} (max |diff| = {worst:.1e})")
    return result


if __name__ == "__main__":
    main()
