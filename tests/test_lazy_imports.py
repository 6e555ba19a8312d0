"""``import jaxlstm`` is light, and every public submodule is reachable from it by attribute.

Each check runs in a fresh interpreter (cwd outside the checkout, the checkout on ``PYTHONPATH``)
so that nothing this test process already imported hides an eager import.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import jaxlstm

ROOT = Path(__file__).resolve().parents[1]

# Libraries that only some submodules or some functions need; a bare import must not load them.
# (optax is not listed: flax.nnx itself imports it.)
HEAVY = ("torch", "orbax", "keras", "equinox", "matplotlib", "safetensors")


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


# Submodules whose whole job is comparing against torch, so reaching them imports it.
NEEDS_TORCH = ("testing",)

# Runs in the fresh interpreter: what a bare import loaded, then what reaching each lazy
# submodule by attribute gives (the torch-free ones first, then the rest).
SCRIPT = """
import json, sys
import jaxlstm

heavy, lazy, needs_torch = {heavy!r}, jaxlstm._LAZY_SUBMODULES, {needs_torch!r}
report = {{
    "file": jaxlstm.__file__,
    "loaded": sorted(m for m in sys.modules
                     if m.split(".")[0] in heavy or m.removeprefix("jaxlstm.") in lazy),
    "lazy": list(lazy),
    "reached": [name for name in lazy if name not in needs_torch
                and getattr(jaxlstm, name) is sys.modules["jaxlstm." + name]
                and name in dir(jaxlstm)],
    "heavy_after": sorted({{m.split(".")[0] for m in sys.modules}} & {{"torch"}}),
}}
report["reached"] += [name for name in needs_torch
                      if getattr(jaxlstm, name) is sys.modules["jaxlstm." + name]]
print(json.dumps(report))
"""


def test_bare_import_is_light_and_reaches_every_lazy_submodule(tmp_path):
    code = SCRIPT.format(heavy=HEAVY, needs_torch=NEEDS_TORCH)
    done = run_python(code, tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert Path(report["file"]).parent == ROOT / "jaxlstm"        # this checkout's package
    assert report["loaded"] == [], "a bare import jaxlstm loaded these"
    assert sorted(report["reached"]) == sorted(report["lazy"])
    assert report["lazy"] == list(jaxlstm._LAZY_SUBMODULES)
    assert report["heavy_after"] == [], "reaching the torch-free submodules imported torch"


def test_linen_module_from_a_bare_import():
    module = jaxlstm.linen.LSTM(10, 20)
    assert module.hidden_size == 20


def test_every_public_submodule_is_reachable():
    # Every module file of the package (except the command line and private ones) is public.
    names = {p.stem for p in (ROOT / "jaxlstm").glob("*.py")} | {
        p.name for p in (ROOT / "jaxlstm").iterdir() if (p / "__init__.py").exists()
    }
    public = {n for n in names if not n.startswith("_")} - {"cli"}
    for name in sorted(public):
        assert getattr(jaxlstm, name).__name__ == f"jaxlstm.{name}"


def test_unknown_attribute_raises_attribute_error_naming_it():
    with pytest.raises(AttributeError, match="module 'jaxlstm' has no attribute 'linnen'"):
        jaxlstm.linnen  # noqa: B018
    assert not hasattr(jaxlstm, "torch")
