"""``python -m benchmarks.floor``: the two parts of every XLA forward pass, each timed alone.

A forward pass of an LSTM is two kinds of work: the recurrence (per layer, T dependent steps of
a small matmul and the cell update) and GEMMs over all steps at once (the input projections).
This times each alone, as the leanest XLA program that does it, in one process with torch
(with all its threads, and with one) and jaxlstm's forward pass:

- **XLA: recurrence alone:** per layer, one loop of the batched recurrent matmul and jaxlstm's
  cell update (:func:`jaxlstm.functional.cell_activate`) and nothing else: projections given,
  no bias, nothing saved, no output written.
- **XLA: projections alone:** each layer's input projections, one GEMM per direction over all
  steps.
- **XLA: recurrence + projections:** the sum of the two.

XLA:CPU runs a loop's steps, and each step's small matmul, on one core. Where the recurrence
alone takes as long as torch's whole forward pass, no XLA program is faster than torch at that
shape. torch with one thread shows what torch gains by splitting each step's matmul across
cores.
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
from benchmarks.__main__ import machine
from jaxlstm import functional
from jaxlstm.config import param_suffix


def _single_thread(fn):
    def run():
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn()
        finally:
            torch.set_num_threads(threads)
    return run


def floor_candidates(module: torch.nn.Module, shape: suite.Shape) -> list[suite.Candidate]:
    """The recurrence alone and the projections alone, with ``module``'s weights."""
    model = jaxlstm.from_torch(module)
    params, config = model.params(), model.config
    directions, hidden = config.num_directions, config.hidden_size
    layers = range(config.num_layers)
    suffixes = [[param_suffix(layer, d) for d in range(directions)] for layer in layers]
    w_ih = [tuple(params[f"weight_ih{s}"] for s in sfx) for sfx in suffixes]
    w_hh_t = [jnp.stack([params[f"weight_hh{s}"].T for s in sfx]) for sfx in suffixes]
    rng = np.random.default_rng(0)
    inputs = [jnp.asarray(suite._inputs(shape))] + [
        jnp.asarray(rng.standard_normal((shape.seq_len, shape.batch, directions * hidden)),
                    jnp.float32) for _ in layers[1:]
    ]
    gates = [jnp.stack(functional._project(x, w, None)) for x, w in zip(inputs, w_ih)]
    state = jnp.zeros((directions, shape.batch, hidden), jnp.float32)
    scale = functional.gate_scale(hidden, jnp.float32)

    @jax.jit
    def recurrence(gates, w_hh_t):
        finals = []
        for g, w in zip(gates, w_hh_t):
            def step(t, carry, g=g, w=w):
                h, c = carry
                row = jax.lax.dynamic_index_in_dim(g, t, axis=1, keepdims=False)
                h, c, _ = functional.cell_activate(
                    (row + jnp.einsum("dnp,dpg->dng", h, w)) * scale, c)
                return h, c
            finals.append(jax.lax.fori_loop(0, shape.seq_len, step, (state, state))[0])
        return finals

    @jax.jit
    def projections(inputs, w_ih):
        return [functional._project(x, w, None) for x, w in zip(inputs, w_ih)]

    return [
        suite.Candidate("XLA: recurrence alone",
                        lambda: jax.block_until_ready(recurrence(gates, w_hh_t))),
        suite.Candidate("XLA: projections alone",
                        lambda: jax.block_until_ready(projections(inputs, w_ih))),
    ]


def measure(shape: suite.Shape, rounds: int, per_round: int) -> list[dict]:
    """Forward times of torch, torch with one thread, jaxlstm and the two parts, with ratios
    to torch; the last row is the sum of the two parts."""
    torch.manual_seed(0)
    module = torch.nn.LSTM(shape.input_size, shape.hidden_size, shape.num_layers,
                           bidirectional=shape.bidirectional)
    reference = suite.torch_candidate(module, shape, "cpu")
    found = [
        reference,
        suite.Candidate("torch, 1 thread", _single_thread(reference.forward)),
        suite.jaxlstm_candidate(module, shape, jax.devices()[0]),
        *floor_candidates(module, shape),
    ]
    for candidate in found:
        candidate.activation_bytes = None
    timings = suite.time_candidates(found, rounds, per_round, kinds=("forward",))
    rows = [{"implementation": t.implementation, "forward_s": t.forward_s} for t in timings]
    rows.append({"implementation": "XLA: recurrence + projections",
                 "forward_s": rows[-2]["forward_s"] + rows[-1]["forward_s"]})
    for row in rows:
        row["ratio"] = row["forward_s"] / rows[0]["forward_s"]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.floor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (median)")
    parser.add_argument("--per-round", type=int, default=3, help="calls per round")
    parser.add_argument("--json", default="benchmarks/floor.json", metavar="PATH")
    parser.add_argument("--markdown", default="benchmarks/floor.md", metavar="PATH")
    args = parser.parse_args(argv)
    info = machine()
    for key, value in info.items():
        print(f"{key}: {value}")
    command = "python -m benchmarks.floor " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [f"Command: `{command.strip()}`", ""]
    lines += [f"- {key}: {value}" for key, value in info.items() if value]
    lines += ["", "| shape | program | forward ms | ratio to torch |", "|---|---|---:|---:|"]
    results = []
    for shape in suite.CPU_SHAPES:
        rows = measure(shape, args.rounds, args.per_round)
        results.append({"shape": shape.label, "config": vars(shape), "timings": rows})
        print(f"\n{shape.label}")
        for row in rows:
            print(f"  {row['implementation']:<32} {row['forward_s'] * 1e3:9.2f} ms "
                  f"{row['ratio']:6.2f}", flush=True)
            lines.append(f"| {shape.label} | {row['implementation']} | "
                         f"{row['forward_s'] * 1e3:.2f} | {row['ratio']:.2f} |")
    with open(args.json, "w") as f:
        json.dump({"machine": info, "rounds": args.rounds, "per_round": args.per_round,
                   "results": results}, f, indent=1)
    with open(args.markdown, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"\nwritten {args.json} and {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
