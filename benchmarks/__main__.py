"""Times jaxlstm against torch and the JAX peers (Flax, Equinox, Keras, torchax), forward and
forward+backward, on each shape, every implementation with the same weights and inputs.

Prints the machine and versions and a table of medians with ratios to torch and to the fastest
JAX peer measured in the same run; writes the results as JSON, Markdown and a PNG chart. A peer
whose package is missing (or that cannot run a shape) is left out with the reason printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np
import torch

from benchmarks import suite
from jaxlstm._progress import progress
from jaxlstm.cli import HelpFormatter


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
        *peers(module, shape, device),
    ]
    if shape.num_layers > 1 and not shape.bidirectional:
        found.insert(2, suite.jaxlstm_candidate(module, shape, device, name="jaxlstm wavefront",
                                                precision=precision, wavefront=True))
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


PEERS = {
    "flax OptimizedLSTMCell": suite.flax_candidate,
    "equinox LSTMCell": suite.equinox_candidate,
    "keras LSTM": suite.keras_candidate,
    "torchax nn.LSTM": suite.torchax_candidate,
}


def peers(module, shape: suite.Shape, device) -> list[suite.Candidate]:
    """The JAX peers, each with ``module``'s weights; one that cannot be built (its package is
    missing) is left out of the run with the reason."""
    return [suite.peer(name, lambda build=build: build(module, shape, device))
            for name, build in PEERS.items()]


KINDS = ("forward", "forward_backward")


def ratios(timings: list[suite.Timing]) -> tuple[list[dict], dict[str, str | None]]:
    """Each timing as a row with its ratios to the first timing (torch) and to the fastest JAX
    peer of each kind (``None`` when no peer ran), and the name of that peer per kind."""
    anchor = timings[0]
    ran = [t for t in timings if t.peer]
    best = {kind: min(ran, key=lambda t: getattr(t, f"{kind}_s")) if ran else None
            for kind in KINDS}
    rows = []
    for t in timings:
        row = vars(t).copy()
        for kind in KINDS:
            seconds = getattr(t, f"{kind}_s")
            row[f"{kind}_ratio"] = seconds / getattr(anchor, f"{kind}_s")
            row[f"{kind}_peer_ratio"] = (None if best[kind] is None
                                         else seconds / getattr(best[kind], f"{kind}_s"))
        rows.append(row)
    return rows, {kind: None if t is None else t.implementation for kind, t in best.items()}


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _cells(t: dict) -> list[str]:
    """One timing's numbers, formatted: forward ms and its ratios to torch and to the best JAX
    peer, the same for fwd+bwd, first call s, saved MB."""
    saved = t["activation_bytes"]
    return [
        f"{t['forward_s'] * 1e3:.2f}", _ratio(t["forward_ratio"]),
        _ratio(t["forward_peer_ratio"]),
        f"{t['forward_backward_s'] * 1e3:.2f}", _ratio(t["forward_backward_ratio"]),
        _ratio(t["forward_backward_peer_ratio"]),
        f"{t['compile_s']:.2f}", "-" if saved is None else f"{saved / 2**20:.1f}",
    ]


HEADINGS = ["forward ms", "vs torch", "vs best JAX", "fwd+bwd ms", "vs torch", "vs best JAX",
            "first call s", "saved MB"]


def _notes(entry: dict) -> list[str]:
    """The best JAX peer of each kind and the candidates left out, with why."""
    best = entry.get("best_peer") or {}
    notes = [f"best JAX peer, {kind.replace('_', '+')}: {best[kind]}"
             for kind in KINDS if best.get(kind)]
    notes += [f"left out {name}: {reason}" for name, reason in entry.get("left_out", {}).items()]
    return notes


def table(results: list[dict]) -> str:
    lines = []
    for entry in results:
        lines.append(f"\n{entry['shape']}")
        head = f"  {'implementation':<24} " + " ".join(f"{h:>12}" for h in HEADINGS)
        lines += [head, "  " + "-" * (len(head) - 2)]
        for t in entry["timings"]:
            lines.append(f"  {t['implementation']:<24} "
                         + " ".join(f"{c:>12}" for c in _cells(t)))
        lines += [f"  {note}" for note in _notes(entry)]
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
    notes = [f"- {entry['shape']}: {note}" for entry in results for note in _notes(entry)]
    if notes:
        lines += ["", "\"vs best JAX\": time / the fastest JAX peer's time (Flax, Equinox, Keras, "
                  "torchax) in that shape and kind.", "", *notes]
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


# The committed tables (benchmarks/results.* and memory.*), written only with --record.
RECORD_DIR = Path(__file__).resolve().parent
REPORTS = ("json", "markdown", "png")
SUFFIX = {"json": ".json", "markdown": ".md", "png": ".png"}


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds (median)")
    parser.add_argument("--per-round", type=int, default=3, help="calls per round")
    parser.add_argument("--shapes", choices=["auto", "cpu", "gpu", "memory"], default="auto",
                        help="shape set (auto: gpu when a CUDA device is present; memory: "
                        "T=1000 with and without remat)")
    parser.add_argument("--quick", action="store_true", help="first shape only, 3 rounds")
    where = parser.add_argument_group(
        "where the reports go", "Each report is rewritten after every shape, so a run cut short "
        "keeps what it measured; unwritable paths fail before anything is timed.")
    where.add_argument("--out", metavar="DIR",
                       help="directory for the reports, created if missing (default: the "
                       "current directory)")
    where.add_argument("--name", metavar="NAME",
                       help="file name of the reports without suffix (default: "
                       "bench-<shapes>-<UTC date-time>, e.g. bench-cpu-20250101-120000)")
    where.add_argument("--json", metavar="PATH", help="the JSON report (default: DIR/NAME.json)")
    where.add_argument("--markdown", metavar="PATH",
                       help="the table as Markdown (default: DIR/NAME.md)")
    where.add_argument("--png", metavar="PATH",
                       help="the chart, needs matplotlib (default: DIR/NAME.png)")
    where.add_argument("--record", action="store_true",
                       help=f"replace the committed tables in {RECORD_DIR} (results.* or, for "
                       "--shapes memory, memory.*) instead; not with --quick or other paths")
    return parser


def report_paths(args: argparse.Namespace, shape_set: str) -> dict[str, Path]:
    """Where the JSON, Markdown and PNG reports go: ``--record``'s committed tables, else each
    explicit path or ``--out``/``--name`` with a timestamped default name."""
    if args.record:
        stem = RECORD_DIR / ("memory" if shape_set == "memory" else "results")
        return {kind: stem.with_suffix(SUFFIX[kind]) for kind in REPORTS}
    name = args.name or f"bench-{shape_set}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    return {kind: Path(getattr(args, kind) or Path(args.out or ".") / (name + SUFFIX[kind]))
            for kind in REPORTS}


def write_reports(paths: dict[str, Path], report: dict, command: str) -> list[Path]:
    """Write the JSON and Markdown reports and, when there are results and matplotlib, the
    chart; returns the paths written."""
    paths["json"].write_text(json.dumps(report, indent=1))
    paths["markdown"].write_text(markdown(report["results"], report["machine"], command))
    if not report["results"]:
        return [paths["json"], paths["markdown"]]
    try:
        chart(report["results"], str(paths["png"]))
    except ImportError as error:
        print(f"no chart ({error}); install matplotlib for it", file=sys.stderr)
        return [paths["json"], paths["markdown"]]
    return [paths["json"], paths["markdown"], paths["png"]]


def main(argv: list[str] | None = None, prog: str = "python -m benchmarks") -> int:
    """Run the suite; ``prog`` names the command in ``--help`` (``jaxlstm bench``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser(prog)
    args = parser.parse_args(argv)
    if args.record and (args.quick or args.name or args.out
                        or any(getattr(args, kind) for kind in REPORTS)):
        parser.error("--record writes the committed tables: a full run, to their own paths; "
                     "drop --quick, --out, --name, --json, --markdown and --png")

    gpu = args.shapes == "gpu" or (args.shapes == "auto" and torch.cuda.is_available())
    if gpu:
        _tf32(False)
    memory = args.shapes == "memory"
    shapes = suite.MEMORY_SHAPES if memory else suite.GPU_SHAPES if gpu else suite.CPU_SHAPES
    rounds = args.rounds
    if args.quick:
        shapes, rounds = shapes[:1], 3
    paths = report_paths(args, "memory" if memory else "gpu" if gpu else "cpu")
    info = suite.machine()
    command = " ".join([prog, *argv])
    report = {"machine": info, "rounds": rounds, "per_round": args.per_round, "results": []}
    try:
        for path in paths.values():
            path.parent.mkdir(parents=True, exist_ok=True)
        write_reports(paths, report, command)  # before any timing: unwritable paths fail now
    except OSError as error:
        parser.error(f"cannot write the reports: {error}; choose another --out (or paths)")
    for key, value in info.items():
        print(f"{key}: {value}")
    for index, shape in enumerate(shapes):
        found = candidates(shape, gpu, memory)
        bar = progress(total=len(found) * (rounds + 1), unit="step",
                       desc=f"shape {index + 1}/{len(shapes)} {shape.label}")

        def step(done: str, bar=bar) -> None:
            bar.set_postfix_str(done, refresh=False)
            bar.update()

        left_out: dict[str, str] = {}
        timings = suite.time_candidates(found, rounds, args.per_round, on_step=step,
                                        left_out=left_out)
        bar.close()
        rows, best = ratios(timings)
        report["results"].append({"shape": shape.label, "config": vars(shape), "timings": rows,
                                  "best_peer": best, "left_out": left_out})
        print(table(report["results"][-1:]), flush=True)
        written = write_reports(paths, report, command)
    print(f"\nwritten {', '.join(map(str, written))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
