"""python -m benchmarks.floor: the two parts of jaxlstm's forward pass, each timed alone.

An LSTM's forward pass is two kinds of work: the recurrence (per layer, T dependent steps of a
small matmul and the cell update) and GEMMs over many steps at once (the input projections).
This times each alone, written as lean XLA programs, on the CPU and in one process with torch
(with all its threads, and with one) and jaxlstm's forward pass:

- XLA: recurrence alone: per layer, one loop of the batched recurrent matmul and jaxlstm's cell
  update (jaxlstm.functional.cell_activate) and nothing else: projections given, no bias,
  nothing saved, no output written; each layer starts from the previous one's final state, so
  the layers run one after the other as in an LSTM.
- XLA: projections alone: each layer's input projections, one GEMM per direction, in the
  chunks of steps that jaxlstm's forward pass uses.
- XLA: recurrence + projections: the sum of the two rows above (computed, not a program).

The XLA parts read time-major inputs whatever the shape's layout (torch and jaxlstm take a
batch-first shape's ``(B, T, I)`` input, as in the suite).

If the recurrence alone takes as long as torch's whole forward pass, this formulation cannot
beat torch at that shape unless XLA runs the projections at the same time as the recurrence.
torch with one thread shows what torch gains from its second core.
"""

from __future__ import annotations

import argparse
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import torch

import jaxlstm
from benchmarks import suite
from jaxlstm import functional
from jaxlstm.functional import api, chunks
from jaxlstm.functional.recurrence import project

RECURRENCE = "XLA: recurrence alone"
PROJECTIONS = "XLA: projections alone"
TOTAL = "XLA: recurrence + projections"


def _single_thread(fn):
    """``fn`` run with torch limited to one thread (its setting restored after each call)."""
    def run():
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn()
        finally:
            torch.set_num_threads(threads)
    return run


@jax.jit
def recurrence(gates, w_hh_t, h0, c0):
    """Per layer, T steps of ``h, c = cell(gates[:, t] + h W_hh^T, c)`` and nothing else.

    ``gates``: one (D, T, N, 4H) array per layer (torch's pre-activations without the
    recurrent term), ``w_hh_t``: one (D, H, 4H) array per layer, ``h0``/``c0``: (D, N, H).
    Each layer starts from the previous layer's final state. Returns the last ``(h, c)``.
    """
    h, c = h0, c0
    scale = functional.gate_scale(h0.shape[-1], h0.dtype)
    for g, w in zip(gates, w_hh_t):
        def step(t, carry, g=g, w=w):
            h, c = carry
            row = jax.lax.dynamic_index_in_dim(g, t, axis=1, keepdims=False)
            h, c, _ = functional.cell_activate(
                (row + jnp.einsum("dnp,dpg->dng", h, w)) * scale, c)
            return h, c
        h, c = jax.lax.fori_loop(0, g.shape[1], step, (h, c))
    return h, c


@jax.jit
def projections(inputs, w_ih):
    """Each layer's input projections (one GEMM per direction) over chunks of steps as
    jaxlstm's forward pass makes them."""
    out = []
    for x, w in zip(inputs, w_ih):
        chunk = chunks.inference_chunk(*x.shape[:2], functional.DEFAULT_CHUNK_ROWS)
        for start in range(0, x.shape[0], chunk):
            out.append(project(x[start:start + chunk], w, None))
    return out


def floor_candidates(module: torch.nn.Module, shape: suite.Shape) -> list[suite.Candidate]:
    """The recurrence alone and the projections alone, with ``module``'s weights, on the CPU."""
    model = jaxlstm.from_torch(module)
    params, config = model.params(), model.config
    directions, hidden = config.num_directions, config.hidden_size
    layers = range(config.num_layers)
    rng = np.random.default_rng(0)
    with jax.default_device(jax.devices("cpu")[0]):
        weights = [api.layer_weights(params, config, layer, jnp.float32)
                   for layer in layers]
        w_ih = [w.w_ih for w in weights]
        w_hh_t = [jnp.swapaxes(w.w_hh, 1, 2) for w in weights]
        inputs = [jnp.asarray(suite.time_major_inputs(shape))] + [
            jnp.asarray(rng.standard_normal((shape.seq_len, shape.batch, directions * hidden)),
                        jnp.float32) for _ in layers[1:]
        ]
        gates = [jnp.stack(project(x, w, None)) for x, w in zip(inputs, w_ih)]
        state = jnp.zeros((directions, shape.batch, hidden), jnp.float32)
    return [
        suite.Candidate(RECURRENCE,
                        lambda: jax.block_until_ready(recurrence(gates, w_hh_t, state, state))),
        suite.Candidate(PROJECTIONS, lambda: jax.block_until_ready(projections(inputs, w_ih))),
    ]


def measure(shape: suite.Shape, rounds: int, per_round: int) -> list[dict]:
    """Forward times of torch, torch with one thread, jaxlstm and the two parts, with their
    ratios to torch; the last row is the sum of the two parts."""
    module = suite.torch_lstm(shape)
    reference = suite.torch_candidate(module, shape, "cpu")
    found = [
        reference,
        suite.Candidate("torch, 1 thread", _single_thread(reference.forward)),
        suite.jaxlstm_candidate(module, shape, jax.devices("cpu")[0]),
        *floor_candidates(module, shape),
    ]
    for candidate in found:
        candidate.activation_bytes = None
    timings = suite.time_candidates(found, rounds, per_round, kinds=("forward",))
    rows = [{"implementation": t.implementation, "forward_s": t.forward_s} for t in timings]
    part = {row["implementation"]: row["forward_s"] for row in rows}
    rows.append({"implementation": TOTAL, "forward_s": part[RECURRENCE] + part[PROJECTIONS]})
    for row in rows:
        row["ratio"] = row["forward_s"] / rows[0]["forward_s"]
    return rows


def markdown(results: list[dict], info: dict[str, str], command: str) -> str:
    """The results as a Markdown table, with the machine and the command that produced them."""
    lines = [f"Command: `{command}`", ""]
    lines += [f"- {key}: {value}" for key, value in info.items() if value]
    lines += ["", "| shape | implementation | forward ms | ratio to torch |", "|---|---|---:|---:|"]
    for entry in results:
        for row in entry["timings"]:
            lines.append(f"| {entry['shape']} | {row['implementation']} | "
                         f"{row['forward_s'] * 1e3:.2f} | {row['ratio']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.floor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (median)")
    parser.add_argument("--per-round", type=int, default=3, help="calls per round")
    parser.add_argument("--json", default="benchmarks/floor.json", metavar="PATH")
    parser.add_argument("--markdown", default="benchmarks/floor.md", metavar="PATH")
    args = parser.parse_args(argv)
    info = suite.machine()
    for key, value in info.items():
        print(f"{key}: {value}")
    results = []
    for shape in suite.CPU_SHAPES:
        rows = measure(shape, args.rounds, args.per_round)
        results.append({"shape": shape.label, "config": vars(shape), "timings": rows})
        print(f"\n{shape.label}")
        for row in rows:
            print(f"  {row['implementation']:<32} {row['forward_s'] * 1e3:9.2f} ms "
                  f"{row['ratio']:6.2f}", flush=True)
    with open(args.json, "w") as f:
        json.dump({"machine": info, "rounds": args.rounds, "per_round": args.per_round,
                   "results": results}, f, indent=1)
    command = "python -m benchmarks.floor " + " ".join(argv if argv is not None else sys.argv[1:])
    with open(args.markdown, "w") as f:
        f.write(markdown(results, info, command.strip()))
    print(f"\nwritten {args.json} and {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
