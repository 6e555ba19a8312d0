"""A/B of the functional core against an earlier revision, torch alongside, in one process.

``python -m benchmarks.compare REV [REV ...]`` loads ``jaxlstm.functional`` as it was at each
git revision next to the working tree's and times forward and forward+backward on the CPU
shapes in interleaved rounds (medians), printing each as a ratio to torch and to the first
revision given, measured in the same run, with each one's first forward+backward call (trace,
compile, run) and what its forward pass saves for the backward pass. This is how each step of
the fast path was kept or dropped (see ``benchmarks/README.md``).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import jax.numpy as jnp
import torch

from benchmarks import suite
from jaxlstm import functional


def load_revision(rev: str):
    """``jaxlstm.functional`` as it was at ``rev``: the module ``functional.py`` of early
    revisions, or the package, copied under another name with its imports of itself renamed
    (the rest of ``jaxlstm`` is the working tree's)."""
    def show(path):
        return subprocess.run(["git", "show", f"{rev}:{path}"], check=True, capture_output=True,
                              text=True).stdout

    listing = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, "jaxlstm/functional"],
                             check=True, capture_output=True, text=True).stdout.split()
    if not listing:
        with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
            f.write(show("jaxlstm/functional.py"))
        spec = importlib.util.spec_from_file_location(f"functional_{rev}", f.name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    name = f"functional_{rev}".replace("-", "_").replace(".", "_").replace("~", "_")
    root = Path(tempfile.mkdtemp())
    for path in listing:
        target = root / name / Path(path).relative_to("jaxlstm/functional")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(show(path).replace("jaxlstm.functional", name))
    sys.path.insert(0, str(root))
    return importlib.import_module(name)


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
