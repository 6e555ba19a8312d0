"""``examples/multi_process.py``: 2 processes joined by ``jax.distributed`` over loopback train
with a checkpoint saved, restored and resumed, and their losses equal a one-process run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_two_processes_train_as_one(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.pop("XLA_FLAGS", None)  # the launcher gives each worker its own device count
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "multi_process.py"), "--processes", "2",
         "--steps", "4", "--no-progress", "--timeout", "240", "--out", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "2 processes, 4 devices in all (2 per process)" in done.stdout
    assert "checkpoint saved after step 2 and restored" in done.stdout
    losses = re.findall(r"^\s*\d+\s+(\S+)\s+(\S+)$", done.stdout, re.MULTILINE)
    assert len(losses) == 4
    assert all(abs(float(a) - float(b)) <= 1e-5 for a, b in losses)
    assert (tmp_path / "multi_process" / "checkpoint").is_dir()
