"""The ``jaxlstm`` command: inspect and convert checkpoints, run the parity and benchmark suites.

Exit codes: 0 success; 1 the command ran and failed (unreadable file, no LSTM, output exists,
a parity mismatch); 2 a usage error (bad arguments, unknown format, missing optional package
or suite).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from jaxlstm.config import LSTMConfig

# The suites live beside the package in a source checkout: <root>/jaxlstm, <root>/parity, ...
CHECKOUT_ROOT = Path(__file__).resolve().parent.parent
SUITES = {
    "parity": "compare jaxlstm with real torch (outputs, states, gradients); options: "
              "jaxlstm parity --help",
    "bench": "run the benchmark suite; options: jaxlstm bench --help",
}
SUITE_PACKAGES = {"parity": "parity", "bench": "benchmarks"}


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
        description="List every nn.LSTM / nn.LSTMCell in a .pt/.pth/.safetensors file: prefix, "
                    "sizes, layers, directions, projection, bias, dtype, parameter count.",
    )
    inspect.add_argument("file", metavar="FILE", help="checkpoint (.pt, .pth, .safetensors)")
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
    from jaxlstm.files import read_checkpoint
    from jaxlstm.porting import extract_lstm, find_lstms, select_lstm, unwrap_state_dict

    checkpoint = read_checkpoint(args.file)
    state = checkpoint.state_dict
    found = find_lstms(state, source=f"file {args.file!r}")
    if not found:
        select_lstm(state, source=f"file {args.file!r}")  # raises, naming the keys it saw
    rows, lstm_keys = [], 0
    for item in found:
        arrays = extract_lstm(state, item.prefix, source=args.file)
        lstm_keys += len(arrays)
        dtype = "/".join(sorted({str(a.dtype) for a in arrays.values()}))
        config = item.config
        is_lstm = isinstance(config, LSTMConfig)
        rows.append([
            item.prefix or "(root)", type(config).__name__[:-6], config.input_size,
            config.hidden_size,
            config.num_layers if is_lstm else "-",
            ("yes" if config.bidirectional else "no") if is_lstm else "-",
            config.proj_size if is_lstm else "-",
            "yes" if config.bias else "no", dtype, f"{item.param_count:,}",
        ])
    where = f" (state dict under {checkpoint.wrapper!r})" if checkpoint.wrapper else ""
    print(f"{args.file}{where}: {len(state)} tensors")
    unwrapped = list(unwrap_state_dict(state))
    renamed = [(raw, clean) for raw, clean in zip(state, unwrapped) if raw != clean]
    if renamed:
        print(f"wrapper names removed from keys, e.g. {renamed[0][0]!r} -> {renamed[0][1]!r}")
    print(table(["prefix", "type", "input", "hidden", "layers", "bidirectional", "proj",
                 "bias", "dtype", "params"], rows))
    total = sum(item.param_count for item in found)
    others = len(state) - lstm_keys
    print(f"{len(found)} LSTM{'s' if len(found) != 1 else ''}, {total:,} parameters"
          + (f"; {others} other tensors are not LSTM weights" if others else ""))
    return 0


def _convert(args: argparse.Namespace) -> int:
    from jaxlstm.files import read_checkpoint
    from jaxlstm.formats import format_for, write
    from jaxlstm.porting import describe, lstm_weights

    try:
        fmt = format_for(args.output, args.to)
    except ValueError as error:
        raise UsageError(f"{error} with --to") from error
    output = Path(args.output)
    if output.exists() and not args.force:
        raise FileExistsError(f"output file {args.output!r} already exists; choose another "
                              "name or pass --force to replace it")
    state = read_checkpoint(args.input).state_dict
    source = f"file {args.input!r}"
    chosen, arrays = lstm_weights(state, args.prefix, source=source)
    write(arrays, output, fmt, merge_biases=args.merge_biases, force=args.force)
    where = f"prefix {chosen.prefix!r} of " if chosen.prefix else ""
    print(f"wrote {args.output} ({fmt.name}): {describe(chosen.config)} from {where}"
          f"{args.input}, {chosen.param_count:,} parameters")
    return 0


def _run_suite(command: str, argv: list[str]) -> int:
    """Run ``<package>.__main__.main(argv, prog="jaxlstm <command>")`` of a suite that lives in
    the source checkout (``prog`` is the name its ``--help`` shows)."""
    package = SUITE_PACKAGES[command]
    try:
        suite_main = load_suite(package, CHECKOUT_ROOT)
    except UsageError as error:
        if argv and argv[0] in ("-h", "--help"):
            print(f"usage: jaxlstm {command} [OPTIONS]\n\n{SUITES[command]}\n\n"
                  f"not available here: {error}")
            return 0
        _error(command, str(error))
        return 2
    except ImportError as error:  # the suite's own dependencies, e.g. torch
        _error(command, f"{error}; the {command} suite needs: pip install -e '.[test]'")
        return 2
    try:
        result = suite_main(argv, prog=f"jaxlstm {command}")
    except SystemExit as done:  # the suite's argparse: --help (0) or a usage error (2)
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    return int(result or 0)


def load_suite(package: str, root: Path) -> Callable[..., int | None]:
    """``main`` of ``<package>/__main__.py``, from ``root`` when the package lives there.

    Raises :class:`UsageError` when the package is neither in ``root`` nor importable.
    """
    if (root / package / "__main__.py").is_file() and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        module = importlib.import_module(f"{package}.__main__")
    except ModuleNotFoundError as error:
        if error.name not in (package, f"{package}.__main__"):
            raise
        if (root / "pyproject.toml").is_file():
            where = f"this source checkout ({root}) has no {package}/ directory yet"
        else:
            where = ("it lives in the jaxlstm source checkout, beside jaxlstm/, not in the "
                     "installed package: install from a checkout with pip install -e .")
        raise UsageError(f"the {package!r} suite is not available: {where}") from error
    return module.main


if __name__ == "__main__":
    sys.exit(main())
