"""Print the parity table and summary; write the JSON report."""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence

import jax
import numpy as np
import torch

import jaxlstm
from parity.runner import TOLERANCE, Result

COLUMNS = [
    ("out", ("output", "h")),
    ("h_n", ("h_n",)),
    ("c_n", ("c_n", "c")),
    ("grad W", ("grad weight", "grad bias")),
    ("grad x", ("grad input",)),
    ("grad hx", ("grad h0", "grad c0")),
]


def _column(errors: dict[str, float], keys: Sequence[str]) -> float:
    """The worst error of the tensors in a column (forward mode's ``jvp output`` is ``output``'s
    tangent, and shown as the output)."""
    values = [v for k, v in errors.items()
              if any((name := k.removeprefix("jvp ")) == p or name.startswith(p + "_")
                     for p in keys)]
    return max(values) if values else float("nan")


def table(results: Sequence[Result]) -> str:
    width = max(len(r.name) for r in results)
    head = f"{'config':<{width}}  {'dtype':<7} {'torch':<6} " + " ".join(
        f"{name:>8}" for name, _ in COLUMNS
    ) + "  status"
    lines = [head, "-" * len(head)]
    for r in results:
        cells = " ".join(
            f"{'-':>8}" if np.isnan(v := _column(r.errors, keys)) else f"{v:8.1e}"
            for _, keys in COLUMNS
        )
        status = "FAIL" if not r.passed else "pass*" if r.failing_against_torch else "pass"
        lines.append(f"{r.name:<{width}}  {r.dtype:<7} {r.torch_path:<6} {cells}  {status}")
    return "\n".join(lines)


def summary(results: Sequence[Result]) -> str:
    """One line: comparisons passed out of run (a comparison is one configuration in one dtype
    against one torch CPU path, what the progress bar counts), configurations, worst errors."""
    passed = sum(r.passed for r in results)
    worst = []
    for dtype in TOLERANCE:
        errs = [max(r.errors.values()) for r in results if r.dtype == dtype]
        if errs:
            worst.append(f"worst {dtype} error {max(errs):.1e} (tolerance {TOLERANCE[dtype]:.0e})")
    configurations = len({(r.check, r.case) for r in results})
    starred = sum(bool(r.passed and r.failing_against_torch) for r in results)
    if starred:
        worst.append(
            f"{starred} pass* (outside the tolerance of torch float32, whose own rounding is "
            "larger there; within it of the float64 result)"
        )
    return (
        f"parity: {passed}/{len(results)} comparisons passed over {configurations} "
        "configurations (a comparison: one configuration in one dtype against one torch CPU "
        "path); " + "; ".join(worst)
    )


def versions() -> dict[str, str]:
    return {
        "jaxlstm": jaxlstm.__version__,
        "jax": jax.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {platform.processor() or platform.system()}",
        "jax_backend": jax.default_backend(),
    }


def write_json(results: Sequence[Result], path: str) -> None:
    report = {
        "versions": versions(),
        "tolerance": TOLERANCE,
        "metric": "max |jaxlstm - torch| / max |torch| per tensor",
        "summary": summary(results),
        "passed": all(r.passed for r in results),
        "results": [r.to_json() for r in results],
    }
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
