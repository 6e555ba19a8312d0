#!/usr/bin/env bash
# The GPU check in one run, installing nothing: parity in float32 with TF32 off (jaxlstm on the
# GPU against torch on the CPU), then the GPU benchmark (torch cuDNN with TF32 off and with its
# defaults, jax.experimental.rnn, Flax, jaxlstm). Results go to $OUT (default benchmarks/gpu).
# Run from the repository root: bash benchmarks/gpu_check.sh [--rounds N]
set -euo pipefail
OUT="${OUT:-benchmarks/gpu}"
mkdir -p "$OUT"
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$(pwd)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python -c "import jax; print('jax', jax.__version__, jax.devices())" | tee -a "$OUT/gpu.txt"
# float32 matmuls at full precision on the JAX side; torch's reference runs on the CPU.
JAX_DEFAULT_MATMUL_PRECISION=highest python -m parity --quick --dtype float32 \
    --json "$OUT/parity-gpu.json" 2>&1 | tail -n 5 | tee "$OUT/parity.txt"
python -m benchmarks --shapes gpu "$@" --json "$OUT/results.json" --png "$OUT/results.png" \
    --markdown "$OUT/results.md" 2>&1 | tee "$OUT/benchmarks.txt"
