"""jaxlstm under every JAX sharding mode equals the unsharded run, and keeps the batch split.

Modes: Explicit axes (``jax.make_mesh``'s default) with and without ``jax.set_mesh``, Auto
axes, and ``jax.shard_map`` over the batch. Cases: forward, gradient, forward mode, variable
lengths, bidirectional, ``proj_size``, dropout in train mode, wavefront, remat, NNX
(``nnx.jit``/``nnx.grad``), Linen and the cell. All run in one subprocess with 8 fake CPU
devices (``sharding_modes.py``, which JAX needs started with the device count).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import sharding_modes  # noqa: E402

TOLERANCE = 1e-5


def run_mode(mode: str) -> dict:
    """Every case in ``mode``, in a subprocess with 8 fake CPU devices: ``{case: result}``."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, str(HERE / "sharding_modes.py"), "--mode", mode],
                          cwd=HERE.parent, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def problems(case: str, result: dict) -> list[str]:
    if "error" in result:
        return [f"{case}: {result['error']}"]
    found = []
    if result["scale"] <= 0.1:  # a real result, not zeros
        found.append(f"{case}: results are all near zero")
    if result["diff"] > TOLERANCE:
        found.append(f"{case}: differs from the unsharded run by {result['diff']:.2e}")
    for shape, spec in result["specs"]:
        batch_axes = [i for i, size in enumerate(shape) if size == sharding_modes.N]
        # Outputs and input gradients stay split along their batch axis, never gathered;
        # weight gradients come back whole (or split along the model axis, as the weight).
        if [i for i, s in enumerate(spec) if s == "batch"] != batch_axes[:1]:
            found.append(f"{case}: a result of shape {shape} is laid out as {spec}")
    return found


# One test per mode, each its own subprocess, so that pytest-xdist spreads them.
@pytest.mark.parametrize("mode", sharding_modes.MODES)
def test_every_case_equals_unsharded_and_keeps_the_batch_split(mode):
    results = run_mode(mode)
    assert sorted(results) == sorted(sharding_modes.CASES)
    found = [p for case, result in results.items() for p in problems(case, result)]
    assert not found, "\n".join(found)
