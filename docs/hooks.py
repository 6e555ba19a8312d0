"""MkDocs hook: the benchmark charts are served from ``benchmarks/``, where the runs write them.

The images are not copied into ``docs/``: each ``benchmarks/*.png`` becomes the site file
``img/<name>.png``, read from its place in the checkout at build time.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]


def on_files(files, config):
    for chart in sorted((ROOT / "benchmarks").glob("*.png")):
        files.append(File.generated(config, f"img/{chart.name}", abs_src_path=str(chart)))
    return files
