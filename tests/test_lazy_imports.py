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


def test_bare_import_loads_no_heavy_library_and_no_lazy_submodule(tmp_path):
    code = (
        "import json, sys, jaxlstm\n"
        "assert jaxlstm.__file__.startswith(%r), jaxlstm.__file__\n"
        "print(json.dumps(sorted(m for m in sys.modules\n"
        "                        if m.split('.')[0] in %r\n"
        "                        or m.removeprefix('jaxlstm.') in %r)))\n"
    ) % (str(ROOT / "jaxlstm"), HEAVY, jaxlstm._LAZY_SUBMODULES)
    done = run_python(code, tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


@pytest.mark.parametrize("name", jaxlstm._LAZY_SUBMODULES)
def test_each_lazy_submodule_is_an_attribute_after_a_bare_import(tmp_path, name):
    code = (
        "import sys, jaxlstm\n"
        f"assert 'jaxlstm.{name}' not in sys.modules\n"
        f"module = jaxlstm.{name}\n"
        f"assert module is sys.modules['jaxlstm.{name}'], module\n"
        f"assert {name!r} in dir(jaxlstm)\n"
        "assert 'torch' not in sys.modules, 'reaching a submodule imported torch'\n"
    )
    done = run_python(code, tmp_path)
    assert done.returncode == 0, done.stderr


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
