#!/usr/bin/env bash
# The GPU check in one run. It installs nothing: it needs jax and torch with CUDA, flax and
# numpy (matplotlib for the chart, pytest for the cuDNN candidate's check; each is skipped
# when missing). In order:
#   1. parity in float32 with full-precision matmuls, default grid (jaxlstm on the GPU, torch on
#      the CPU);
#   2. the cuDNN candidate (jax.experimental.rnn) against torch, when pytest is there;
#   3. the GPU table: torch cuDNN with TF32 off and with its defaults, jax.experimental.rnn,
#      the JAX peers and jaxlstm (and jaxlstm wavefront=True on the stacked unidirectional
#      shape: if it beats the layer-by-layer jaxlstm there, it should become the GPU default),
#      every JAX matmul at full float32 precision.
# A failing step does not stop the later ones; the script exits non-zero if any failed.
# Results go to $OUT (default benchmarks/gpu). Arguments go to the benchmark (e.g. --rounds 5);
# its output paths are always under $OUT.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-benchmarks/gpu}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false JAX_DEFAULT_MATMUL_PRECISION=highest
status=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python - <<'PY' 2>&1 | tee -a "$OUT/gpu.txt" || exit 1
import jax, torch
print("jax", jax.__version__, jax.devices(), "torch", torch.__version__)
assert jax.default_backend() == "gpu", "JAX sees no GPU"
assert torch.cuda.is_available(), "torch sees no GPU"
PY
python -m parity --dtype float32 --json "$OUT/parity-gpu.json" > "$OUT/parity.txt" 2>&1 \
    || status=1
tail -n 3 "$OUT/parity.txt"
if python -c "import pytest" 2>/dev/null; then
    # -o addopts=: pyproject's -n auto needs pytest-xdist, which this machine may lack.
    python -m pytest -q -o addopts= tests/test_benchmarks.py -k cudnn > "$OUT/cudnn-check.txt" 2>&1 || status=1
    tail -n 3 "$OUT/cudnn-check.txt"
fi
python -m benchmarks --shapes gpu "$@" --json "$OUT/results.json" --png "$OUT/results.png" \
    --markdown "$OUT/results.md" 2>&1 | tee "$OUT/benchmarks.txt" || status=1
exit "$status"
