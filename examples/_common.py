"""Helpers shared by the training examples: command line, output folder, progress bar, plots."""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

# Plots are written to files; no display is needed (or available on a server / in CI).
matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "out"


def add_common_args(parser: argparse.ArgumentParser, *, steps: int, seed: int = 0) -> None:
    """``--steps``, ``--seed``, ``--out`` and ``--no-progress``, shared by every example."""
    parser.add_argument("--steps", type=int, default=steps, help="optimizer steps")
    parser.add_argument("--seed", type=int, default=seed, help="seed for data and init")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT,
        help="folder for plots and checkpoints (default: examples/out/)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def output_dir(path: Path) -> Path:
    """Create the output folder; the default one ignores its own contents for git."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if path.resolve() == DEFAULT_OUT:
        ignore = path / ".gitignore"
        if not ignore.exists():
            ignore.write_text("# written by the examples; never committed\n*\n")
    return path


def progress(steps: int, description: str, disable: bool = False) -> tqdm:
    """A progress bar over ``range(steps)``; ``bar.set_postfix(loss=...)`` shows the loss."""
    return tqdm(range(steps), desc=description, disable=disable, dynamic_ncols=True)


def save_figure(figure: plt.Figure, path: Path) -> Path:
    """Write ``figure`` as PNG and free it."""
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
