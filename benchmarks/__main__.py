"""``python -m benchmarks``: jaxlstm vs torch vs Flax, forward and forward+backward.

Prints the machine and versions, a table of medians with ratios to torch measured in the same
run, and writes JSON and a PNG chart.
"""

from __future__ import annotations

import argparse
import json
import sys

import jax
import numpy as np
import torch

from benchmarks import suite


def _tf32(enabled: bool):
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def candidates(shape: suite.Shape, gpu: bool, memory: bool = False) -> list[suite.Candidate]:
    module = suite.torch_lstm(shape)
    device = jax.devices()[0]
    precision = "highest" if gpu else None
    if memory:
        return [
            suite.torch_candidate(module, shape, "cuda" if gpu else "cpu", name="torch"),
            suite.jaxlstm_candidate(module, shape, device, precision=precision),
            suite.jaxlstm_candidate(module, shape, device, name="jaxlstm remat=True",
                                    precision=precision, remat=True),
        ]
    found = [
        suite.torch_candidate(module, shape, "cuda" if gpu else "cpu",
                              name="torch cuDNN" if gpu else "torch"),
        suite.jaxlstm_candidate(module, shape, device, precision=precision),
        suite.jaxlstm_candidate(module, shape, device, name="jaxlstm random lengths",
                                seq_lengths=suite.random_lengths(shape), precision=precision),
        suite.flax_candidate(shape, device),
    ]
    if gpu:
        found.append(suite.jax_rnn_candidate(module, shape, device, precision=precision))
        tf32 = suite.torch_candidate(module, shape, "cuda", name="torch cuDNN TF32")
        tf32.optional = True
        for attr in ("forward", "forward_backward"):
            plain = getattr(tf32, attr)

            def with_tf32(plain=plain):
                _tf32(True)
                try:
                    return plain()
                finally:
                    _tf32(False)

            setattr(tf32, attr, with_tf32)
        found.append(tf32)
    return found


def _cells(t: dict) -> list[str]:
    """One timing's numbers, formatted: forward ms and ratio, fwd+bwd ms and ratio, first
    call s, saved MB."""
    saved = t["activation_bytes"]
    return [
        f"{t['forward_s'] * 1e3:.2f}", f"{t['forward_ratio']:.2f}",
        f"{t['forward_backward_s'] * 1e3:.2f}", f"{t['forward_backward_ratio']:.2f}",
        f"{t['compile_s']:.2f}", "-" if saved is None else f"{saved / 2**20:.1f}",
    ]


HEADINGS = ["forward ms", "ratio", "fwd+bwd ms", "ratio", "first call s", "saved MB"]


def table(results: list[dict]) -> str:
    lines = []
    for entry in results:
        lines.append(f"\n{entry['shape']}")
        head = f"  {'implementation':<24} " + " ".join(f"{h:>12}" for h in HEADINGS)
        lines += [head, "  " + "-" * (len(head) - 2)]
        for t in entry["timings"]:
            lines.append(f"  {t['implementation']:<24} "
                         + " ".join(f"{c:>12}" for c in _cells(t)))
    return "\n".join(lines)


def markdown(results: list[dict], info: dict[str, str], command: str) -> str:
    """The results as a Markdown table, with the machine and the command that produced them."""
    lines = [f"Command: `{command}`", ""]
    lines += [f"- {key}: {value}" for key, value in info.items() if value]
    lines += ["", "| shape | implementation | " + " | ".join(HEADINGS) + " |",
              "|---|---|" + "---:|" * len(HEADINGS)]
    for entry in results:
        for t in entry["timings"]:
            lines.append(f"| {entry['shape']} | {t['implementation']} | "
                         + " | ".join(_cells(t)) + " |")
    return "\n".join(lines) + "\n"


def chart(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [t["implementation"] for t in results[0]["timings"]]
    fig, axes = plt.subplots(1, 2, figsize=(12, 1.2 + 0.9 * len(results) * len(names) / 3))
    for ax, kind in zip(axes, ("forward", "forward_backward")):
        positions = np.arange(len(results))
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            ratios = [next((t[f"{kind}_ratio"] for t in r["timings"]
                            if t["implementation"] == name), 0.0) for r in results]
            ax.barh(positions + i * width, ratios, width, label=name)
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_yticks(positions + 0.4 - width / 2, [r["shape"] for r in results])
        ax.set_xlabel("time / torch time (lower is faster)")
        ax.set_title(kind.replace("_", "+"))
    axes[0].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds (median)")
    parser.add_argument("--per-round", type=int, default=3, help="calls per round")
    parser.add_argument("--shapes", choices=["auto", "cpu", "gpu", "memory"], default="auto",
                        help="shape set (auto: gpu when a CUDA device is present; memory: "
                        "T=1000 with and without remat)")
    parser.add_argument("--quick", action="store_true", help="first shape only, 3 rounds")
    parser.add_argument("--json", default="benchmarks/results.json", metavar="PATH")
    parser.add_argument("--png", default="benchmarks/results.png", metavar="PATH")
    parser.add_argument("--markdown", default="benchmarks/results.md", metavar="PATH",
                        help="the table as Markdown (for benchmarks/README.md)")
    args = parser.parse_args(argv)

    gpu = args.shapes == "gpu" or (args.shapes == "auto" and torch.cuda.is_available())
    if gpu:
        _tf32(False)
    memory = args.shapes == "memory"
    shapes = suite.MEMORY_SHAPES if memory else suite.GPU_SHAPES if gpu else suite.CPU_SHAPES
    rounds = args.rounds
    if args.quick:
        shapes, rounds = shapes[:1], 3
    info = suite.machine()
    for key, value in info.items():
        print(f"{key}: {value}")
    command = "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:])
    results = []
    for shape in shapes:
        timings = suite.time_candidates(candidates(shape, gpu, memory), rounds, args.per_round)
        anchor = timings[0]
        rows = []
        for t in timings:
            row = vars(t).copy()
            row["forward_ratio"] = t.forward_s / anchor.forward_s
            row["forward_backward_ratio"] = t.forward_backward_s / anchor.forward_backward_s
            rows.append(row)
        results.append({"shape": shape.label, "config": vars(shape), "timings": rows})
        print(table(results[-1:]), flush=True)
        # Written after every shape, so that a run cut short keeps what it measured.
        with open(args.json, "w") as f:
            json.dump({"machine": info, "rounds": rounds, "per_round": args.per_round,
                       "results": results}, f, indent=1)
        with open(args.markdown, "w") as f:
            f.write(markdown(results, info, command.strip()))
    written = [args.json, args.markdown]
    try:
        chart(results, args.png)
        written.append(args.png)
    except ImportError as error:
        print(f"no chart ({error}); install matplotlib for it", file=sys.stderr)
    print(f"\nwritten {', '.join(written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
