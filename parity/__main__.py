"""``python -m parity [--full] [--dtype float32 float64] [--json PATH] [--seed N]``.

By default a grid that exercises every feature at least once per dtype, in about a minute and a
half on two CPU cores; ``--full`` runs the full grid (several minutes).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from jaxlstm import testing
from jaxlstm._progress import progress
from parity import dropout, forward_mode, grid, report, runner

# What is checked, on which configurations, and how: outputs and gradients of the ported module
# over the grid; forward mode (jax.jvp against torch.func.jvp); dropout's masks in training mode.
CHECKS: dict[str, tuple[Callable[[bool], list], Callable[..., list[runner.Result]]]] = {
    "values": (grid.grid, runner.run_case),
    "jvp": (forward_mode.grid, forward_mode.run_forward_mode_case),
    "dropout": (dropout.grid, dropout.run_dropout_case),
}


DTYPES = ["float32", "float64"]


def comparisons(check: str, dtype: str) -> int:
    """How many comparisons one configuration makes in ``dtype``: its outputs and gradients
    against each of torch's CPU paths (float32: oneDNN and native); forward mode and dropout
    against torch's native path, the one that has them."""
    return len(testing.torch_paths(dtype)) if check == "values" else 1


def main(argv: list[str] | None = None, prog: str = "python -m parity") -> int:
    """Run the parity grid; ``prog`` names the command in ``--help`` (``jaxlstm parity``)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Compare jaxlstm with real torch (outputs, states and gradients; forward "
                    "mode; dropout's masks). A comparison is one configuration in one dtype "
                    "against one torch CPU path.",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true",
                      help="the full grid (several minutes) instead of the default one, which "
                           "exercises every feature at least once per dtype")
    size.add_argument("--quick", action="store_true",
                      help="the default grid (the default; kept for existing scripts)")
    parser.add_argument("--dtype", nargs="+", choices=sorted(runner.TOLERANCE),
                        default=DTYPES, help="dtypes to check (default both)")
    parser.add_argument("--json", default="parity-report.json", metavar="PATH",
                        help="where to write the JSON report (default parity-report.json)")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and inputs")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    runs = [(check, case, dtype) for check, (cases, _) in CHECKS.items()
            for case in cases(args.full) for dtype in args.dtype]
    total = sum(comparisons(check, dtype) for check, _, dtype in runs)
    results: list[runner.Result] = []
    with progress(total=total, desc="parity", unit="comparison") as bar, testing.quiet_torch():
        for check, case, dtype in runs:
            found = CHECKS[check][1](case, dtype, args.seed)
            results.extend(found)
            failed = sum(not r.passed for r in results)
            bar.set_postfix_str(f"{failed} failed, last {found[0].name} {dtype}", refresh=False)
            bar.update(len(found))
    print(report.table(results))
    print()
    for key, value in report.versions().items():
        print(f"{key}: {value}")
    report.write_json(results, args.json)
    print(f"report written to {args.json} ({time.perf_counter() - start:.0f} s)")
    print(report.summary(results))
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
