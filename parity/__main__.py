"""``python -m parity [--quick] [--dtype float32 float64] [--json PATH]``."""

from __future__ import annotations

import argparse
import sys
import time
import warnings

from jaxlstm._progress import progress
from parity import grid, report, runner


def main(argv: list[str] | None = None, prog: str = "python -m parity") -> int:
    """Run the parity grid; ``prog`` names the command in ``--help`` (``jaxlstm parity``)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Compare jaxlstm with real torch (outputs, states and gradients).",
    )
    parser.add_argument("--quick", action="store_true", help="the small CI grid")
    parser.add_argument("--dtype", nargs="+", choices=sorted(runner.TOLERANCE),
                        default=["float32", "float64"], help="dtypes to check (default both)")
    parser.add_argument("--json", default="parity-report.json", metavar="PATH",
                        help="where to write the JSON report (default parity-report.json)")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and inputs")
    args = parser.parse_args(argv)

    warnings.filterwarnings("ignore", message=".*dropout.*num_layers.*")
    warnings.filterwarnings("ignore", message=".*not supported with oneDNN.*")
    warnings.filterwarnings("ignore", message=".*TF32 acceleration on top of oneDNN.*")
    cases = grid.grid(full=not args.quick)
    start = time.perf_counter()
    results = []
    runs = [(case, dtype) for case in cases for dtype in args.dtype]
    bar = progress(total=len(runs), desc="parity", unit="case")
    for case, dtype in runs:
        results.extend(runner.run_case(case, dtype, args.seed))
        failed = sum(not r.passed for r in results)
        bar.set_postfix_str(f"{failed} failed, last {case.name} {dtype}", refresh=False)
        bar.update()
    bar.close()
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
