"""A/B of the functional core against an earlier revision, torch alongside, in one process.

``python -m benchmarks.compare REV [REV ...]`` loads the functional core (``jaxlstm.functional``)
as it was at each git revision next to the working tree's and times forward and
forward+backward on the CPU shapes in interleaved rounds (medians), printing each as a ratio to
torch and to the first revision given, measured in the same run, with each one's first
forward+backward call (trace, compile, run) and what its forward pass saves for the backward
pass. This is how each step of the fast path was kept or dropped (see ``benchmarks/README.md``).
"""

from __future__ import annotations

import argparse
import importlib
import io
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import jax.numpy as jnp
import torch

from benchmarks import suite
from jaxlstm import functional


def load_revision(rev: str):
    """The functional core as it was at git revision ``rev`` (a module or a package).

    The revision's whole package is exported to a temporary directory under another name, its
    absolute imports renamed with it, so that it loads beside the working tree's own."""
    commit = subprocess.run(["git", "rev-parse", "--short", rev], check=True,
                            capture_output=True, text=True).stdout.strip()
    alias = f"jaxlstm_{commit}"
    root = Path(tempfile.mkdtemp(prefix="jaxlstm-compare-"))
    archive = subprocess.run(["git", "archive", "--format=tar", rev, "jaxlstm"], check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(root, filter="data")
    (root / "jaxlstm").rename(root / alias)
    for source in (root / alias).rglob("*.py"):
        text = source.read_text()
        source.write_text(re.sub(r"\bjaxlstm(?=[.\s])", alias, text))
    sys.path.insert(0, str(root))
    return importlib.import_module(f"{alias}.functional")


def core_candidate(core, name: str, module: torch.nn.Module, shape: suite.Shape):
    import jaxlstm

    model = jaxlstm.from_torch(module)
    params, config = model.params(), model.config
    x = jnp.asarray(suite._inputs(shape))

    def run(params, x):
        return core.lstm(params, x, config=config)[0]

    return suite.jax_candidate(name, run, params, x)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__)
    parser.add_argument("revisions", nargs="+", help="git revisions to compare against")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--per-round", type=int, default=3)
    args = parser.parse_args(argv)
    cores = {rev: load_revision(rev) for rev in args.revisions}
    cores["working tree"] = functional
    for shape in suite.CPU_SHAPES:
        module = suite.torch_lstm(shape)
        found = [suite.torch_candidate(module, shape, "cpu")]
        found += [core_candidate(core, name, module, shape) for name, core in cores.items()]
        timings = suite.time_candidates(found, args.rounds, per_round=args.per_round)
        anchor, before = timings[0], timings[1]
        print(f"{shape.label}  (ratios to torch | to {before.implementation})")
        for t in timings:
            line = (f"  {t.implementation:<14} forward {t.forward_s / anchor.forward_s:5.2f} | "
                    f"{t.forward_s / before.forward_s:5.3f}  forward+backward "
                    f"{t.forward_backward_s / anchor.forward_backward_s:5.2f} | "
                    f"{t.forward_backward_s / before.forward_backward_s:5.3f}  "
                    f"first call {t.compile_s:5.2f} s")
            if t.activation_bytes is not None:
                line += f"  saved {t.activation_bytes / 2**20:6.1f} MB"
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
