"""The ``jaxlstm`` command: inspect and convert checkpoints, run the parity and benchmark suites.

Exit codes: 0 success; 1 the command ran and failed (unreadable file, no LSTM, output exists,
a parity mismatch); 2 a usage error (bad arguments, unknown format, missing optional package
or suite).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from jaxlstm.config import LSTMConfig

# The suites live beside the package in a source checkout: <root>/jaxlstm, <root>/parity, ...
CHECKOUT_ROOT = Path(__file__).resolve().parent.parent
SUITES = {
    "parity": "compare jaxlstm with real torch (outputs, states, gradients): jaxlstm parity "
              "FILE [--prefix P] proves the port of FILE's LSTM; without FILE, the grid; "
              "options: jaxlstm parity --help",
    "bench": "run the benchmark suite; options: jaxlstm bench --help",
}
SUITE_PACKAGES = {"parity": "parity", "bench": "benchmarks"}
# The extra each suite needs, installed in the source checkout.
SUITE_EXTRAS = {"parity": "torch", "bench": "bench"}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default after its help; an option whose default is ``None`` states
    in its own help what it defaults to."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


class UsageError(Exception):
    """A mistake in the command line (exit code 2)."""


def _parser() -> argparse.ArgumentParser:
    from jaxlstm.formats import OUTPUT_FORMATS

    parser = argparse.ArgumentParser(
        prog="jaxlstm",
        description="PyTorch's LSTM in JAX: inspect and convert checkpoints, check parity.",
        epilog="exit codes: 0 success, 1 failure, 2 usage error",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    inspect = commands.add_parser(
        "inspect", help="list the LSTMs in a checkpoint with their config and size",
        description="List every nn.LSTM / nn.LSTMCell in a checkpoint (.pt/.pth/.safetensors/"
                    ".onnx/.npz, Keras .h5/.keras): prefix, sizes, layers, directions, "
                    "projection, bias, dtype, parameter count, and what the file records "
                    "about each (activations, batch-first input).",
    )
    inspect.add_argument("file", metavar="FILE",
                         help="checkpoint (.pt, .pth, .safetensors, .onnx, .npz, .h5, .keras)")
    formats = "\n".join(f"  {f.name:<19} {f.suffix:<13} {f.description}"
                        for f in OUTPUT_FORMATS.values())
    convert = commands.add_parser(
        "convert", help="port one LSTM of a checkpoint to safetensors or another library",
        description="Write the LSTM at PREFIX of IN to OUT. The format follows OUT's suffix "
                    "or --to. Nothing is written unless the conversion succeeds.",
        epilog=f"output formats:\n{formats}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    convert.add_argument("input", metavar="IN", help="checkpoint (.pt, .pth, .safetensors)")
    convert.add_argument("output", metavar="OUT", help="file to create")
    convert.add_argument("--prefix", metavar="P",
                         help="which LSTM, e.g. encoder.rnn. (see jaxlstm inspect); needed "
                              "when IN holds several")
    convert.add_argument("--to", choices=list(OUTPUT_FORMATS), metavar="FORMAT",
                         help="output format (default: from OUT's suffix): "
                              + ", ".join(OUTPUT_FORMATS))
    convert.add_argument("--merge-biases", action="store_true",
                         help="for one-bias formats (Flax, Keras, Equinox): store bias_ih + "
                              "bias_hh (same outputs, the split is not kept)")
    convert.add_argument("--force", action="store_true", help="replace OUT if it exists")
    for name, text in SUITES.items():
        commands.add_parser(name, help=text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``jaxlstm`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["parity"] and len(argv) > 1 and not argv[1].startswith("-"):
        return _parity_file(argv[1:])
    if argv and argv[0] in SUITES:
        return _run_suite(argv[0], argv[1:])
    try:
        args = _parser().parse_args(argv)
    except SystemExit as done:  # --help, or argparse's usage error (2)
        return int(done.code or 0)
    handler: Callable[[argparse.Namespace], int] = {"inspect": _inspect,
                                                    "convert": _convert}[args.command]
    return _guarded(args.command, lambda: handler(args))


def _guarded(command: str, run: Callable[[], int]) -> int:
    from jaxlstm.files import CheckpointError

    try:
        return run()
    except UsageError as error:
        _error(command, str(error))
        return 2
    except ImportError as error:
        _error(command, str(error))
        return 2
    except (CheckpointError, ValueError, TypeError, OSError) as error:
        _error(command, str(error))
        return 1


def _error(command: str, message: str) -> None:
    print(f"jaxlstm {command}: error: {message}", file=sys.stderr)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table: numbers right-aligned, text left-aligned, a rule under the header."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    numeric = [all(_is_number(r[i]) for r in cells) and bool(cells) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if n else v.ljust(w)
                         for v, w, n in zip(values, widths, numeric)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in cells)])


def _is_number(text: str) -> bool:
    return text.replace(",", "").isdigit() or text == "-"


def _inspect(args: argparse.Namespace) -> int:
    from jaxlstm.discovery import find_lstms, select_lstm, unwrap_state_dict
    from jaxlstm.files import read_checkpoint

    checkpoint = read_checkpoint(args.file)
    state = checkpoint.state_dict
    source = f"file {args.file!r}"
    found = find_lstms(state, source=source, strict=False)
    if not found:
        select_lstm(state, source=source)  # raises, naming the keys it saw
    rows, lstm_keys, problems, notes = [], 0, [], []
    for item in found:
        lstm_keys += len(item.weights)
        dtype = "/".join(sorted({str(a.dtype) for a in item.weights.values()}))
        config = item.config
        is_lstm = isinstance(config, LSTMConfig)
        known = config is not None
        rows.append([
            (item.prefix or "(root)") + (" !" if item.problem else ""),
            type(config).__name__[:-6] if known else "?",
            config.input_size if known else "?", config.hidden_size if known else "?",
            config.num_layers if is_lstm else "-",
            ("yes" if config.bidirectional else "no") if is_lstm else "-",
            config.proj_size if is_lstm else "-",
            ("yes" if config.bias else "no") if known else "?", dtype, f"{item.param_count:,}",
        ])
        recorded = checkpoint.lstm_info.get(item.prefix, {})
        problem = item.problem or recorded.get("problem")
        if problem:
            rows[-1][0] = (item.prefix or "(root)") + " !"
            problems.append(f"{args.file!r}: the LSTM at {item.prefix or '(root)'} cannot be "
                            f"ported: {problem}")
        if _recorded(recorded):
            notes.append(f"  {item.prefix}: {_recorded(recorded)}")
    where = f" (state dict under {checkpoint.wrapper!r})" if checkpoint.wrapper else ""
    print(f"{args.file} [{checkpoint.format}]{where}: {len(state)} tensors")
    unwrapped = list(unwrap_state_dict(state))
    renamed = [(raw, clean) for raw, clean in zip(state, unwrapped) if raw != clean]
    if renamed:
        print(f"wrapper names removed from keys, e.g. {renamed[0][0]!r} -> {renamed[0][1]!r}")
    print(table(["prefix", "type", "input", "hidden", "layers", "bidirectional", "proj",
                 "bias", "dtype", "params"], rows))
    total = sum(item.param_count for item in found)
    others = len(state) - lstm_keys
    print(f"{len(found)} LSTM{'s' if len(found) != 1 else ''}, {total:,} parameters"
          + (f"; {others} other tensors are not LSTM weights{_groups(state, found)}"
             if others else ""))
    if notes:
        print("recorded in the file:\n" + "\n".join(notes))
    if problems:
        for problem in problems:
            _error("inspect", problem)
        return 1
    return 0


def _recorded(info: dict) -> str:
    """What a file records about one LSTM, as ``inspect`` shows it."""
    parts = [f"{info['class']} layer {info['layer']!r}"] if "layer" in info else []
    if "recurrent_activation" in info:
        stated = "" if info.get("recorded") else " (Keras' default, not stated in the file)"
        parts.append(f"activation {info['activation']}, recurrent_activation "
                     f"{info['recurrent_activation']}{stated}")
    if "gate_activation" in info:
        parts.append(f"ported with gate_activation={info['gate_activation']}")
    if info.get("batch_first"):
        parts.append("batch-first input" + (" (layout=1)" if info.get("source") == "onnx"
                                            else "") + ": ported with batch_first=True")
    if "dequantized" in info:
        parts.append(f"dequantized from {info['dequantized']}")
    return "; ".join(parts)


def _groups(state: dict, found: list) -> str:
    """The top-level groups of the tensors that are not LSTM weights, e.g. ``optimizer (12)``."""
    from jaxlstm.discovery import unwrap_state_dict

    lstm = {item.prefix + name for item in found for name in item.weights}
    counts: dict[str, int] = {}
    for key in unwrap_state_dict(state):
        if key not in lstm:
            head = key.split(".", 1)[0] if "." in key else "(root)"
            counts[head] = counts.get(head, 0) + 1
    shown = ", ".join(f"{head} ({count})" for head, count in list(counts.items())[:6])
    return f" ({shown}{', ...' if len(counts) > 6 else ''})" if shown else ""


def _convert(args: argparse.Namespace) -> int:
    from jaxlstm.arrays import describe
    from jaxlstm.discovery import select_lstm
    from jaxlstm.files import check_portable, read_checkpoint
    from jaxlstm.formats import format_for, write

    try:
        fmt = format_for(args.output, args.to)
    except ValueError as error:
        raise UsageError(f"{error} with --to") from error
    output = Path(args.output)
    if output.exists() and not args.force:
        raise FileExistsError(f"output file {args.output!r} already exists; choose another "
                              "name or pass --force to replace it")
    checkpoint = read_checkpoint(args.input)
    chosen = select_lstm(checkpoint.state_dict, args.prefix, source=f"file {args.input!r}",
                         container=checkpoint.wrapper)
    check_portable(checkpoint, chosen.prefix)
    gates = checkpoint.lstm_info.get(chosen.prefix, {}).get("gate_activation", "sigmoid")
    try:
        write(chosen.weights, output, fmt, merge_biases=args.merge_biases, force=args.force,
              gate_activation=gates)
    except ValueError as error:
        raise ValueError(str(error).replace("merge_biases=True", "--merge-biases")) from error
    where = f"prefix {chosen.prefix!r} of " if chosen.prefix else ""
    print(f"wrote {args.output} ({fmt.name}): {describe(chosen.config)}"
          f"{'' if gates == 'sigmoid' else f' with {gates} gates'} from {where}"
          f"{args.input}, {chosen.param_count:,} parameters")
    return 0


def _parity_file(argv: list[str]) -> int:
    """``jaxlstm parity FILE``: the file's own LSTM in torch against its jaxlstm port."""
    parser = argparse.ArgumentParser(
        prog="jaxlstm parity",
        description="Prove a port: build the torch nn.LSTM/LSTMCell from FILE's own weights, "
                    "port it with jaxlstm, and compare output, h_n, c_n and the gradients of a "
                    "scalar loss w.r.t. every weight, the input and (h0, c0); an LSTM with "
                    "hard-sigmoid gates, which torch lacks, against an independent float64 "
                    "NumPy reference (outputs, and the gradient against finite differences). "
                    "Exit 0 when everything matches, 1 when not (the failing tensors are "
                    "named). Without FILE: the parity grid.",
    )
    parser.add_argument("file", metavar="FILE", help="checkpoint (any format jaxlstm inspect "
                        "reads)")
    parser.add_argument("--prefix", metavar="P", help="which LSTM (see jaxlstm inspect)")
    parser.add_argument("--steps", type=int, default=7, help="sequence length (default 7)")
    parser.add_argument("--batch", type=int, default=3, help="batch size (default 3)")
    parser.add_argument("--dtype", choices=["float32", "float64", "both"], default="both",
                        help="dtype(s) to compare in (default both)")
    parser.add_argument("--input", metavar="X.npy", help="input to use instead of random "
                        "values, in the module's layout (time-major unless --batch-first)")
    parser.add_argument("--batch-first", action="store_true",
                        help="the LSTM takes (N, L, I) input (the default for Keras files and "
                             "ONNX layout=1, as they record)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:
        return int(done.code or 0)

    def run() -> int:
        import numpy as np

        from jaxlstm.arrays import describe
        from jaxlstm.discovery import select_lstm
        from jaxlstm.files import check_portable, read_checkpoint

        checkpoint = read_checkpoint(args.file)
        chosen = select_lstm(checkpoint.state_dict, args.prefix, container=checkpoint.wrapper,
                             source=f"file {args.file!r}")
        check_portable(checkpoint, chosen.prefix)
        recorded = checkpoint.lstm_info.get(chosen.prefix, {})
        batch_first = args.batch_first or bool(recorded.get("batch_first"))
        if "gate_activation" in recorded:  # no torch module computes these gates
            return _parity_reference(args, chosen, batch_first, recorded["gate_activation"])
        try:
            from jaxlstm import testing
        except ImportError as error:
            raise ImportError(f"{error} (jaxlstm parity needs torch: pip install "
                              "'jaxlstm[torch]')") from error
        import torch

        from jaxlstm.porting import torch_module

        # A NaN/Inf weight makes both sides NaN alike; name it rather than only its effects.
        broken = {name: int(np.size(a) - np.isfinite(np.asarray(a, np.float64)).sum())
                  for name, a in chosen.weights.items()}
        broken = {name: count for name, count in broken.items() if count}
        x = None if args.input is None else np.load(args.input)
        dtypes = ["float32", "float64"] if args.dtype == "both" else [args.dtype]
        where = f"prefix {chosen.prefix!r} of " if chosen.prefix else ""
        print(f"{where}{args.file}: {describe(chosen.config)}")
        config = chosen.config
        if isinstance(config, LSTMConfig):
            config = dataclasses.replace(config, batch_first=batch_first)
        passed = True
        for dtype in dtypes:
            with testing.quiet_torch():
                module = torch_module(config, chosen.weights).to(getattr(torch, dtype)).eval()
                report = testing.compare(module, x=x, steps=args.steps, batch=args.batch,
                                         seed=args.seed)
            print(f"\n{dtype}:\n{report.table()}")
            for path, tensor, error in report.failures:
                print(f"FAIL {tensor} ({path}): relative error {error:.2e}", file=sys.stderr)
            passed &= report.passed
        for name, count in broken.items():
            print(f"FAIL weight {name!r} holds {count} NaN/Inf value(s)", file=sys.stderr)
        passed &= not broken
        print("\nparity: " + ("the port matches torch" if passed else "MISMATCH"))
        return 0 if passed else 1

    return _guarded("parity", run)


def _parity_reference(args: argparse.Namespace, chosen: Any, batch_first: bool,
                      gates: Any) -> int:
    """``parity FILE`` for gates torch has none of: the port against
    :mod:`jaxlstm.reference`, an independent float64 NumPy LSTM."""
    import numpy as np

    from jaxlstm import reference
    from jaxlstm.arrays import describe

    config = dataclasses.replace(chosen.config, batch_first=batch_first, gate_activation=gates)
    where = f"prefix {chosen.prefix!r} of " if chosen.prefix else ""
    print(f"{where}{args.file}: {describe(chosen.config)}, gates {gates}; torch has no such "
          "gates, so the reference is jaxlstm.reference (float64 NumPy loops)")
    dtypes = ["float32", "float64"] if args.dtype == "both" else [args.dtype]
    x = None if args.input is None else np.load(args.input)
    table, failures = reference.report(config, chosen.weights, dtypes, x=x, steps=args.steps,
                                       batch=args.batch, seed=args.seed)
    print(table)
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    print("\nparity: " + ("MISMATCH" if failures else "the port matches the reference"))
    return 1 if failures else 0


def _run_suite(command: str, argv: list[str]) -> int:
    """Run ``<package>.__main__.main(argv, prog="jaxlstm <command>")`` of a suite that lives in
    the source checkout (``prog`` is the name its ``--help`` shows)."""
    try:
        suite_main = load_suite(command, CHECKOUT_ROOT)
    except UsageError as error:
        if command == "parity":  # installed without the checkout: the built-in grid
            return _builtin_grid(argv, str(error))
        if argv and argv[0] in ("-h", "--help"):
            print(f"usage: jaxlstm {command} [OPTIONS]\n\n{SUITES[command]}\n\n"
                  f"not available here: {error}")
            return 0
        _error(command, str(error))
        return 2
    except ImportError as error:  # the suite's own dependencies, e.g. torch
        _error(command, f"{error}; the {command} suite needs: pip install -c constraints.txt "
                        f"-e '.[{SUITE_EXTRAS[command]}]' in the source checkout")
        return 2
    try:
        result = suite_main(argv, prog=f"jaxlstm {command}")
    except SystemExit as done:  # the suite's argparse: --help (0) or a usage error (2)
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    return int(result or 0)


def _builtin_grid(argv: list[str], why: str) -> int:
    """``jaxlstm parity`` from an installed package: a small grid through jaxlstm.testing."""
    if argv:
        print(f"usage: jaxlstm parity [FILE --prefix P ...]\n\nwithout FILE, outside a "
              f"source checkout, runs a built-in grid of {len(_GRID)} configurations "
              f"(no options; {why})")
        return 0 if argv[0] in ("-h", "--help") else 2

    def run() -> int:
        try:
            import torch

            from jaxlstm import testing
        except ImportError as error:
            raise ImportError(f"{error} (jaxlstm parity needs torch: pip install "
                              "'jaxlstm[torch]')") from error
        failed = []
        for name, kwargs in _GRID:
            for dtype in ("float32", "float64"):
                torch.manual_seed(0)
                with testing.quiet_torch():
                    module = torch.nn.LSTM(**kwargs).to(getattr(torch, dtype))
                    report = testing.compare(module, steps=9, batch=3)
                worst = max(e for c in report.comparisons for e in c.errors.values())
                status = "pass" if report.passed else "FAIL"
                print(f"{name:<28} {dtype:<8} worst {worst:8.1e}  {status}")
                if not report.passed:
                    failed.append(f"{name} {dtype}: {report.failures[0][1]}")
        print(f"parity (built-in grid; the full suite lives in the source checkout's parity/): "
              f"{2 * len(_GRID) - len(failed)}/{2 * len(_GRID)} passed")
        for line in failed:
            print(f"FAIL {line}", file=sys.stderr)
        return 1 if failed else 0

    return _guarded("parity", run)


_GRID = [
    ("L1 uni", dict(input_size=4, hidden_size=6)),
    ("L2 bi", dict(input_size=4, hidden_size=6, num_layers=2, bidirectional=True)),
    ("L2 proj bf", dict(input_size=4, hidden_size=6, num_layers=2, proj_size=3,
                        batch_first=True)),
    ("L1 bi nobias", dict(input_size=4, hidden_size=6, bidirectional=True, bias=False)),
]


def load_suite(command: str, root: Path) -> Callable[..., int | None]:
    """``main`` of ``<root>/<package>/__main__.py``: the suite of ``command`` (``parity``,
    ``bench``) in a source checkout.

    The suites are not part of the installed package, and only ``root``'s are run (never
    another package of the same name that happens to be importable). Raises
    :class:`UsageError` saying where the suite lives and how to get it when ``root`` lacks it.
    """
    package = SUITE_PACKAGES[command]
    if not (root / package / "__main__.py").is_file():
        if (root / "pyproject.toml").is_file():
            where = f"this source checkout ({root}) has no {package}/ directory"
        else:
            where = (f"it lives in jaxlstm's source checkout ({package}/, beside jaxlstm/) and "
                     "is not part of the installed package; in a clone of the repository, run "
                     f"pip install -c constraints.txt -e '.[{SUITE_EXTRAS[command]}]' and then "
                     f"jaxlstm {command} (or python -m {package})")
        raise UsageError(f"the {package!r} suite is not available: {where}")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module(f"{package}.__main__").main


if __name__ == "__main__":
    sys.exit(main())
